// `deno task compare`: trains several methods on the same model, data, token budget, batch
// and seed, one after another in <out>/<method>/, then writes results.md (parameters, loss,
// throughput, memory), eval_loss.svg, and update_rank.svg/json with the rank of one block
// linear's accumulated update ΔW at each evaluation.
//
// A method whose summary.json exists is skipped and its summary reused, so rerunning the same
// command after an interruption continues with the next unfinished method.

import { parseArgs } from "node:util";
import { nearestName } from "../data/flags.ts";
import { gpu, initGpu, MEMORY_CLASSES } from "../core/tensor.ts";
import type { DType } from "../core/tensor.ts";
import { countParams, type Method, METHODS, type ParamCount, usesRank } from "../layers/params.ts";
import { DEFAULT_LR } from "../optim/schedule.ts";
import { runCli } from "./cli.ts";
import {
  DTYPES,
  OptionsError,
  parseTrainArgs,
  resolveModelConfig,
  type TrainOptions,
} from "./options.ts";
import { type RankPoint, RankTracker, resolveLayerName, UNIT_ROUNDOFF } from "./rank_tracker.ts";
import { DivergedError, type EvalPoint, runTraining } from "./run.ts";
import { lineChart } from "./svg.ts";

// Sized for about 30 minutes for all five methods on qwen2.5-tiny with no GPU (Mesa llvmpipe,
// 2 CPU cores, about 180 tokens/s per method while other jobs ran). On a GPU, raise --tokens
// or --steps to train a meaningful amount.
const DEFAULTS = {
  methods: "full,bpt,relora,lora,hyperadapt",
  model: "qwen2.5-tiny",
  data: "brown",
  steps: 120,
  batch: 4,
  seqLen: 64,
  rank: 32,
  // Four merges in 120 steps, so BPT and ReLoRA each fold their factors into W several times.
  mergeEvery: 25,
  evalEvery: 20,
  evalTokens: 2048,
  dtype: "bf16" as DType,
  seed: 1,
  out: "runs/compare",
  rankLayer: "layers.0.mlp.up_proj",
};

/** Learning-rate multipliers tried by --sweep around each method's learning rate. */
export const SWEEP_FACTORS = [1 / 3, 1, 3] as const;

/** Fraction of --steps that each --sweep run trains for. */
export const SWEEP_FRACTION = 0.2;

const LR_FLAGS = METHODS.map((method) => `lr-${method}` as const);

const LR_HELP = METHODS.map((method) =>
  `  ${`--lr-${method} X`.padEnd(21)}peak learning rate of ${method} (default ${
    DEFAULT_LR[method]
  })`
).join("\n");
const SWEEP_PERCENT = 100 * SWEEP_FRACTION;
const SWEEP_LIST = SWEEP_FACTORS.map((factor) => factor.toFixed(2)).join(", ");

export const COMPARE_HELP = `Usage: deno task compare [flags]

Trains each method on the same model, data, token budget, batch and seed, one after another
in OUT/<method>/, then writes OUT/results.md, OUT/eval_loss.svg, OUT/update_rank.svg and
OUT/update_rank.json. A method whose OUT/<method>/summary.json exists is not trained again.

  --methods LIST       comma-separated subset of ${METHODS.join(",")}
                       (default ${DEFAULTS.methods})
  --model M            preset name, or a Hugging Face config.json or its folder
                       (default ${DEFAULTS.model})
  --data D             brown, fineweb-edu, a .parquet/.bin/.jsonl/.txt path, folder or glob,
                       or a parquet URL (default ${DEFAULTS.data})
  --steps S            optimizer steps per method (default ${DEFAULTS.steps})
  --tokens N           training tokens per method in place of --steps, with an optional K, M
                       or B suffix
  --batch B            sequences per step (default ${DEFAULTS.batch})
  --seq-len T          tokens per sequence (default ${DEFAULTS.seqLen})
  --rank R             adapter rank of bpt, lora and relora (default ${DEFAULTS.rank})
  --merge-every K      steps between merges, for bpt and relora (default ${DEFAULTS.mergeEvery})
  --relora-warmup S    steps of ReLoRA's learning-rate re-warm-up after each merge
                       (default: --merge-every / 5, rounded, at least 1)
${LR_HELP}
  --sweep              first train each method for ${SWEEP_PERCENT} % of the steps at its learning
                       rate times ${SWEEP_LIST}, then run it in full at the rate
                       with the lowest validation loss (default off)
  --eval-every S       steps between validation-loss evaluations (default ${DEFAULTS.evalEvery})
  --eval-tokens N      validation tokens per evaluation (default ${DEFAULTS.evalTokens})
  --rank-layer NAME    block linear whose update rank is measured, a full name or a suffix
                       such as layers.1.self_attn.q_proj (default ${DEFAULTS.rankLayer})
  --dtype D            ${DTYPES.join(" | ")}: parameter storage (default ${DEFAULTS.dtype})
  --seed N             random seed shared by every method (default ${DEFAULTS.seed})
  --out DIR            output directory (default ${DEFAULTS.out})
  --help               print this help

Every other setting (schedule, warm-up, weight decay, clipping) takes its default from
deno task train; see deno task train --help.`;

