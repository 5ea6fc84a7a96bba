// `deno task train`: trains a model per the flags (see --help). With no flags
// it trains the tiny Qwen2.5 preset with BPT on the Brown Corpus.

import { initGpu } from "../core/tensor.ts";
import { readTrainerState } from "./checkpoint.ts";
import { parseTrainArgs, resolveModelConfig, TRAIN_HELP, type TrainOptions } from "./options.ts";
import { runCli } from "./cli.ts";
import { runTraining } from "./run.ts";
import { findCheckpoint } from "./checkpoint.ts";

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
  const config = resolveModelConfig(opts);
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
