// The training run behind `deno task train` and each method of `deno task
// compare`: start-up table, the step loop with one log line per logged step,
// periodic evaluation, metrics.jsonl, loss.svg, checkpoints, SIGINT handling
// and the stop on a non-finite loss.

import { benchGemm } from "../core/gemm_bench.ts";
import { adapterSlug } from "./bench.ts";
import { gpu, ledger, MEMORY_CLASSES } from "../core/tensor.ts";
import { countParams } from "../layers/params.ts";
import { exportModel } from "../layers/checkpoint.ts";
import type { ModelConfig } from "../layers/config.ts";
import {
  findCheckpoint,
  loadCheckpoint,
  readTrainerState,
  rollBack,
  saveCheckpoint,
} from "./checkpoint.ts";
import { mfu, stepFlops } from "./flops.ts";
import { OptionsError, type TrainOptions } from "./options.ts";
import { lineChart } from "./svg.ts";
import { type StepResult, Trainer } from "./trainer.ts";

/** Raised when the loss becomes NaN or Inf; the last good checkpoint is kept. */
export class DivergedError extends Error {
  override name = "DivergedError";
}

/** One evaluation: validation loss at a token count. */
export interface EvalPoint {
  step: number;
  tokens: number;
  valLoss: number;
}

/** Summary of a finished (or interrupted) run. */
export interface RunSummary {
  out: string;
  steps: number;
  tokens: number;
  finalValLoss: number;
  evals: EvalPoint[];
  trainLosses: [number, number][];
  tokensPerSecond: number;
  wallSeconds: number;
  peakBytes: Record<string, number>;
  interrupted: boolean;
  /** Called at each evaluation (for rank tracking in compare). */
  trainer: Trainer;
}

/** Hooks for callers that embed a run (compare). */
export interface RunHooks {
  /** Prints a line; default console.log. */
  log?: (line: string) => void;
  /** Runs after each evaluation, with the trainer at that step. */
  onEval?: (trainer: Trainer, point: EvalPoint) => Promise<void>;
}

const GB = 1024 ** 3;

function fmtBytes(b: number): string {
  if (b >= GB) return `${(b / GB).toFixed(2)} GB`;
  if (b >= 1024 ** 2) return `${(b / 1024 ** 2).toFixed(1)} MB`;
  return `${(b / 1024).toFixed(1)} KB`;
}

function fmtCount(n: number): string {
  return n.toLocaleString("en-US");
}

/**
 * Returns the adapter's f32 GEMM ceiling in FLOP/s for MFU, and where it came from:
 * the best shape of `deno task bench gemm` for this adapter when bench/results has
 * it, otherwise a quick 512³ measurement (low when other work shares the device).
 */
async function gemmCeiling(description: string): Promise<[number, string]> {
  const file = new URL(`../bench/results/${adapterSlug(description)}.json`, import.meta.url);
  try {
    const saved = JSON.parse(await Deno.readTextFile(file));
    const gflops = saved?.suites?.gemm?.result?.ceilingGflops;
    if (typeof gflops === "number" && gflops > 0) return [gflops * 1e9, "deno task bench gemm"];
  } catch {
    // No saved figure for this adapter: measure.
  }
  const [t] = await benchGemm([{ m: 512, n: 512, k: 512 }], { runs: 3, targetMs: 60 });
  return [t.gflops * 1e9, "f32 512³, measured at start-up"];
}

