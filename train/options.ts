// deno-lint-ignore-file no-import-prefix -- train/ pins its npm dependencies inline, not in the import map.
// Options of `deno task train`, also read by `deno task compare`: command-line flags, an
// optional JSON or JSONC file with the same keys, the defaults, and the checks that need
// the model's shape.

import { parseArgs } from "node:util";
import { parse as parseJsonc, type ParseError, printParseErrorCode } from "npm:jsonc-parser@3.3.1";
import type { DType } from "../core/tensor.ts";
import {
  ConfigError,
  configFromHf,
  getPreset,
  type ModelConfig,
  PRESETS,
  validateConfig,
} from "../layers/config.ts";
import { maxRank, type Method, METHODS, usesRank } from "../layers/params.ts";
import type { Bf16Update } from "../optim/adamw.ts";
import { DEFAULT_LR } from "../optim/schedule.ts";

/** Error for an invalid flag, config file or flag combination, with a one-line message. */
export class OptionsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OptionsError";
  }
}

export type ScheduleName = "wsd" | "cosine" | "constant";

export const SCHEDULES: readonly ScheduleName[] = ["wsd", "cosine", "constant"];

export const DTYPES: readonly DType[] = ["bf16", "f16", "f32"];

/** Update rules offered for 16-bit parameters; AdamW's "nearest" exists only for comparisons. */
export type Bf16UpdateMode = Exclude<Bf16Update, "nearest">;

export const BF16_UPDATES: readonly Bf16UpdateMode[] = ["master", "stochastic"];

/** Every setting of a training run, with defaults applied. */
export interface TrainOptions {
  /** Path of the --config file the values came from, or null. */
  config: string | null;
  /** Preset name, or path to a Hugging Face config.json or a folder containing one. */
  model: string;
  method: Method;
  /** Adapter rank of bpt, lora and relora, kept for the others so `compare` can switch methods. */
  rank: number;
  /** LoRA scaling numerator α: LoRA and ReLoRA updates are scaled by α / rank. */
  alpha: number;
  /** Steps between merges of the low-rank factors into W (bpt and relora). */
  mergeEvery: number;
  /** Steps of the linear learning-rate re-warm-up after each ReLoRA reset (jagged schedule). */
  reloraWarmup: number;
  /**
   * Magnitude quantile for pruning the AdamW moments at a ReLoRA reset: entries at or below
   * it become zero, so about this fraction of each moment is zeroed. 1 zeroes both moments
   * and restarts the bias correction.
   */
  reloraPrune: number;
  /** Peak learning rate, or null for the method's default (`methodDefaultLr`). */
  lr: number | null;
  /** Final learning rate as a fraction of the peak, in [0, 1]. */
  minLrRatio: number;
  schedule: ScheduleName;
  /** Warm-up steps. */
  warmup: number;
  /** Steps of the final linear decay of the wsd schedule, which cosine and constant ignore. */
  decaySteps: number;
  /** Sequences per micro-batch. */
  batch: number;
  /** Micro-batches per optimizer step. */
  gradAccum: number;
  /** Tokens per sequence. */
  seqLen: number;
  /** Optimizer steps, computed from `tokens` when that was given. */
  steps: number;
  /** Training tokens requested with --tokens, or null when --steps set the length. */
  tokens: number | null;
  /** "brown", "fineweb-edu", a path, a glob or a parquet URL, as `openSource` in data/ takes. */
  data: string;
  /** "gpt2", "qwen2.5", "qwen3", or a path to a tokenizer.json or a folder containing one. */
  tokenizer: string;
  /** Steps between validation-loss evaluations. */
  evalEvery: number;
  /** Validation tokens per evaluation. */
  evalTokens: number;
  /** Steps between training-loss log lines. */
  logEvery: number;
  /** Steps between checkpoints. */
  saveEvery: number;
  /** Storage dtype of weights, embeddings, norms and factors. BPT diagonals are always f32. */
  dtype: DType;
  /** Update rule for bf16 and f16 parameters, ignored for f32. */
  bf16Update: Bf16UpdateMode;
  /** AdamW decoupled weight decay coefficient. */
  weightDecay: number;
  beta1: number;
  beta2: number;
  /** Maximum global L2 norm of the gradients, or 0 to disable clipping. */
  gradClip: number;
  seed: number;
  /** Output directory for logs, checkpoints and plots. */
  out: string;
  /** Checkpoint directory to continue from, or null. */
  resume: string | null;
  /** Directory for a merged Hugging Face model written after the last step, or null. */
  export: string | null;
  /** True when --overwrite was given: a new run may replace the run already in --out. */
  overwrite: boolean;
  /** True when --help was given. The other fields then contain the defaults, unvalidated. */
  help: boolean;
}

