// `deno task train`: trains a model per the flags (see --help). With no flags
// it trains the tiny Qwen2.5 preset with BPT on the Brown Corpus.

import { initGpu } from "../core/tensor.ts";
import { findCheckpoint, readTrainerState } from "./checkpoint.ts";
import {
  KNOWN_TOKENIZERS,
  parseTrainArgs,
  resolveModelConfig,
  TRAIN_HELP,
  type TrainOptions,
} from "./options.ts";
import { loadTokenizer } from "../data/tokenizer.ts";
import { runCli } from "./cli.ts";
import { runTraining } from "./run.ts";

await runCli(async () => {
  let opts: TrainOptions = parseTrainArgs(Deno.args);
  if (opts.help) {
    console.log(TRAIN_HELP);
    return;
  }
  if (opts.resume) {
    // A resumed run keeps the options it was started with; --steps may extend it.
    const state = await readTrainerState(await findCheckpoint(opts.resume));
    const steps = Deno.args.some((a) => a.startsWith("--steps")) ? opts.steps : state.options.steps;
    opts = { ...state.options, steps, resume: opts.resume, out: opts.resume };
  }
  // A tokenizer given as a file is loaded once here to check that the model's vocabulary covers it.
  const info = KNOWN_TOKENIZERS[opts.tokenizer] ?? await loadTokenizer(opts.tokenizer);
  const config = resolveModelConfig(opts, { vocabSize: info.vocabSize, eotId: info.eotId });
  await initGpu();
  const summary = await runTraining(opts, config);
  if (!summary.interrupted) {
    console.log(
      `done: ${summary.steps} steps, ${summary.tokens.toLocaleString("en-US")} tokens, val loss ${
        summary.finalValLoss.toFixed(4)
      }, ${Math.round(summary.tokensPerSecond)} tok/s`,
    );
    console.log(
      `checkpoint, metrics.jsonl and loss.svg are in ${summary.out}; continue for more steps with: deno task train --resume ${summary.out} --steps ${
        summary.steps * 2
      }`,
    );
  }
  if (summary.interrupted) Deno.exit(130);
});
