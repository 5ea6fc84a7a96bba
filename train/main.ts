// `deno task train`: trains a model per the flags (see --help). With no flags
// it trains the tiny Qwen2.5 preset with BPT on the Brown Corpus.

import { initGpu } from "../core/tensor.ts";
import { findCheckpoint, readTrainerState } from "./checkpoint.ts";
import {
  KNOWN_TOKENIZERS,
  OptionsError,
  parseTrainArgs,
  resolveModelConfig,
  TRAIN_HELP,
  type TrainOptions,
} from "./options.ts";
import { loadTokenizer } from "../data/tokenizer.ts";
import { runCli } from "./cli.ts";
import { runTraining } from "./run.ts";

// Flags that may change when a run resumes: the schedule's length and shape, the
// optimizer's scalars and the logging cadence. The model, data and batch shape
// are fixed by the checkpoint.
const RESUMABLE = new Set([
  "steps",
  "tokens",
  "lr",
  "minLrRatio",
  "warmup",
  "decaySteps",
  "schedule",
  "gradClip",
  "weightDecay",
  "evalEvery",
  "evalTokens",
  "logEvery",
  "saveEvery",
  "export",
]);

/** Returns the options of the run in `opts.resume`, with the flags given now applied on top. */
async function resumeOptions(opts: TrainOptions): Promise<TrainOptions> {
  const dir = opts.resume!;
  const saved = (await readTrainerState(await findCheckpoint(dir))).options;
  const resumed: TrainOptions = { ...saved, resume: dir, out: dir, export: null };
  const given = Deno.args
    .filter((a) => a.startsWith("--"))
    .map((a) => a.slice(2).split("=")[0].replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()));
  for (const key of given) {
    if (key === "resume" || key === "config" || key === "out") continue;
    const k = key as keyof TrainOptions;
    if (RESUMABLE.has(key)) {
      (resumed as unknown as Record<string, unknown>)[k] = opts[k];
      // --tokens sets the step count.
      if (key === "tokens") resumed.steps = opts.steps;
    } else if (JSON.stringify(opts[k]) !== JSON.stringify(saved[k])) {
      throw new OptionsError(
        `--${
          key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())
        } cannot change when resuming (the checkpoint has ${
          JSON.stringify(saved[k])
        }); start a new run with another --out instead`,
      );
    }
  }
  if (resumed.schedule === "wsd" && resumed.warmup + resumed.decaySteps > resumed.steps) {
    throw new OptionsError(
      `--steps ${resumed.steps} is shorter than the resumed run's warm-up ${resumed.warmup} plus decay ${resumed.decaySteps}: pass a larger --steps or a smaller --decay-steps`,
    );
  }
  return resumed;
}

async function main() {
  let opts: TrainOptions = parseTrainArgs(Deno.args);
  if (opts.help) {
    console.log(TRAIN_HELP);
    return;
  }
  if (opts.resume) opts = await resumeOptions(opts);
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
      `checkpoint, metrics.jsonl and loss.svg are in ${summary.out}; train longer with: deno task train --resume ${summary.out} --steps ${
        summary.steps * 2
      }${opts.schedule === "wsd" ? " (the WSD decay then moves to the new end)" : ""}`,
    );
  }
  if (summary.interrupted) Deno.exit(130);
}

await runCli(main);