// Defaults of the flags that are not derived from other values. The run is sized for a
// quick check on the tiny preset: 200 steps of 8 × 64 tokens on the Brown Corpus, with
// three BPT merges.
const DEFAULTS = {
  model: "qwen2.5-tiny",
  method: "bpt" as Method,
  rank: 32,
  mergeEvery: 50,
  reloraWarmup: 25,
  // ReLoRA's 130M run prunes 90 % of the optimizer state by magnitude at each reset
  // (github.com/Guitaricet/relora, scripts/paper_130M.sh: --optimizer_magnitude_pruning 0.9).
  reloraPrune: 0.9,
  minLrRatio: 0.1,
  schedule: "wsd" as ScheduleName,
  warmupFraction: 0.05,
  decayFraction: 0.2,
  batch: 8,
  gradAccum: 1,
  seqLen: 64,
  steps: 200,
  data: "brown",
  tokenizer: "gpt2",
  evalEvery: 50,
  evalTokens: 8192,
  logEvery: 10,
  // bf16 parameters, the precision of the BPT runs in configs/.
  dtype: "bf16" as DType,
  bf16Update: "master" as Bf16UpdateMode,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  gradClip: 1.0,
  seed: 1,
};

/** Returns the peak learning rate used when --lr is not given. */
export function methodDefaultLr(method: Method): number {
  return DEFAULT_LR[method];
}

// Flag names in kebab-case, in the order of the help text. "config" and "help" are
// command-line only.
const FLAG_NAMES = [
  "config",
  "model",
  "method",
  "rank",
  "alpha",
  "merge-every",
  "relora-warmup",
  "relora-prune",
  "lr",
  "min-lr-ratio",
  "schedule",
  "warmup",
  "decay-steps",
  "weight-decay",
  "beta1",
  "beta2",
  "grad-clip",
  "data",
  "tokenizer",
  "batch",
  "grad-accum",
  "seq-len",
  "steps",
  "tokens",
  "dtype",
  "bf16-update",
  "eval-every",
  "eval-tokens",
  "log-every",
  "save-every",
  "seed",
  "out",
  "resume",
  "export",
] as const;

type FlagName = typeof FLAG_NAMES[number];

const FILE_KEYS: readonly FlagName[] = FLAG_NAMES.filter((name) => name !== "config");

// Joins `items` with ", " into lines of at most 92 characters, continuing at `indent` spaces.
function wrapList(items: readonly string[], indent: number): string {
  const lines = [""];
  for (const item of items) {
    const last = lines.length - 1;
    const joined = lines[last] === "" ? item : `${lines[last]}, ${item}`;
    if (indent + joined.length + 1 > 92 && lines[last] !== "") {
      lines[last] += ",";
      lines.push(item);
    } else {
      lines[last] = joined;
    }
  }
  return lines.join(`\n${" ".repeat(indent)}`);
}