/** Settings of one comparison, with defaults applied and every value checked. */
export interface CompareOptions {
  methods: Method[];
  /** Learning rate of each method, before any sweep. */
  lr: Record<Method, number>;
  sweep: boolean;
  /** Full name of the block linear whose update rank is tracked. */
  rankLayer: string;
  out: string;
  /** Options of the main run of each method, all of them equal apart from method, lr and out. */
  train: Record<Method, TrainOptions>;
  /** The flag values as given, for the --sweep runs. */
  flags: FlagValues;
  /** The arguments as given, for the command line in results.md. */
  argv: string[];
  help: boolean;
}

const STRING_FLAGS = [
  "methods",
  "model",
  "data",
  "steps",
  "tokens",
  "batch",
  "seq-len",
  "rank",
  "merge-every",
  "relora-warmup",
  ...LR_FLAGS,
  "eval-every",
  "eval-tokens",
  "rank-layer",
  "dtype",
  "seed",
  "out",
] as const;

type CompareFlag = typeof STRING_FLAGS[number];

// Flags passed on to parseTrainArgs under the same name.
const TRAIN_FLAGS: readonly CompareFlag[] = [
  "model",
  "data",
  "steps",
  "tokens",
  "batch",
  "seq-len",
  "rank",
  "merge-every",
  "eval-every",
  "eval-tokens",
  "dtype",
  "seed",
];

function readFlags(argv: string[]): { values: FlagValues; sweep: boolean; help: boolean } {
  const options: Record<string, { type: "string" | "boolean" }> = {
    help: { type: "boolean" },
    sweep: { type: "boolean" },
  };
  for (const name of STRING_FLAGS) options[name] = { type: "string" };
  try {
    const { values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
    const { help, sweep, ...rest } = values;
    return {
      values: rest as FlagValues,
      sweep: sweep === true,
      help: help === true,
    };
  } catch (error) {
    // node:util's messages span several lines, so each is replaced with one line.
    const code = (error as { code?: string }).code;
    const quoted = (error as Error).message.match(/'([^']*)'/)?.[1] ?? "";
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const suggestion = nearestName(quoted.replace(/^-+/, ""), Object.keys(options));
      if (suggestion === null) {
        throw new OptionsError(`unknown flag ${quoted}: run with --help to list the flags`);
      }
      throw new OptionsError(
        `unknown flag ${quoted}: did you mean --${suggestion}? Run with --help to list the flags`,
      );
    }
    if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      const flag = quoted.split(" ")[0];
      if ((error as Error).message.includes("does not take an argument")) {
        throw new OptionsError(`${flag} takes no value: remove the value after it`);
      }
      throw new OptionsError(`${flag} needs a value: run with --help for its format`);
    }
    if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
      throw new OptionsError(
        `unexpected argument "${quoted}": all inputs are flags, run with --help`,
      );
    }
    throw error;
  }
}

function parseMethods(text: string): Method[] {
  const names = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (names.length === 0) {
    throw new OptionsError(`--methods "${text}" is empty: list methods such as full,bpt`);
  }
  const methods: Method[] = [];
  for (const name of names) {
    if (!(METHODS as readonly string[]).includes(name)) {
      throw new OptionsError(
        `--methods "${text}" names unknown method "${name}": use a subset of ${METHODS.join(",")}`,
      );
    }
    if (methods.includes(name as Method)) {
      throw new OptionsError(`--methods "${text}" lists ${name} twice: list each method once`);
    }
    methods.push(name as Method);
  }
  return methods;
}