/** Trains per `opts`, resuming from `opts.resume` when set; returns the summary. */
export async function runTraining(
  opts: TrainOptions,
  config: ModelConfig,
  hooks: RunHooks = {},
): Promise<RunSummary> {
  const log = hooks.log ?? ((line: string) => console.log(line));
  const out = opts.out;
  try {
    await Deno.mkdir(out, { recursive: true });
    const probe = `${out}/.write-test`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new OptionsError(
      `--out ${out} is not writable (${
        (e as Error).message.split("\n")[0]
      }): choose another directory`,
    );
  }

  if (!opts.resume) await claimOut(out, opts.overwrite);
  if (opts.export) await probeWritable(opts.export, "--export");

  // Resume: restore the data position before the loader starts prefetching.
  let resumeDir: string | null = null;
  let resumeState = null;
  if (opts.resume) {
    resumeDir = await findCheckpoint(opts.resume);
    resumeState = await readTrainerState(resumeDir);
  }
  const trainer = await Trainer.create(opts, config, resumeState?.loader);
  if (resumeDir && resumeState) {
    await loadCheckpoint(trainer, resumeDir, resumeState);
  }

  const counts = countParams(config, opts.method, opts.rank);
  const flops = stepFlops(
    config,
    opts.method,
    opts.rank,
    trainer.tokensPerStep,
    opts.seqLen,
    opts.batch * opts.seqLen,
  );
  const [ceiling, ceilingSource] = await gemmCeiling(gpu().description);
  const g = gpu();

  // Start-up table.
  const rows: [string, string][] = [
    ["adapter", g.description],
    [
      "model",
      `${opts.model} (${config.arch}, ${config.numLayers} layers, hidden ${config.hiddenSize}, vocab ${config.vocabSize})`,
    ],
    [
      "method",
      opts.method === "full" || opts.method === "hyperadapt"
        ? opts.method
        : `${opts.method} r=${opts.rank}`,
    ],
    [
      "parameters",
      `${fmtCount(counts.total)} total, ${fmtCount(counts.nonEmbeddingTotal)} non-embedding`,
    ],
    [
      "trainable",
      `${fmtCount(counts.trainable)} (${
        (100 * counts.trainable / counts.total).toFixed(1)
      } % of total; non-embedding ${fmtCount(counts.nonEmbeddingTrainable)})`,
    ],
    ["wrapped linears", `${counts.wrappedLinears} wrapped, ${counts.fullLinears} full`],
    [
      "dtype",
      opts.dtype === "f32"
        ? "f32 parameters, gradients and AdamW state"
        : `${opts.dtype} parameters, f32 gradients and AdamW state, ${
          opts.bf16Update === "master" ? "f32 master copy" : "stochastic rounding"
        } for ${opts.dtype} updates`,
    ],
    [
      "tokens/step",
      `${trainer.tokensPerStep} (batch ${opts.batch} × seq ${opts.seqLen} × accum ${opts.gradAccum})`,
    ],
    ["steps", `${opts.steps}${resumeState ? ` (resuming at ${resumeState.step})` : ""}`],
    [
      "GEMM ceiling",
      `${(ceiling / 1e9).toFixed(1)} GFLOP/s (${ceilingSource}), ${
        (flops.total / 1e9).toFixed(2)
      } GFLOP/step`,
    ],
  ];
  for (const cls of MEMORY_CLASSES) {
    if (ledger.live[cls] > 0) rows.push([`memory ${cls}`, fmtBytes(ledger.live[cls])]);
  }
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) log(`${k.padEnd(width)} | ${v}`);

  // SIGINT: finish the current step, save, and exit.
  // A second Ctrl-C exits at once, without saving.
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) {
      log("interrupted twice: exiting without saving");
      Deno.exit(130);
    }
    interrupted = true;
    log("interrupt: saving a checkpoint after the current step (Ctrl-C again to exit now)");
  };
  Deno.addSignalListener("SIGINT", onSigint);

  const metricsPath = `${out}/metrics.jsonl`;
  const evals: EvalPoint[] = [];
  const trainLosses: [number, number][] = [];
  if (resumeState) {
    // Keep the curve of the interrupted run for the plot and summary.
    for (const line of (await readLines(metricsPath))) {
      const r = JSON.parse(line);
      if (r.step > resumeState.step) continue;
      if (r.kind === "eval") evals.push({ step: r.step, tokens: r.tokens, valLoss: r.val_loss });
      if (r.kind === "train") trainLosses.push([r.tokens, r.loss]);
    }
    await Deno.writeTextFile(
      metricsPath,
      (await readLines(metricsPath)).filter((l) => JSON.parse(l).step <= resumeState!.step)
        .map((l) => l + "\n").join(""),
    );
  }
  const appendMetric = (record: Record<string, unknown>) =>
    Deno.writeTextFile(metricsPath, JSON.stringify(record) + "\n", { append: true });

  const evaluate = async () => {
    const valLoss = await trainer.evaluate(() => interrupted);
    const point = { step: trainer.step, tokens: trainer.tokens, valLoss };
    evals.push(point);
    log(
      `eval step ${trainer.step} | val loss ${valLoss.toFixed(4)} | ppl ${
        Math.exp(valLoss).toFixed(2)
      }`,
    );
    await appendMetric({
      kind: "eval",
      step: trainer.step,
      tokens: trainer.tokens,
      val_loss: valLoss,
      val_ppl: Math.exp(valLoss),
    });
    await Deno.writeTextFile(`${out}/loss.svg`, lossChart(opts, trainLosses, evals));
    if (hooks.onEval) await hooks.onEval(trainer, point);
    return valLoss;
  };

  // Builds the error that stops a diverged run. A checkpoint saved at or after
  // step `badWeights` contains weights that gave the non-finite value, so it is
  // replaced by the one before it.
  const diverged = async (what: string, step: number, badWeights: number, lr: number) => {
    const kept = await rollBack(out, badWeights);
    const next = kept === null
      ? `no checkpoint was saved before it; start again with a lower learning rate than ${
        lr.toExponential(1)
      }, for example --lr ${(lr / 10).toExponential(0)} --overwrite`
      : `${out}/checkpoint keeps step ${kept}; continue with a lower learning rate than ${
        lr.toExponential(1)
      }: --resume ${out} --lr ${(lr / 10).toExponential(0)}`;
    return new DivergedError(`${what} at step ${step}: the run stopped; ${next}`);
  };

  const tty = Deno.stdout.isTerminal() && !hooks.log;
  const started = performance.now();
  let timedTokens = 0;
  let timedSeconds = 0;
  ledger.resetPeak();
  if (!resumeState) await evaluate();

  try {
    while (trainer.step < opts.steps && !interrupted) {
      const r: StepResult = await trainer.trainStep();
      if (!Number.isFinite(r.loss)) {
        // The loss of step s is computed with the weights saved at step s − 1.
        throw await diverged(`loss is ${r.loss}`, r.step, r.step - 1, r.lr);
      }
      // The first steps compile pipelines; leave them out of the throughput.
      if (r.step > Math.min(2, opts.steps - 1)) {
        timedTokens += trainer.tokensPerStep;
        timedSeconds += r.seconds;
      }
      trainLosses.push([r.tokens, r.loss]);
      if (r.step % opts.logEvery === 0 || r.step === opts.steps || r.merged) {
        const tps = trainer.tokensPerStep / r.seconds;
        const util = mfu(flops.total, r.seconds, ceiling);
        const line = `step ${r.step}/${opts.steps} | loss ${r.loss.toFixed(3)} | norm ${
          r.gradNorm.toFixed(2)
        } | lr ${r.lr.toExponential(1)} | ${Math.round(tps)} tok/s | MFU ${
          (100 * util).toFixed(0)
        }% | ${fmtBytes(ledger.peakTotal)}${r.merged ? " | merged" : ""}`;
        if (tty) Deno.stdout.writeSync(new TextEncoder().encode("\r\x1b[K"));
        log(line);
        await appendMetric({
          kind: "train",
          step: r.step,
          tokens: r.tokens,
          loss: r.loss,
          grad_norm: r.gradNorm,
          lr: r.lr,
          tok_per_s: tps,
          mfu: util,
          seconds: r.seconds,
          merged: r.merged,
        });
      } else if (tty) {
        const done = Math.round(30 * r.step / opts.steps);
        Deno.stdout.writeSync(
          new TextEncoder().encode(
            `\r[${"#".repeat(done)}${".".repeat(30 - done)}] step ${r.step}/${opts.steps} loss ${
              r.loss.toFixed(3)
            }`,
          ),
        );
      }
      if (r.step % opts.evalEvery === 0 || r.step === opts.steps) {
        const v = await evaluate();
        if (!Number.isFinite(v)) {
          throw await diverged(`validation loss is ${v}`, r.step, r.step, r.lr);
        }
      }
      if (r.step % opts.saveEvery === 0 || r.step === opts.steps) {
        await saveCheckpoint(trainer, out);
      }
    }
    if (interrupted) {
      await saveCheckpoint(trainer, out);
      log(
        `interrupted at step ${trainer.step}: saved ${out}/checkpoint; continue with --resume ${out}`,
      );
    }
    if (opts.export && !interrupted) {
      await exportModel(trainer.model, opts.export);
      log(`exported a merged Hugging Face model to ${opts.export}`);
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    trainer.close();
  }

  const peakBytes: Record<string, number> = { ...ledger.peak, total: ledger.peakTotal };
  return {
    out,
    steps: trainer.step,
    tokens: trainer.tokens,
    finalValLoss: evals.at(-1)?.valLoss ?? NaN,
    evals,
    trainLosses,
    tokensPerSecond: timedSeconds > 0 ? timedTokens / timedSeconds : NaN,
    wallSeconds: (performance.now() - started) / 1000,
    peakBytes,
    interrupted,
    trainer,
  };
}