export const TRAIN_HELP = `Usage: deno task train [flags]

Pre-trains a language model with one training method and writes logs, checkpoints and loss
curves to --out. Flags given on the command line override those of the --config file.

Model and method
  --config FILE        JSON or JSONC file whose keys are the flags below, in camelCase or
                       kebab-case; a null value keeps the default; relative paths in it are
                       taken from the working directory (default none)
  --model M            preset name, or a Hugging Face config.json or its folder
                       (default ${DEFAULTS.model}); presets:
                       ${wrapList(Object.keys(PRESETS), 23)}.
                       The tiny presets size their vocabulary for the tokenizer: 50,304 rows
                       for gpt2 (50,257 ids padded to a multiple of 64), 151,936 for qwen2.5
                       and qwen3
  --method M           ${METHODS.join(" | ")} (default ${DEFAULTS.method})
  --rank R             adapter rank of bpt, lora and relora (default ${DEFAULTS.rank})
  --alpha A            LoRA scaling numerator: lora and relora updates are scaled by A / R
                       (default: the rank, a scaling of 1)
  --merge-every K      steps between merges of the low-rank factors into the frozen
                       weights, for bpt and relora (default ${DEFAULTS.mergeEvery})
  --relora-warmup S    steps of the learning-rate re-warm-up after each ReLoRA reset
                       (default ${DEFAULTS.reloraWarmup})
  --relora-prune F     fraction of each AdamW moment zeroed by magnitude at a ReLoRA reset;
                       1 zeroes all of it and restarts bias correction (default ${DEFAULTS.reloraPrune})

Optimizer and schedule
  --lr X               peak learning rate (default ${DEFAULT_LR.full} for full, ${DEFAULT_LR.bpt} for the others)
  --min-lr-ratio X     final learning rate as a fraction of the peak (default ${DEFAULTS.minLrRatio})
  --schedule S         ${SCHEDULES.join(" | ")} (default ${DEFAULTS.schedule})
  --warmup S           warm-up steps (default ${
  100 * DEFAULTS.warmupFraction
} % of --steps, rounded)
  --decay-steps S      steps of the final linear decay of wsd, ignored by the others
                       (default ${100 * DEFAULTS.decayFraction} % of --steps, rounded)
  --weight-decay X     AdamW decoupled weight decay (default ${DEFAULTS.weightDecay})
  --beta1 X            AdamW β1 (default ${DEFAULTS.beta1})
  --beta2 X            AdamW β2 (default ${DEFAULTS.beta2})
  --grad-clip X        maximum global gradient L2 norm, 0 disables clipping (default ${DEFAULTS.gradClip})

Data and batch
  --data D             brown, fineweb-edu, a .parquet/.bin/.jsonl/.txt path, folder or glob,
                       or a parquet URL (default ${DEFAULTS.data})
  --tokenizer T        gpt2, qwen2.5, qwen3, or a tokenizer.json or its folder (default ${DEFAULTS.tokenizer})
  --batch B            sequences per micro-batch (default ${DEFAULTS.batch})
  --grad-accum G       micro-batches per optimizer step (default ${DEFAULTS.gradAccum})
  --seq-len T          tokens per sequence (default ${DEFAULTS.seqLen})
  --steps S            optimizer steps (default ${DEFAULTS.steps})
  --tokens N           training tokens in place of --steps, with an optional K, M or B
                       suffix: steps = ceil(N / (B · G · T))

Precision
  --dtype D            ${DTYPES.join(" | ")}: storage of weights, embeddings, norms and factors;
                       BPT diagonals are always f32 (default ${DEFAULTS.dtype})
  --bf16-update U      ${BF16_UPDATES.join(" | ")}: how bf16 and f16 parameters take AdamW updates,
                       through an f32 master copy or by stochastic rounding (default ${DEFAULTS.bf16Update})

Evaluation, logging and output
  --eval-every S       steps between validation-loss evaluations (default ${DEFAULTS.evalEvery})
  --eval-tokens N      validation tokens per evaluation (default ${DEFAULTS.evalTokens})
  --log-every S        steps between training-loss log lines (default ${DEFAULTS.logEvery})
  --save-every S       steps between checkpoints (default: --eval-every)
  --seed N             random seed of the run, an integer in 0..4294967295 (default ${DEFAULTS.seed})
  --out DIR            output directory (default runs/<model>-<method>)
  --resume DIR         continue training from a checkpoint directory of an earlier run
  --export DIR         after the last step, write the model with its adapters merged into
                       the weights as a Hugging Face model folder DIR
  --overwrite          let a new run replace the run already in --out (its checkpoint and
                       metrics); without it such a run stops with an error
  --help               print this help`;

// Levenshtein distance, to suggest the flag a typo was meant to be.
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length];
}

function nearest(name: string, candidates: readonly string[]): string {
  let best = candidates[0];
  for (const candidate of candidates) {
    if (editDistance(name, candidate) < editDistance(name, best)) best = candidate;
  }
  return best;
}

type RawValues = Partial<Record<FlagName, string>>;