function parseLr(flag: string, text: string): number {
  const value = /^[+]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text.trim()) ? Number(text) : NaN;
  if (!(Number.isFinite(value) && value > 0)) {
    throw new OptionsError(`--${flag} "${text}" is invalid: use a positive number such as 2e-3`);
  }
  return value;
}

type FlagValues = Partial<Record<CompareFlag, string>>;

// Arguments of `deno task train` for one run of a comparison, with this file's defaults.
function trainArgv(values: FlagValues, method: Method, lr: number, out: string): string[] {
  const argv = ["--method", method, "--lr", String(lr), "--out", out];
  for (const flag of TRAIN_FLAGS) {
    const value = values[flag];
    if (value !== undefined) argv.push(`--${flag}`, value);
  }
  const isGiven = (flag: CompareFlag) => values[flag] !== undefined;
  if (!isGiven("steps") && !isGiven("tokens")) argv.push("--steps", String(DEFAULTS.steps));
  const defaults: [CompareFlag, number][] = [
    ["batch", DEFAULTS.batch],
    ["seq-len", DEFAULTS.seqLen],
    ["rank", DEFAULTS.rank],
    ["merge-every", DEFAULTS.mergeEvery],
    ["eval-every", DEFAULTS.evalEvery],
    ["eval-tokens", DEFAULTS.evalTokens],
  ];
  for (const [flag, value] of defaults) if (!isGiven(flag)) argv.push(`--${flag}`, String(value));
  // ReLoRA's re-warm-up must end before the next merge: a fifth of the interval by default.
  const mergeText = values["merge-every"] ?? String(DEFAULTS.mergeEvery);
  const mergeEvery = /^\d+$/.test(mergeText) ? Number(mergeText) : DEFAULTS.mergeEvery;
  argv.push(
    "--relora-warmup",
    values["relora-warmup"] ?? String(Math.max(1, Math.round(mergeEvery / 5))),
  );
  return argv;
}

// Options of one run. Checkpoints are written only at the end, since an unfinished method
// restarts from step 0 anyway.
function trainOptions(values: FlagValues, method: Method, lr: number, out: string): TrainOptions {
  const opts = parseTrainArgs(trainArgv(values, method, lr, out));
  return { ...opts, saveEvery: opts.steps };
}

/** Parses the flags of `deno task compare` and checks them, including against the model. */
export function parseCompareArgs(argv: string[]): CompareOptions {
  const { values, sweep, help } = readFlags(argv);
  const methods = parseMethods(values.methods ?? DEFAULTS.methods);
  const lr = { ...DEFAULT_LR } as Record<Method, number>;
  for (const method of METHODS) {
    const text = values[`lr-${method}`];
    if (text !== undefined) lr[method] = parseLr(`lr-${method}`, text);
  }
  const out = (values.out ?? DEFAULTS.out).replace(/\/+$/, "") || ".";

  // parseTrainArgs checks the shared values, and its messages name the same flags. Every
  // method is checked, so a rank too large for any of them fails before training starts.
  const train = {} as Record<Method, TrainOptions>;
  for (const method of help ? [] : METHODS) {
    train[method] = trainOptions(values, method, lr[method], `${out}/${method}`);
  }
  let rankLayer = values["rank-layer"] ?? DEFAULTS.rankLayer;
  if (!help) rankLayer = resolveLayerName(resolveModelConfig(train.full), rankLayer);
  return { methods, lr, sweep, rankLayer, out, train, flags: values, argv, help };
}

/** One method's result, as stored in <out>/<method>/summary.json. */
export interface MethodResult {
  method: Method;
  lr: number;
  /** The settings the run was made with, to detect a stale summary. */
  settings: Record<string, unknown>;
  params: Pick<
    ParamCount,
    "total" | "trainable" | "nonEmbeddingTotal" | "nonEmbeddingTrainable"
  >;
  steps: number;
  tokens: number;
  finalValLoss: number;
  evals: EvalPoint[];
  tokensPerSecond: number;
  wallSeconds: number;
  peakBytes: Record<string, number>;
  /** Update rank of the tracked linear at each evaluation; empty for sweep runs. */
  rank: RankPoint[];
  /** Shape [out, in] of the tracked linear. */
  rankShape: [number, number];
  /** The --sweep runs behind `lr`, or empty. */
  sweep: SweepRun[];
  adapter: string;
}