// Stops a new run from mixing its metrics and checkpoints with an earlier run's,
// unless --overwrite is given.
async function claimOut(out: string, overwrite: boolean): Promise<void> {
  const earlier = ["checkpoint", "checkpoint.prev", "metrics.jsonl"];
  const found: string[] = [];
  for (const name of earlier) {
    if (await Deno.stat(`${out}/${name}`).then(() => true, () => false)) found.push(name);
  }
  if (found.length === 0) return;
  if (!overwrite) {
    throw new OptionsError(
      `--out ${out} already contains a run (${
        found.join(", ")
      }): continue it with --resume ${out}, choose another --out, or pass --overwrite to replace it`,
    );
  }
  for (const name of [...earlier, "checkpoint.diverged", "loss.svg"]) {
    await Deno.remove(`${out}/${name}`, { recursive: true }).catch(() => {});
  }
}

async function probeWritable(dir: string, flag: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true });
    const probe = `${dir}/.write-test`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new OptionsError(
      `${flag} ${dir} is not writable (${
        (e as Error).message.split("\n")[0]
      }): choose another directory`,
    );
  }
}

async function readLines(path: string): Promise<string[]> {
  try {
    return (await Deno.readTextFile(path)).split("\n").filter((l) => l.trim() !== "");
  } catch {
    return [];
  }
}

function lossChart(opts: TrainOptions, train: [number, number][], evals: EvalPoint[]): string {
  return lineChart({
    title: `${opts.model} ${opts.method} on ${opts.data}`,
    xLabel: "tokens",
    yLabel: "loss (nats/token)",
    series: [
      { name: "train", points: train },
      { name: "validation", points: evals.map((e) => [e.tokens, e.valLoss] as [number, number]) },
    ],
  });
}