function parseCommandLine(
  argv: string[],
): { values: RawValues; help: boolean; overwrite: boolean } {
  const options: Record<string, { type: "string" | "boolean" }> = {
    help: { type: "boolean" },
    overwrite: { type: "boolean" },
  };
  for (const name of FLAG_NAMES) options[name] = { type: "string" };
  try {
    const { values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
    const { help, overwrite, ...rest } = values;
    return { values: rest as RawValues, help: help === true, overwrite: overwrite === true };
  } catch (error) {
    // node:util's messages span several lines, so each is replaced with one line.
    const code = (error as { code?: string }).code;
    const message = (error as Error).message;
    const quoted = message.match(/'([^']*)'/)?.[1] ?? "";
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const bare = quoted.replace(/^-+/, "");
      const suggestion = nearest(bare, [...FLAG_NAMES, "help", "overwrite"]);
      throw new OptionsError(
        `unknown flag ${quoted}: did you mean --${suggestion}? Run with --help to list the flags`,
      );
    }
    if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      const flag = quoted.split(" ")[0];
      if (message.includes("ambiguous")) {
        throw new OptionsError(
          `${flag} is followed by a value starting with "-": write it as ${flag}=VALUE`,
        );
      }
      if (message.includes("does not take an argument")) {
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

function kebabCase(key: string): string {
  return key.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);
}

// Line and column (1-based) of a character offset, for JSONC error messages.
function lineAndColumn(text: string, offset: number): string {
  const before = text.slice(0, offset).split("\n");
  return `line ${before.length}, column ${before[before.length - 1].length + 1}`;
}

/** Reads a --config file: a JSON object with comments and trailing commas allowed. */
function readConfigFile(path: string): RawValues {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.IsADirectory) {
      throw new OptionsError(`--config "${path}": file not found: pass a .json or .jsonc file`);
    }
    throw error;
  }

  const errors: ParseError[] = [];
  const json: unknown = parseJsonc(text, errors, { allowTrailingComma: true });
  if (errors.length > 0) {
    const first = errors[0];
    throw new OptionsError(
      `--config ${path}: invalid JSONC at ${lineAndColumn(text, first.offset)} ` +
        `(${printParseErrorCode(first.error)}): fix the file`,
    );
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new OptionsError(`--config ${path}: expected a JSON object of flag names and values`);
  }

  const values: RawValues = {};
  for (const [key, value] of Object.entries(json)) {
    const name = kebabCase(key);
    if (!(FILE_KEYS as readonly string[]).includes(name)) {
      throw new OptionsError(
        `--config ${path}: unknown key "${key}": did you mean "${nearest(name, FILE_KEYS)}"? ` +
          "Keys are the flag names of --help",
      );
    }
    if (value === null) continue;
    if (typeof value !== "string" && typeof value !== "number") {
      throw new OptionsError(
        `--config ${path}: "${key}" is ${JSON.stringify(value)}: use a number or a string`,
      );
    }
    values[name as FlagName] = String(value);
  }
  return values;
}

// Converts the raw strings of the merged flags and file keys, naming the source of a bad value.
class ValueReader {
  constructor(
    private values: RawValues,
    private file: string | null,
    private fromFile: Set<string>,
  ) {}

  has(name: FlagName): boolean {
    return this.values[name] !== undefined;
  }

  rawValue(name: FlagName): string | undefined {
    return this.values[name];
  }

  // `--rank "x"` or `--rank "x" (from configs/a.jsonc)`, the start of every value error.
  label(name: FlagName): string {
    const origin = this.fromFile.has(name) ? ` (from ${this.file})` : "";
    return `--${name} "${this.values[name]}"${origin}`;
  }

  number(name: FlagName, fallback: number, check: (x: number) => boolean, expected: string) {
    const text = this.values[name];
    if (text === undefined) return fallback;
    const value = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text.trim()) ? Number(text) : NaN;
    if (!Number.isFinite(value) || !check(value)) {
      throw new OptionsError(`${this.label(name)} is invalid: use ${expected}`);
    }
    return value;
  }

  integer(name: FlagName, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
    const range = max === Number.MAX_SAFE_INTEGER
      ? `an integer >= ${min}`
      : `an integer in ${min}..${max}`;
    return this.number(name, fallback, (x) => Number.isInteger(x) && x >= min && x <= max, range);
  }

  // A token count with an optional K, M or B suffix (×10³, ×10⁶, ×10⁹).
  tokenCount(name: FlagName): number | null {
    const text = this.values[name];
    if (text === undefined) return null;
    const match = text.trim().match(/^(\d+\.?\d*|\.\d+)(e\d+)?([kKmMbB]?)$/);
    const scale = { "": 1, k: 1e3, m: 1e6, b: 1e9 }[match?.[3].toLowerCase() ?? ""] ?? 1;
    const value = match ? Math.round(Number(match[1] + (match[2] ?? "")) * scale) : NaN;
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new OptionsError(
        `${this.label(name)} is invalid: use a positive token count such as 5000000 or 5M`,
      );
    }
    return value;
  }

  choice<T extends string>(name: FlagName, fallback: T, choices: readonly T[]): T {
    const text = this.values[name];
    if (text === undefined) return fallback;
    if (!(choices as readonly string[]).includes(text)) {
      throw new OptionsError(`${this.label(name)} is invalid: use one of ${choices.join(", ")}`);
    }
    return text as T;
  }

  string(name: FlagName, fallback: string): string {
    const text = this.values[name];
    if (text === undefined) return fallback;
    if (text.trim() === "") throw new OptionsError(`--${name} is empty: give a value or omit it`);
    return text;
  }
}