/** One learning rate tried by --sweep. */
export interface SweepRun {
  lr: number;
  steps: number;
  /** Validation loss at the end of the short run; Infinity when it diverged. */
  finalValLoss: number;
}

// The options that must match for a stored summary to be reused.
function settingsOf(opts: TrainOptions): Record<string, unknown> {
  return {
    model: opts.model,
    data: opts.data,
    tokenizer: opts.tokenizer,
    steps: opts.steps,
    batch: opts.batch,
    seqLen: opts.seqLen,
    gradAccum: opts.gradAccum,
    rank: opts.rank,
    mergeEvery: opts.mergeEvery,
    reloraWarmup: opts.reloraWarmup,
    lr: opts.lr,
    evalEvery: opts.evalEvery,
    evalTokens: opts.evalTokens,
    dtype: opts.dtype,
    seed: opts.seed,
  };
}

async function readSummary(path: string): Promise<MethodResult | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
  // JSON has no Infinity, so diverged sweep runs are stored as null.
  return JSON.parse(
    text,
    (key, value) => key === "finalValLoss" && value === null ? Infinity : value,
  );
}

function checkSettings(stored: MethodResult, opts: TrainOptions, path: string): void {
  const expected = settingsOf(opts);
  for (const [key, value] of Object.entries(expected)) {
    if (JSON.stringify(stored.settings[key]) !== JSON.stringify(value)) {
      throw new OptionsError(
        `${path} is from a run with ${key} ${JSON.stringify(stored.settings[key])}, not ` +
          `${JSON.stringify(value)}: choose another --out or delete ${path}`,
      );
    }
  }
}

type Log = (line: string) => void;

// The fields of a result known before training; the figures are NaN until the run ends.
function baseResult(opts: TrainOptions): MethodResult {
  const counts = countParams(resolveModelConfig(opts), opts.method, opts.rank);
  return {
    method: opts.method,
    lr: opts.lr!,
    settings: settingsOf(opts),
    params: {
      total: counts.total,
      trainable: counts.trainable,
      nonEmbeddingTotal: counts.nonEmbeddingTotal,
      nonEmbeddingTrainable: counts.nonEmbeddingTrainable,
    },
    steps: 0,
    tokens: 0,
    finalValLoss: NaN,
    evals: [],
    tokensPerSecond: NaN,
    wallSeconds: NaN,
    peakBytes: {},
    rank: [],
    rankShape: [0, 0],
    sweep: [],
    adapter: gpu().description,
  };
}

// Trains one run in opts.out, tracking the update rank when `tracker` is given; returns its
// summary, or null when SIGINT interrupted it.
async function trainOne(
  opts: TrainOptions,
  tracker: RankTracker | null,
  log: Log,
): Promise<MethodResult | null> {
  // A run without summary.json restarts from step 0, so an old metrics file is dropped.
  // NOTE: an interrupted method loses its progress; its checkpoint is not resumed because
  // W_eff(0) of the rank tracker is not stored with it.
  const config = resolveModelConfig(opts);
  opts.overwrite = true;
  const label = opts.out.split("/").slice(-2).join("/");
  const summary = await runTraining(opts, config, {
    log: (line) => log(`[${label}] ${line}`),
    onEval: tracker ? tracker.onEval : undefined,
  });
  summary.trainer.dispose();
  if (summary.interrupted) return null;
  return {
    ...baseResult(opts),
    steps: summary.steps,
    tokens: summary.tokens,
    finalValLoss: summary.finalValLoss,
    evals: summary.evals,
    tokensPerSecond: summary.tokensPerSecond,
    wallSeconds: summary.wallSeconds,
    peakBytes: summary.peakBytes,
    rank: tracker?.points ?? [],
    rankShape: [tracker?.outFeatures ?? 0, tracker?.inFeatures ?? 0],
  };
}