// "runs/<model>-<method>" uses the preset name, or the folder or file name of a config.json.
function modelLabel(model: string): string {
  if (Object.hasOwn(PRESETS, model)) return model;
  const parts = model.replace(/\/+$/, "").replace(/\/config\.json$/, "").split("/");
  return parts[parts.length - 1].replace(/\.json$/, "") || "model";
}

/**
 * Parses the flags of `deno task train` (and `deno task compare`), reads the --config file
 * if one is given, applies defaults and checks every value, including the rank against the
 * model's linears and the sequence length against its maximum. Throws OptionsError.
 */
export function parseTrainArgs(argv: string[]): TrainOptions {
  const commandLine = parseCommandLine(argv);
  if (commandLine.help) {
    return { ...readOptions(new ValueReader({}, null, new Set()), null), help: true };
  }
  const configPath = commandLine.values.config ?? null;
  const fileValues = configPath === null ? {} : readConfigFile(configPath);

  // --steps and --tokens set the same thing, so either on the command line replaces both
  // from the file.
  if (commandLine.values.steps !== undefined || commandLine.values.tokens !== undefined) {
    delete fileValues.steps;
    delete fileValues.tokens;
  }
  const merged: RawValues = { ...fileValues, ...commandLine.values };
  const fromFile = new Set(
    Object.keys(fileValues).filter((name) => commandLine.values[name as FlagName] === undefined),
  );
  const read = new ValueReader(merged, configPath, fromFile);

  const opts = readOptions(read, configPath);
  opts.overwrite = commandLine.overwrite;
  checkCombinations(opts);
  const cfg = resolveModelConfig(opts);
  checkAgainstModel(opts, cfg);
  return opts;
}

function readOptions(read: ValueReader, configPath: string | null): TrainOptions {
  const positive = (x: number) => x > 0;
  const nonNegative = (x: number) => x >= 0;
  const fraction = (x: number) => x >= 0 && x <= 1;
  const beta = (x: number) => x >= 0 && x < 1;

  const model = read.string("model", DEFAULTS.model);
  const method = read.choice("method", DEFAULTS.method, METHODS);
  const rank = read.integer("rank", DEFAULTS.rank, 1);
  const batch = read.integer("batch", DEFAULTS.batch, 1);
  const gradAccum = read.integer("grad-accum", DEFAULTS.gradAccum, 1);
  const seqLen = read.integer("seq-len", DEFAULTS.seqLen, 1);

  if (read.has("steps") && read.has("tokens")) {
    const steps = read.rawValue("steps");
    const tokens = read.rawValue("tokens");
    throw new OptionsError(
      `--steps ${steps} and --tokens ${tokens} both set the run length: give only one`,
    );
  }
  const tokens = read.tokenCount("tokens");
  const steps = tokens === null
    ? read.integer("steps", DEFAULTS.steps, 1)
    : Math.ceil(tokens / (batch * gradAccum * seqLen));

  const evalEvery = read.integer("eval-every", DEFAULTS.evalEvery, 1);
  const resume = read.has("resume") ? read.string("resume", "") : null;
  const exportDir = read.has("export") ? read.string("export", "") : null;

  return {
    config: configPath,
    model,
    method,
    rank,
    alpha: read.number("alpha", rank, positive, "a positive number"),
    mergeEvery: read.integer("merge-every", DEFAULTS.mergeEvery, 1),
    reloraWarmup: read.integer("relora-warmup", DEFAULTS.reloraWarmup, 1),
    reloraPrune: read.number("relora-prune", DEFAULTS.reloraPrune, fraction, "a fraction in 0..1"),
    lr: read.has("lr") ? read.number("lr", 0, positive, "a positive number such as 2e-3") : null,
    minLrRatio: read.number("min-lr-ratio", DEFAULTS.minLrRatio, fraction, "a fraction in 0..1"),
    schedule: read.choice("schedule", DEFAULTS.schedule, SCHEDULES),
    warmup: read.integer("warmup", Math.round(DEFAULTS.warmupFraction * steps), 0),
    decaySteps: read.integer("decay-steps", Math.round(DEFAULTS.decayFraction * steps), 0),
    batch,
    gradAccum,
    seqLen,
    steps,
    tokens,
    data: read.string("data", DEFAULTS.data),
    tokenizer: read.string("tokenizer", DEFAULTS.tokenizer),
    evalEvery,
    evalTokens: read.tokenCount("eval-tokens") ?? DEFAULTS.evalTokens,
    logEvery: read.integer("log-every", DEFAULTS.logEvery, 1),
    saveEvery: read.integer("save-every", evalEvery, 1),
    dtype: read.choice("dtype", DEFAULTS.dtype, DTYPES),
    bf16Update: read.choice("bf16-update", DEFAULTS.bf16Update, BF16_UPDATES),
    weightDecay: read.number("weight-decay", DEFAULTS.weightDecay, nonNegative, "a number >= 0"),
    beta1: read.number("beta1", DEFAULTS.beta1, beta, "a number in [0, 1)"),
    beta2: read.number("beta2", DEFAULTS.beta2, beta, "a number in [0, 1)"),
    gradClip: read.number(
      "grad-clip",
      DEFAULTS.gradClip,
      nonNegative,
      "a number >= 0 (0 disables)",
    ),
    seed: read.integer("seed", DEFAULTS.seed, 0, 0xffffffff),
    out: read.string("out", `runs/${modelLabel(model)}-${method}`),
    resume,
    export: exportDir,
    overwrite: false,
    help: false,
  };
}