async function writeSummary(result: MethodResult, dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/summary.json`, JSON.stringify(result, null, 1) + "\n");
}

// Short runs at each SWEEP_FACTORS multiple of `base`; returns them in the order tried.
async function sweepMethod(
  base: TrainOptions,
  opts: CompareOptions,
  log: Log,
): Promise<SweepRun[] | null> {
  const runs: SweepRun[] = [];
  const steps = Math.max(1, Math.round(SWEEP_FRACTION * base.steps));
  for (const factor of SWEEP_FACTORS) {
    const lr = Number((base.lr! * factor).toPrecision(3));
    const dir = `${opts.out}/${base.method}/sweep/lr-${lr}`;
    // Each short run has its own schedule over `steps` and one evaluation, at its end.
    const values: FlagValues = { ...opts.flags, steps: String(steps), "eval-every": String(steps) };
    delete values.tokens;
    const train = trainOptions(values, base.method, lr, dir);
    const stored = await readSummary(`${dir}/summary.json`);
    let finalValLoss: number;
    if (stored) {
      checkSettings(stored, train, `${dir}/summary.json`);
      finalValLoss = stored.finalValLoss;
      log(`[${base.method}] sweep lr ${lr}: reusing ${dir}/summary.json`);
    } else {
      let result: MethodResult | null;
      try {
        result = await trainOne(train, null, log);
      } catch (error) {
        if (!(error instanceof DivergedError)) throw error;
        // NOTE: the diverged run's model is not freed, so its GPU memory stays allocated
        // (and counted by the ledger) until the process exits.
        log(`[${base.method}] sweep lr ${lr} diverged: ${error.message}`);
        result = { ...baseResult(train), finalValLoss: Infinity };
      }
      if (result === null) return null;
      await writeSummary(result, dir);
      finalValLoss = result.finalValLoss;
    }
    runs.push({ lr, steps, finalValLoss: Number.isFinite(finalValLoss) ? finalValLoss : Infinity });
  }
  return runs;
}

/** Results of a comparison, in the order of --methods. */
export interface Comparison {
  results: MethodResult[];
  /** False when SIGINT stopped it; the finished methods are kept. */
  complete: boolean;
}

/** Trains (or reuses) each method of `opts` and writes the result files into opts.out. */
export async function runComparison(
  opts: CompareOptions,
  log: Log = (line) => console.log(line),
): Promise<Comparison> {
  const results: MethodResult[] = [];
  for (const method of opts.methods) {
    let train = opts.train[method];
    const path = `${train.out}/summary.json`;
    let sweep: SweepRun[] = [];
    if (opts.sweep) {
      const runs = await sweepMethod(train, opts, log);
      if (runs === null) return { results, complete: false };
      sweep = runs;
      // Ties go to the earlier, smaller learning rate.
      const best = runs.reduce((a, b) => b.finalValLoss < a.finalValLoss ? b : a);
      log(`[${method}] sweep picks lr ${best.lr} (val loss ${best.finalValLoss.toFixed(4)})`);
      train = { ...train, lr: best.lr };
    }

    const stored = await readSummary(path);
    if (stored) {
      checkSettings(stored, train, path);
      log(`[${method}] finished earlier: reusing ${path}`);
      results.push(stored);
      continue;
    }
    log(`[${method}] training ${train.steps} steps at lr ${train.lr} into ${train.out}`);
    const tracker = new RankTracker(opts.rankLayer, train.dtype);
    const result = await trainOne(train, tracker, log);
    if (result === null) return { results, complete: false };
    result.sweep = sweep;
    await writeSummary(result, train.out);
    results.push(result);
  }
  await writeReport(opts, results);
  return { results, complete: true };
}

/** Writes results.md, eval_loss.svg, update_rank.svg and update_rank.json into opts.out. */
export async function writeReport(opts: CompareOptions, results: MethodResult[]): Promise<void> {
  await Deno.mkdir(opts.out, { recursive: true });
  await Deno.writeTextFile(`${opts.out}/results.md`, resultsMarkdown(opts, results));
  await Deno.writeTextFile(`${opts.out}/eval_loss.svg`, evalLossChart(opts, results));
  await Deno.writeTextFile(`${opts.out}/update_rank.svg`, updateRankChart(opts, results));
  await Deno.writeTextFile(
    `${opts.out}/update_rank.json`,
    JSON.stringify(updateRankData(opts, results), null, 1) + "\n",
  );
}

/** Returns the numbers behind update_rank.svg, as written to update_rank.json. */
export function updateRankData(opts: CompareOptions, results: MethodResult[]) {
  const train = opts.train[opts.methods[0]];
  return {
    layer: opts.rankLayer,
    shape: results[0]?.rankShape ?? [0, 0],
    dtype: train.dtype,
    rank: train.rank,
    unitRoundoff: UNIT_ROUNDOFF[train.dtype],
    tolerance:
      "singular values of ΔW = W_eff(step) − W_eff(0) above 2·u·rms(W_eff(step))·(√n + √m), u the unit roundoff of the parameter dtype",
    methods: Object.fromEntries(results.map((r) => [r.method, r.rank])),
  };
}

function evalLossChart(opts: CompareOptions, results: MethodResult[]): string {
  const train = opts.train[opts.methods[0]];
  return lineChart({
    title: `Validation loss, ${train.model} on ${train.data}`,
    xLabel: "training tokens",
    yLabel: "validation loss (nats/token)",
    series: results.map((r) => ({
      name: `${r.method} (lr ${r.lr})`,
      points: r.evals.map((e) => [e.tokens, e.valLoss] as [number, number]),
    })),
  });
}

function updateRankChart(opts: CompareOptions, results: MethodResult[]): string {
  const train = opts.train[opts.methods[0]];
  const series = results.flatMap((r) => [
    {
      name: `${r.method} numerical`,
      points: r.rank.map((p) => [p.tokens, p.numericalRank] as [number, number]),
    },
    {
      name: `${r.method} effective`,
      points: r.rank.map((p) => [p.tokens, p.effectiveRank] as [number, number]),
      dashed: true,
    },
  ]);
  const lastTokens = Math.max(0, ...results.flatMap((r) => r.rank.map((p) => p.tokens)));
  if (results.some((r) => usesRank(r.method))) {
    series.push({
      name: `r = ${train.rank}`,
      points: [[0, train.rank], [lastTokens, train.rank]],
      dashed: true,
    });
  }
  return lineChart({
    title: `Rank of the update ΔW of ${opts.rankLayer}`,
    xLabel: "training tokens",
    yLabel: "rank of ΔW",
    series,
  });
}

function fmtCount(n: number): string {
  return n.toLocaleString("en-US");
}

function fmtMB(bytes: number | undefined): string {
  return bytes === undefined ? "–" : (bytes / 1024 ** 2).toFixed(1);
}

// Quotes an argument for a POSIX shell when it contains anything but safe characters.
function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Renders results.md: settings, the command, and one table each for loss, memory and rank. */
export function resultsMarkdown(opts: CompareOptions, results: MethodResult[]): string {
  const t = opts.train[opts.methods[0]];
  const command = ["deno", "task", "compare", ...opts.argv].map(shellQuote).join(" ");
  const adapter = results[0]?.adapter ?? gpu().description;
  const lines: string[] = [
    `# Method comparison: ${t.model} on ${t.data}`,
    "",
    "Command:",
    "",
    "```sh",
    command,
    "```",
    "",
    `Adapter: ${adapter}`,
    "",
    `Each method trains ${fmtCount(t.steps)} steps of ${t.batch} × ${t.seqLen} tokens ` +
    `(${fmtCount(t.steps * t.batch * t.seqLen * t.gradAccum)} tokens) with seed ${t.seed}, ` +
    `${t.dtype} parameters and a ${t.schedule} schedule. BPT, LoRA and ReLoRA use rank ` +
    `${t.rank}, and BPT and ReLoRA merge every ${t.mergeEvery} steps. An evaluation every ` +
    `${t.evalEvery} steps reads ${fmtCount(t.evalTokens)} validation tokens.`,
    "",
    "| method | lr | total params | trainable | non-embedding total | non-embedding trainable " +
    "| final val loss | val ppl | tokens/s | wall (s) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of results) {
    lines.push(
      `| ${r.method} | ${r.lr} | ${fmtCount(r.params.total)} | ${fmtCount(r.params.trainable)} ` +
        `| ${fmtCount(r.params.nonEmbeddingTotal)} | ${fmtCount(r.params.nonEmbeddingTrainable)} ` +
        `| ${r.finalValLoss.toFixed(4)} | ${Math.exp(r.finalValLoss).toFixed(1)} ` +
        `| ${Math.round(r.tokensPerSecond)} | ${r.wallSeconds.toFixed(0)} |`,
    );
  }

  const full = results.find((r) => r.method === "full");
  const bpt = results.find((r) => r.method === "bpt");
  if (full && bpt) {
    const gap = bpt.finalValLoss - full.finalValLoss;
    lines.push(
      "",
      `BPT ends ${Math.abs(gap).toFixed(4)} nats ${gap >= 0 ? "above" : "below"} Full.`,
    );
  }

  lines.push(
    "",
    "## Peak memory by class (MB)",
    "",
    "Peak bytes per class of the GPU memory ledger over each run, from after the model and " +
      "optimizer are created to the end; a class's peak and the total peak need not occur at the same time.",
    "",
    `| method | ${MEMORY_CLASSES.join(" | ")} | total |`,
    `|---|${MEMORY_CLASSES.map(() => "---:").join("|")}|---:|`,
  );
  for (const r of results) {
    const cells = MEMORY_CLASSES.map((c) => fmtMB(r.peakBytes[c]));
    lines.push(`| ${r.method} | ${cells.join(" | ")} | ${fmtMB(r.peakBytes.total)} |`);
  }

  const shape = results[0]?.rankShape ?? [0, 0];
  lines.push(
    "",
    `## Rank of the update of ${opts.rankLayer} (${shape[0]} × ${shape[1]})`,
    "",
    "Numerical rank: singular values of ΔW = W_eff(step) − W_eff(0) above " +
      "2·u·rms(W_eff(step))·(√n + √m), " +
      `u = ${UNIT_ROUNDOFF[t.dtype].toExponential(2)} the unit roundoff of ${t.dtype}: about ` +
      "3.5 times the largest singular value expected from rounding the stored weights " +
      "(train/rank_tracker.ts derives it). Effective rank: " +
      "exp of the entropy of those singular values normalised to sum to 1. " +
      "Per evaluation in update_rank.json.",
    "",
    `| method | ${(results[0]?.rank ?? []).map((p) => `step ${p.step}`).join(" | ")} |`,
    `|---|${(results[0]?.rank ?? []).map(() => "---:").join("|")}|`,
  );
  for (const r of results) {
    const cells = r.rank.map((p) => `${p.numericalRank} (${p.effectiveRank.toFixed(1)})`);
    lines.push(`| ${r.method} | ${cells.join(" | ")} |`);
  }
  lines.push("", "Cells: numerical rank (effective rank).");

  if (results.some((r) => r.sweep.length > 0)) {
    lines.push(
      "",
      "## Learning-rate sweep",
      "",
      `Each method first trained ${results[0].sweep[0]?.steps ?? 0} steps (${
        100 * SWEEP_FRACTION
      } % of the run, with a schedule of that length) at each learning rate; the full run ` +
        "uses the one with the lowest final validation loss.",
      "",
      "| method | learning rate | val loss after the short run | chosen |",
      "|---|---:|---:|---|",
    );
    for (const r of results) {
      for (const s of r.sweep) {
        const loss = Number.isFinite(s.finalValLoss) ? s.finalValLoss.toFixed(4) : "diverged";
        lines.push(`| ${r.method} | ${s.lr} | ${loss} | ${s.lr === r.lr ? "yes" : ""} |`);
      }
    }
  }
  return lines.join("\n") + "\n";
}

if (import.meta.main) {
  await runCli(async () => {
    const opts = parseCompareArgs(Deno.args);
    if (opts.help) {
      console.log(COMPARE_HELP);
      return;
    }
    await initGpu();
    const { results, complete } = await runComparison(opts);
    if (!complete) {
      console.log(
        `interrupted: ${results.length} of ${opts.methods.length} methods finished; ` +
          "run the same command again to continue",
      );
      Deno.exit(130);
    }
    for (const r of results) {
      console.log(
        `${r.method.padEnd(10)} val loss ${r.finalValLoss.toFixed(4)} | ` +
          `${fmtCount(r.params.trainable)} trainable | ${Math.round(r.tokensPerSecond)} tok/s`,
      );
    }
    console.log(
      `wrote results.md, eval_loss.svg, update_rank.svg and update_rank.json to ${opts.out}`,
    );
  });
}