// Checks between flags; value ranges were checked while reading.
function checkCombinations(opts: TrainOptions): void {
  const warmupLabel = `--warmup ${opts.warmup}`;
  if (opts.schedule === "wsd" && opts.warmup + opts.decaySteps > opts.steps) {
    throw new OptionsError(
      `${warmupLabel} plus --decay-steps ${opts.decaySteps} exceeds --steps ${opts.steps}: ` +
        "lower them or train longer",
    );
  }
  if (opts.schedule === "cosine" && opts.warmup >= opts.steps) {
    throw new OptionsError(
      `${warmupLabel} leaves no step of --steps ${opts.steps} for the cosine decay: ` +
        "lower it or train longer",
    );
  }
  if (opts.schedule === "constant" && opts.warmup > opts.steps) {
    throw new OptionsError(
      `${warmupLabel} exceeds --steps ${opts.steps}: lower it or train longer`,
    );
  }
  if (opts.method === "relora" && opts.reloraWarmup > opts.mergeEvery) {
    throw new OptionsError(
      `--relora-warmup ${opts.reloraWarmup} exceeds --merge-every ${opts.mergeEvery}: ` +
        "each re-warm-up must end before the next reset, lower it",
    );
  }
  if (opts.resume !== null) {
    let isDirectory = false;
    try {
      isDirectory = Deno.statSync(opts.resume).isDirectory;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    if (!isDirectory) {
      throw new OptionsError(
        `--resume "${opts.resume}": directory not found: pass the --out directory of an earlier run`,
      );
    }
  }
}

function checkAgainstModel(opts: TrainOptions, cfg: ModelConfig): void {
  if (opts.seqLen > cfg.maxSeqLen) {
    throw new OptionsError(
      `--seq-len ${opts.seqLen} exceeds the maximum sequence length ${cfg.maxSeqLen} of ` +
        `${opts.model}: use at most ${cfg.maxSeqLen}`,
    );
  }
  const largest = maxRank(cfg, opts.method);
  if (usesRank(opts.method) && opts.rank > largest) {
    throw new OptionsError(
      `--rank ${opts.rank} is too large for ${opts.method} on ${opts.model}: every block ` +
        `linear would stay Full, use 1..${largest}`,
    );
  }
}

/** Vocabulary size (highest id + 1) and end-of-text id of a tokenizer. */
export interface TokenizerInfo {
  vocabSize: number;
  eotId: number;
}

// The tokenizers data/ loads by name, as its loaders report them: GPT-2's 50,257 ids, Qwen2.5's
// 151,665 and Qwen3's 151,669 (Qwen2.5's plus four added tokens), all ending documents with
// <|endoftext|>.
export const KNOWN_TOKENIZERS: Readonly<Record<string, TokenizerInfo>> = {
  gpt2: { vocabSize: 50257, eotId: 50256 },
  "qwen2.5": { vocabSize: 151665, eotId: 151643 },
  qwen3: { vocabSize: 151669, eotId: 151643 },
};

// Presets whose vocabulary is sized for the tokenizer instead of a released checkpoint.
const TOKENIZER_SIZED_PRESETS = new Set(["qwen2.5-tiny", "olmo2-tiny"]);

// Embedding rows of the tiny presets per tokenizer. GPT-2's 50,257 ids are padded to a
// multiple of 64, and Qwen's tokenizers get the 151,936 rows of the Qwen2.5 config.json files.
// Other tokenizers are padded to a multiple of 64 as well.
function paddedVocab(tokenizer: string, info: TokenizerInfo): number {
  if (tokenizer === "gpt2") return 50304;
  if (tokenizer === "qwen2.5" || tokenizer === "qwen3") return 151936;
  return Math.ceil(info.vocabSize / 64) * 64;
}

function readHfConfig(model: string): ModelConfig {
  const names = Object.keys(PRESETS).join(", ");
  let path = model;
  try {
    if (Deno.statSync(path).isDirectory) path = `${path.replace(/\/+$/, "")}/config.json`;
    Deno.statSync(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new OptionsError(
      `--model "${model}" is neither a preset nor an existing config.json: ` +
        `use one of ${names} or a path`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(Deno.readTextFileSync(path));
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    throw new OptionsError(
      `--model ${path} is not valid JSON (${
        error.message.split("\n")[0]
      }): pass a Hugging Face config.json`,
    );
  }
  try {
    return configFromHf(json);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    throw new OptionsError(`--model ${path}: ${error.message}`);
  }
}

/**
 * Returns the model config that `opts` selects, matched to the tokenizer. `tokenizer` gives
 * the loaded tokenizer's size and end-of-text id. Without it, the sizes of the tokenizers in
 * KNOWN_TOKENIZERS are used, and a tokenizer path leaves the config unchanged and unchecked.
 *
 * For a preset the tokenizer decides the token ids:
 * - the tiny presets get a vocabulary padded from the tokenizer's (see `paddedVocab`);
 * - a preset whose eos id differs from the tokenizer's end-of-text id takes that id as eos
 *   and bos (bos stays null where the preset has none), and loses its pad id.
 * A config.json keeps its own ids. Throws OptionsError when the vocabulary does not cover
 * the tokenizer.
 */
export function resolveModelConfig(
  opts: Pick<TrainOptions, "model" | "tokenizer">,
  tokenizer?: TokenizerInfo,
): ModelConfig {
  const isPreset = Object.hasOwn(PRESETS, opts.model);
  const cfg = isPreset ? getPreset(opts.model) : readHfConfig(opts.model);
  const info = tokenizer ?? KNOWN_TOKENIZERS[opts.tokenizer];
  if (info === undefined) return cfg;

  if (isPreset && TOKENIZER_SIZED_PRESETS.has(opts.model)) {
    cfg.vocabSize = paddedVocab(opts.tokenizer, info);
  }
  if (isPreset && cfg.eosTokenId !== info.eotId) {
    cfg.bosTokenId = cfg.bosTokenId === null ? null : info.eotId;
    cfg.eosTokenId = info.eotId;
    cfg.padTokenId = null;
  }
  if (cfg.vocabSize < info.vocabSize) {
    throw new OptionsError(
      `--tokenizer ${opts.tokenizer} has ${info.vocabSize} ids but --model ${opts.model} has ` +
        `only ${cfg.vocabSize} embedding rows: use a model whose vocabulary covers the tokenizer`,
    );
  }
  try {
    validateConfig(cfg);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    throw new OptionsError(`--model ${opts.model}: ${error.message}`);
  }
  return cfg;
}
