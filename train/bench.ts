// `deno task bench [suite...]`: throughput and memory figures of this adapter, printed as
// tables and merged into bench/results/<adapter>.json so runs on different devices can be
// compared. See bench/README.md for the targets and the recorded results.
//
// Suites:
//   gemm     GFLOP/s of the f32 GEMM kernel, whose best shape is the adapter's MFU ceiling
//   step     tokens/s, step time, MFU, dispatches, submits and waits of whole training steps
//   memory   peak bytes per ledger class of one training step, per method
//   data     .bin loader and GPT-2 tokenizer throughput (data/bench.ts)
//   profile  GPU time per kernel kind of one training step of full and bpt, from timestamp
//            queries around each replayed dispatch (or a replay grouped by kind without them)

import { parseArgs } from "node:util";
import type { Dispatch, Gpu } from "../core/gpu.ts";
import { gemm } from "../core/ops/matmul.ts";
import {
  beginScope,
  drainPool,
  empty,
  endScope,
  fromArray,
  gpu,
  initGpu,
  ledger,
  MEMORY_CLASSES,
  type MemoryClass,
} from "../core/tensor.ts";
import { seededArray } from "../core/testing.ts";
import { benchData } from "../data/bench.ts";
import { parseArgsMessage } from "../data/flags.ts";
import { type Method, METHODS } from "../layers/params.ts";
import { runCli } from "./cli.ts";
import { mfu, stepFlops } from "./flops.ts";
import { OptionsError, parseTrainArgs, resolveModelConfig, type TrainOptions } from "./options.ts";
import { Trainer } from "./trainer.ts";

export const SUITES = ["gemm", "step", "memory", "data", "profile"] as const;
export type Suite = typeof SUITES[number];

// "profile" replays every dispatch of a step once more per kernel kind, so it runs only when named.
const DEFAULT_SUITES: readonly Suite[] = ["gemm", "step", "memory", "data"];

/** Settings of one `deno task bench` run. */
export interface BenchArgs {
  suites: Suite[];
  /** Measured training steps per configuration of the step suite. */
  steps: number;
  /** Untimed steps before them, the first of which compiles every kernel. */
  warmup: number;
  /** Rank of bpt, lora and relora in the step and profile suites. */
  rank: number;
  /** Preset of the memory suite. */
  memoryModel: string;
  /** Rank of bpt, lora and relora in the memory suite. */
  memoryRank: number;
  /** Directory of the JSON result files. */
  out: string;
  help: boolean;
}

const DEFAULTS = {
  steps: 5,
  warmup: 2,
  rank: 32,
  memoryModel: "qwen2.5-0.5b",
  memoryRank: 128,
  out: "bench/results",
};

export const BENCH_HELP = `Usage: deno task bench [suite...] [flags]

Measures this adapter and prints one table per suite. Results are merged into
--out/<adapter>.json, one entry per suite, with the date and the Deno version.

Suites (default: ${DEFAULT_SUITES.join(" ")})
  gemm      GFLOP/s of the f32 GEMM at 1024³, 512×2048×512 and the qwen2.5-tiny training
            shapes; the best is the adapter's ceiling, used for MFU
  step      tokens/s, step time (median, min, max), the step time minus full's paired by
            round (median and quartiles), MFU, dispatches, submits and waits per step of
            full training steps: qwen2.5-tiny at batch 8 × seq 64 (bf16 for every method,
            f32 for full and bpt) and qwen2.5-100m at batch 1 × seq 64 (bf16)
  memory    peak bytes per ledger class (parameters, gradients, optimizer, activations,
            scratch) of one training step at batch 1 × seq 64 in bf16, for every method
  data      .bin loader and GPT-2 tokenizer throughput in tokens/s
  profile   GPU time per kernel kind (GEMMs by role) of one qwen2.5-tiny bf16 step of
            full and bpt side by side, from timestamps around each replayed dispatch, or
            from a replay grouped by kind where the device lacks timestamp-query (not in
            the default set)

Flags
  --steps N          measured steps per step-suite configuration (default ${DEFAULTS.steps})
  --warmup N         untimed steps before them (default ${DEFAULTS.warmup})
  --rank R           rank of bpt, lora and relora in step and profile (default ${DEFAULTS.rank})
  --memory-model M   model preset of the memory suite (default ${DEFAULTS.memoryModel})
  --memory-rank R    rank of bpt, lora and relora in the memory suite (default ${DEFAULTS.memoryRank})
  --out DIR          directory of the JSON result files (default ${DEFAULTS.out}). deno task
                     train takes its MFU ceiling from the gemm result in this repository's
                     bench/results/<adapter>.json, so results written elsewhere do not
                     change it
  --help             print this help`;

function positiveInteger(flag: string, raw: string | undefined, fallback: number, min = 1) {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new OptionsError(`--${flag} ${raw} is invalid: use an integer ≥ ${min}`);
  }
  return value;
}

/** Parses the command line; throws OptionsError with a one-line message for bad input. */
export function parseBenchArgs(argv: string[]): BenchArgs {
  const options = {
    steps: { type: "string" },
    warmup: { type: "string" },
    rank: { type: "string" },
    "memory-model": { type: "string" },
    "memory-rank": { type: "string" },
    out: { type: "string" },
    help: { type: "boolean" },
  } as const;
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, strict: true, options });
  } catch (error) {
    const message = parseArgsMessage(error, Object.keys(options), "bench");
    if (message === null) throw error;
    throw new OptionsError(message);
  }
  const { values, positionals } = parsed;
  for (const name of positionals) {
    if (!(SUITES as readonly string[]).includes(name)) {
      throw new OptionsError(`unknown suite "${name}": use one of ${SUITES.join(", ")}`);
    }
  }
  const suites = positionals.length > 0
    ? SUITES.filter((s) => positionals.includes(s))
    : [...DEFAULT_SUITES];
  return {
    suites,
    steps: positiveInteger("steps", values.steps, DEFAULTS.steps),
    warmup: positiveInteger("warmup", values.warmup, DEFAULTS.warmup, 0),
    rank: positiveInteger("rank", values.rank, DEFAULTS.rank),
    memoryModel: values["memory-model"] ?? DEFAULTS.memoryModel,
    memoryRank: positiveInteger("memory-rank", values["memory-rank"], DEFAULTS.memoryRank),
    out: values.out ?? DEFAULTS.out,
    help: values.help === true,
  };
}

// ---- helpers ----

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Linear-interpolated quantile q in [0, 1] of xs (the method PyTorch and NumPy default to). */
export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const at = q * (s.length - 1);
  const lo = Math.floor(at);
  return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (at - lo);
}

/** Formats ms as a whole number with its sign, such as +12 or −3. */
function signed(ms: number): string {
  const r = Math.round(ms);
  if (r > 0) return `+${r}`;
  if (r < 0) return `−${-r}`;
  return "0";
}

/** Prints rows as a left-aligned text table with a header line. */
function printTable(header: string[], rows: (string | number)[][]) {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  for (const [k, row] of cells.entries()) {
    console.log(row.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd());
    if (k === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
  }
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

/** Lowercase adapter description with runs of other characters turned into "-". */
export function adapterSlug(description: string): string {
  return description.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") ||
    "unknown-adapter";
}

/** Counts `sync()` calls, the waits on the GPU, by wrapping the instance's method. */
function countWaits(g: Gpu): { readonly count: number } {
  const counter = { count: 0 };
  const original = g.sync.bind(g);
  g.sync = () => {
    counter.count++;
    return original();
  };
  return counter;
}

// Options of a benchmark trainer: steps is far past the measured ones, so no BPT or ReLoRA
// merge (every 100 steps by default) falls into the timing.
function trainOptions(model: string, method: Method, extra: string[]): TrainOptions {
  return parseTrainArgs(["--model", model, "--method", method, "--steps", "1000", ...extra]);
}

// ---- gemm ----

interface GemmShape {
  label: string;
  m: number;
  n: number;
  k: number;
  transB?: boolean;
}

/** GEMM shapes: two square-ish ones, then those of qwen2.5-tiny at 8 × 64 = 512 tokens. */
const GEMM_SHAPES: GemmShape[] = [
  { label: "1024³", m: 1024, n: 1024, k: 1024 },
  { label: "512×2048×512", m: 512, n: 2048, k: 512 },
  { label: "tiny q/o proj", m: 512, n: 128, k: 128, transB: true },
  { label: "tiny k/v proj", m: 512, n: 64, k: 128, transB: true },
  { label: "tiny gate/up proj", m: 512, n: 512, k: 128, transB: true },
  { label: "tiny down proj", m: 512, n: 128, k: 512, transB: true },
  { label: "tiny LM head", m: 512, n: 50304, k: 128, transB: true },
];

interface GemmRow {
  label: string;
  m: number;
  n: number;
  k: number;
  transB: boolean;
  ms: number;
  gflops: number;
}

// One shape: C [m, n] = A [m, k] · B, B stored [n, k] when transB. Each run records enough
// GEMMs for about 200 ms into one submission and waits once, so the submit-and-wait cost is
// spread over them. The result is the median of 5 runs after 2 warm-up runs.
async function timeGemm(s: GemmShape): Promise<GemmRow> {
  const a = fromArray(seededArray(s.m * s.k, 1), [s.m, s.k]);
  const b = fromArray(seededArray(s.k * s.n, 2), s.transB ? [s.n, s.k] : [s.k, s.n]);
  const c = empty([s.m, s.n]);
  const time = async (reps: number) => {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) gemm(c, a, b, { transB: s.transB });
    await gpu().sync();
    return (performance.now() - t0) / reps;
  };
  await time(1);
  const estimate = await time(1);
  const reps = Math.max(1, Math.min(100, Math.round(200 / Math.max(estimate, 1e-3))));
  const samples: number[] = [];
  for (let r = 0; r < 5; r++) samples.push(await time(reps));
  const ms = median(samples);
  return {
    label: s.label,
    m: s.m,
    n: s.n,
    k: s.k,
    transB: s.transB ?? false,
    ms,
    gflops: (2 * s.m * s.n * s.k) / (ms * 1e6),
  };
}

async function runGemm() {
  const rows: GemmRow[] = [];
  for (const shape of GEMM_SHAPES) {
    // The scope must stay open across the await: a scoped() around the async call would
    // dispose A, B and C when the promise is created, before the GEMMs run.
    beginScope();
    try {
      rows.push(await timeGemm(shape));
    } finally {
      endScope();
    }
  }
  console.log(`adapter: ${gpu().description}`);
  printTable(
    ["shape", "m×n×k", "transB", "ms", "GFLOP/s"],
    rows.map((r) => [
      r.label,
      `${r.m}×${r.n}×${r.k}`,
      r.transB ? "yes" : "no",
      r.ms.toFixed(2),
      r.gflops.toFixed(1),
    ]),
  );
  const ceilingGflops = Math.max(...rows.map((r) => r.gflops));
  console.log(`ceiling (best shape): ${ceilingGflops.toFixed(1)} GFLOP/s`);
  return { ceilingGflops, shapes: rows };
}

// ---- step ----

interface StepConfig {
  model: string;
  method: Method;
  dtype: "bf16" | "f32";
  batch: number;
  seqLen: number;
}

function stepConfigs(): StepConfig[] {
  const tiny = { model: "qwen2.5-tiny", batch: 8, seqLen: 64 };
  const small = { model: "qwen2.5-100m", batch: 1, seqLen: 64 };
  return [
    ...METHODS.map((method) => ({ ...tiny, method, dtype: "bf16" as const })),
    ...(["full", "bpt"] as const).map((method) => ({ ...tiny, method, dtype: "f32" as const })),
    ...METHODS.map((method) => ({ ...small, method, dtype: "bf16" as const })),
  ];
}

interface StepRow extends StepConfig {
  rank: number;
  tokensPerStep: number;
  medianMs: number;
  minMs: number;
  maxMs: number;
  tokensPerSecond: number;
  flopsPerStep: number;
  mfu: number;
  dispatchesPerStep: number;
  submitsPerStep: number;
  waitsPerStep: number;
  /**
   * Per-round step time minus that of full (same model and dtype) in the same
   * round: median and quartiles in ms. Null for full itself.
   */
  vsFullMs: { median: number; q25: number; q75: number } | null;
}

async function createTrainer(c: StepConfig, rank: number): Promise<Trainer> {
  const opts = trainOptions(c.model, c.method, [
    "--rank",
    String(rank),
    "--batch",
    String(c.batch),
    "--seq-len",
    String(c.seqLen),
    "--dtype",
    c.dtype,
  ]);
  return await Trainer.create(opts, resolveModelConfig(opts));
}

function disposeTrainer(trainer: Trainer) {
  trainer.close();
  trainer.dispose();
  // Pooled buffers of one model are useless to the next and, on CPU adapters, hold RAM.
  drainPool();
}

// Measures the configurations of one model together: each is built and warmed
// up, then the measured steps go round-robin, one step of each configuration
// per round. A drift of the machine's speed over the run (clock boost, another
// process) then lands on every method alike instead of on whichever ran last.
async function measureGroup(
  configs: StepConfig[],
  args: BenchArgs,
  ceilingFlops: number,
  waits: { readonly count: number },
): Promise<StepRow[]> {
  const g = gpu();
  const trainers: Trainer[] = [];
  try {
    for (const c of configs) {
      const trainer = await createTrainer(c, args.rank);
      trainers.push(trainer);
      for (let i = 0; i < args.warmup; i++) await trainer.trainStep();
    }
    const times = configs.map(() => [] as number[]);
    const counts = configs.map(() => ({ dispatches: 0, submits: 0, waits: 0 }));
    for (let i = 0; i < args.steps; i++) {
      for (let j = 0; j < configs.length; j++) {
        const [d0, s0, w0] = [g.dispatchCount, g.submitCount, waits.count];
        const t0 = performance.now();
        await trainers[j].trainStep();
        times[j].push(performance.now() - t0);
        counts[j].dispatches += g.dispatchCount - d0;
        counts[j].submits += g.submitCount - s0;
        counts[j].waits += waits.count - w0;
      }
    }
    return configs.map((c, j) => {
      const medianMs = median(times[j]);
      // Paired by round, the difference cancels most of the machine's drift,
      // which moves medians of separate runs by tens of ms on llvmpipe.
      const full = configs.findIndex((f) => f.method === "full" && f.dtype === c.dtype);
      const deltas = full >= 0 && full !== j ? times[j].map((t, i) => t - times[full][i]) : null;
      const tokens = trainers[j].tokensPerStep;
      const flops = stepFlops(trainers[j].config, c.method, args.rank, tokens, c.seqLen).total;
      return {
        ...c,
        rank: args.rank,
        tokensPerStep: tokens,
        medianMs,
        minMs: Math.min(...times[j]),
        maxMs: Math.max(...times[j]),
        tokensPerSecond: tokens / (medianMs / 1000),
        flopsPerStep: flops,
        mfu: mfu(flops, medianMs / 1000, ceilingFlops),
        dispatchesPerStep: counts[j].dispatches / args.steps,
        submitsPerStep: counts[j].submits / args.steps,
        waitsPerStep: counts[j].waits / args.steps,
        vsFullMs: deltas
          ? { median: median(deltas), q25: quantile(deltas, 0.25), q75: quantile(deltas, 0.75) }
          : null,
      };
    });
  } finally {
    for (const t of trainers) disposeTrainer(t);
  }
}

async function runStep(args: BenchArgs, ceilingGflops: number, waits: { readonly count: number }) {
  const rows: StepRow[] = [];
  const configs = stepConfigs();
  for (const model of new Set(configs.map((c) => c.model))) {
    const group = await measureGroup(
      configs.filter((c) => c.model === model),
      args,
      ceilingGflops * 1e9,
      waits,
    );
    rows.push(...group);
    const medians = group.map((r) => `${r.method} ${r.dtype} ${r.medianMs.toFixed(0)}`);
    console.error(`step: ${model} done, median ms: ${medians.join(", ")}`);
  }
  console.log(
    `adapter: ${gpu().description}; ceiling ${ceilingGflops.toFixed(1)} GFLOP/s; ` +
      `${args.warmup} warm-up + ${args.steps} measured steps; rank ${args.rank}`,
  );
  printTable(
    [
      "model",
      "method",
      "dtype",
      "B×T",
      "tok/s",
      "median ms",
      "min ms",
      "max ms",
      "vs full ms [q25, q75]",
      "GFLOP/step",
      "MFU %",
      "dispatches",
      "submits",
      "waits",
    ],
    rows.map((r) => [
      r.model,
      r.method,
      r.dtype,
      `${r.batch}×${r.seqLen}`,
      r.tokensPerSecond.toFixed(0),
      r.medianMs.toFixed(0),
      r.minMs.toFixed(0),
      r.maxMs.toFixed(0),
      r.vsFullMs
        ? `${signed(r.vsFullMs.median)} [${signed(r.vsFullMs.q25)}, ${signed(r.vsFullMs.q75)}]`
        : "",
      (r.flopsPerStep / 1e9).toFixed(2),
      (100 * r.mfu).toFixed(1),
      r.dispatchesPerStep.toFixed(0),
      r.submitsPerStep.toFixed(0),
      r.waitsPerStep.toFixed(0),
    ]),
  );
  return { ceilingGflops, warmup: args.warmup, steps: args.steps, rows };
}

// ---- memory ----

interface MemoryRow {
  method: Method;
  rank: number;
  peak: Record<MemoryClass, number>;
  peakTotal: number;
  ratioToFull: number;
}

async function runMemory(args: BenchArgs) {
  const rows: MemoryRow[] = [];
  for (const method of METHODS) {
    const c: StepConfig = { model: args.memoryModel, method, dtype: "bf16", batch: 1, seqLen: 64 };
    const trainer = await createTrainer(c, args.memoryRank);
    try {
      // The window covers what is live before the step (parameters, optimizer state) and
      // everything the step allocates: gradients, activations and backward scratch.
      ledger.resetPeak();
      await trainer.trainStep();
      rows.push({
        method,
        rank: args.memoryRank,
        peak: { ...ledger.peak },
        peakTotal: ledger.peakTotal,
        ratioToFull: NaN,
      });
    } finally {
      disposeTrainer(trainer);
    }
    console.error(`memory: ${args.memoryModel} ${method} done`);
  }
  const full = rows.find((r) => r.method === "full")!.peakTotal;
  for (const r of rows) r.ratioToFull = r.peakTotal / full;

  console.log(
    `${args.memoryModel}, batch 1 × seq 64, bf16, rank ${args.memoryRank}; peak MiB per class ` +
      "(each class's own peak) and the peak of the total",
  );
  printTable(
    ["method", ...MEMORY_CLASSES, "peak total", "× full"],
    rows.map((r) => [
      r.method,
      ...MEMORY_CLASSES.map((cls) => mib(r.peak[cls])),
      mib(r.peakTotal),
      r.ratioToFull.toFixed(3),
    ]),
  );
  return { model: args.memoryModel, batch: 1, seqLen: 64, dtype: "bf16", rows };
}

// ---- data ----

async function runData() {
  const r = await benchData();
  printTable(["path", "tokens", "tokens/s"], [
    [".bin loader, 16 × 1024 batches", r.binTokens, r.binTokensPerSecond.toFixed(0)],
    ["GPT-2 encode, Brown Corpus", r.gpt2Tokens, r.gpt2TokensPerSecond.toFixed(0)],
  ]);
  return r;
}

// ---- profile ----

interface KindRow {
  kind: string;
  dispatches: number;
  ms: number;
}

// Kernel kind of a dispatch label such as "gemm[linear.dW](512x128ᵀ @ 512x128)":
// the text before "(", which keeps a GEMM's role tag. GEMMs with a dimension
// of `vocab` are the LM head's, which both methods train in full.
function kernelKind(label: string, vocab = 0): string {
  const open = label.indexOf("(");
  const kind = open < 0 ? label : label.slice(0, open);
  const head = vocab > 0 && new RegExp(`\\b${vocab}x|x${vocab}\\b`).test(label);
  return kind.startsWith("gemm") && head ? `${kind} LM head` : kind;
}

/** One training step's dispatches, captured while it ran. */
interface Capture {
  dispatches: Dispatch[];
  stepMs: number;
  recordMs: number;
}

// Runs one training step while capturing its dispatches. The replay reuses the
// step's buffers, which stay in the pool, and overwrites the trainer's
// parameters, so the trainer is unusable afterwards.
async function captureStep(trainer: Trainer): Promise<Capture> {
  const g = gpu();
  const dispatches: Dispatch[] = [];
  const original = g.dispatch.bind(g);
  let recordMs = 0;
  g.dispatch = (d) => {
    const uniforms = d.uniforms === undefined ? undefined : structuredClone(d.uniforms);
    dispatches.push({ ...d, buffers: [...d.buffers], uniforms });
    const t0 = performance.now();
    original(d);
    recordMs += performance.now() - t0;
  };
  const t0 = performance.now();
  try {
    await trainer.trainStep();
  } finally {
    delete (g as Partial<Gpu>).dispatch;
  }
  return { dispatches, stepMs: performance.now() - t0, recordMs };
}

// Median time of an empty submit-and-wait (a 16-byte clear).
async function emptyWaitMs(): Promise<number> {
  const g = gpu();
  const probe = empty([4], { memoryClass: "scratch" });
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    const s = performance.now();
    g.clear(probe.buffer, 0, 16);
    await g.sync();
    samples.push(performance.now() - s);
  }
  probe.dispose();
  return median(samples);
}

/**
 * Times every dispatch of a capture on the GPU: each runs in a compute pass of
 * its own whose start and end write timestamp queries, all in one submission.
 * Returns milliseconds per dispatch, or null when the device lacks the
 * "timestamp-query" feature. Passes run back to back, so unlike the grouped
 * replay this keeps the step's order of kernels and its cache traffic.
 */
export async function timestampReplay(dispatches: Dispatch[]): Promise<number[] | null> {
  const g = gpu();
  const device = g.device;
  if (!device.features.has("timestamp-query") || dispatches.length === 0) return null;
  await g.sync();
  const n = dispatches.length;

  const querySet = device.createQuerySet({ type: "timestamp", count: 2 * n });
  const resolved = device.createBuffer({
    size: 16 * n,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const readback = device.createBuffer({
    size: 16 * n,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  // Uniforms of dispatch i at offset stride · i, a multiple of 256 bytes (the
  // minimum uniform offset alignment) that holds the largest uniform struct.
  const largest = Math.max(0, ...dispatches.map((d) => d.uniforms?.byteLength ?? 0));
  const stride = 256 * Math.max(1, Math.ceil(largest / 256));
  const uniformBytes = new Uint8Array(stride * n);
  dispatches.forEach((d, i) => {
    if (!d.uniforms) return;
    const u = d.uniforms instanceof ArrayBuffer
      ? new Uint8Array(d.uniforms)
      : new Uint8Array(d.uniforms.buffer, d.uniforms.byteOffset, d.uniforms.byteLength);
    uniformBytes.set(u, stride * i);
  });
  const uniformBuffer = device.createBuffer({
    size: uniformBytes.byteLength,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(uniformBuffer, 0, uniformBytes);

  try {
    const encoder = device.createCommandEncoder();
    dispatches.forEach((d, i) => {
      const pipeline = g.pipeline(d.code, d.label);
      const entries: GPUBindGroupEntry[] = [];
      if (d.uniforms) {
        entries.push({
          binding: 0,
          resource: { buffer: uniformBuffer, offset: stride * i, size: d.uniforms.byteLength },
        });
      }
      d.buffers.forEach((b, k) => {
        entries.push({ binding: k + 1, resource: b instanceof GPUBuffer ? { buffer: b } : b });
      });
      const pass = encoder.beginComputePass({
        timestampWrites: {
          querySet,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
      pass.setPipeline(pipeline);
      pass.setBindGroup(
        0,
        device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }),
      );
      const [x, y = 1, z = 1] = d.workgroups;
      pass.dispatchWorkgroups(x, y, z);
      pass.end();
    });

    encoder.resolveQuerySet(querySet, 0, 2 * n, resolved, 0);
    encoder.copyBufferToBuffer(resolved, 0, readback, 0, 16 * n);
    device.queue.submit([encoder.finish()]);
    await readback.mapAsync(GPUMapMode.READ);
    const ticks = new BigUint64Array(readback.getMappedRange().slice(0));
    readback.unmap();
    // Timestamps are in nanoseconds.
    return dispatches.map((_, i) => Number(ticks[2 * i + 1] - ticks[2 * i]) / 1e6);
  } finally {
    querySet.destroy();
    resolved.destroy();
    readback.destroy();
    uniformBuffer.destroy();
  }
}

/**
 * Fallback for devices without timestamp queries: replays each capture's
 * dispatches in groups, GEMMs by their full label (which names the shapes)
 * and other kernels by kind, one submission and one wait per group. The
 * captures take turns group by group, 3 rounds, so that a drift of the
 * machine's speed lands on every method alike. Each group's time is its
 * median minus the empty submit-and-wait. Returns ms per group label.
 */
async function replayByKind(captures: Capture[], waitMs: number): Promise<Map<string, number>[]> {
  const g = gpu();
  const grouped = captures.map((c) => {
    const groups = new Map<string, Dispatch[]>();
    for (const d of c.dispatches) {
      const key = d.label.startsWith("gemm") ? d.label : kernelKind(d.label);
      groups.set(key, [...(groups.get(key) ?? []), d]);
    }
    return [...groups.entries()].map(([key, list]) => ({ key, list, samples: [] as number[] }));
  });
  for (let r = 0; r < 3; r++) {
    for (let i = 0; grouped.some((groups) => i < groups.length); i++) {
      for (const groups of grouped) {
        const group = groups[i];
        if (!group) continue;
        const s = performance.now();
        for (const d of group.list) g.dispatch(d);
        await g.sync();
        group.samples.push(performance.now() - s);
      }
    }
  }
  return grouped.map((groups) =>
    new Map(groups.map((gr) => [gr.key, Math.max(0, median(gr.samples) - waitMs)]))
  );
}

// Rounds of timestamp replays per method; their mean smooths out single slow kernels.
const PROFILE_ROUNDS = 3;

// Time per dispatch label of each trainer's step: the mean of PROFILE_ROUNDS
// rounds, in which the trainers take turns to run a captured step and replay
// it with timestamps right away. Replayed at once, kernels read the data of
// their own step. A replay after another model's step read whatever that one
// left in the pooled buffers. On llvmpipe the LM head's GEMMs and
// cross_entropy_backward, identical in both methods, then differed by up to
// 20 %, as CPU arithmetic can on unusual values such as subnormal numbers.
// Needs the timestamp-query feature. Returns the times and the first round's
// captures.
async function stampedByLabel(trainers: Trainer[]) {
  const totals = trainers.map(() => new Map<string, number>());
  const captures: Capture[] = [];
  for (let r = 0; r < PROFILE_ROUNDS; r++) {
    for (const [i, trainer] of trainers.entries()) {
      const cap = await captureStep(trainer);
      if (r === 0) captures.push(cap);
      const ms = (await timestampReplay(cap.dispatches))!;
      cap.dispatches.forEach((d, k) => {
        totals[i].set(d.label, (totals[i].get(d.label) ?? 0) + ms[k] / PROFILE_ROUNDS);
      });
    }
  }
  return { perLabel: totals, captures };
}

// Sums times per label into rows per kernel kind, with dispatch counts from the capture.
function byKind(cap: Capture, msByLabel: Map<string, number>, vocab: number): Map<string, KindRow> {
  const kinds = new Map<string, KindRow>();
  const counted = new Set<string>();
  for (const d of cap.dispatches) {
    const kind = kernelKind(d.label, vocab);
    const row = kinds.get(kind) ?? { kind, dispatches: 0, ms: 0 };
    row.dispatches++;
    // The replay's groups are full GEMM labels and other kernels' kinds; each is added once.
    const key = msByLabel.has(d.label) ? d.label : kernelKind(d.label);
    if (!counted.has(key)) {
      counted.add(key);
      row.ms += msByLabel.get(key) ?? 0;
    }
    kinds.set(kind, row);
  }
  return kinds;
}

async function runProfile(args: BenchArgs) {
  const methods = ["full", "bpt"] as const;
  const configs = methods.map((method): StepConfig => ({
    model: "qwen2.5-tiny",
    method,
    dtype: "bf16",
    batch: 8,
    seqLen: 64,
  }));
  const trainers: Trainer[] = [];
  try {
    for (const c of configs) {
      const trainer = await createTrainer(c, args.rank);
      trainers.push(trainer);
      for (let i = 0; i < Math.max(1, args.warmup); i++) await trainer.trainStep();
    }
    const vocab = trainers[0].config.vocabSize;
    let source = `timestamp queries, mean of ${PROFILE_ROUNDS} replays`;
    let captures: Capture[] = [];
    let perLabel: Map<string, number>[];
    if (gpu().device.features.has("timestamp-query")) {
      ({ perLabel, captures } = await stampedByLabel(trainers));
    } else {
      for (const t of trainers) captures.push(await captureStep(t));
      const waitMs = await emptyWaitMs();
      source = `grouped replay (no timestamp-query; empty submit-and-wait of ${
        waitMs.toFixed(1)
      } ms subtracted per group)`;
      perLabel = await replayByKind(captures, waitMs);
    }
    const kinds = captures.map((cap, i) => byKind(cap, perLabel[i], vocab));

    for (const [i, c] of configs.entries()) {
      const cap = captures[i];
      console.log(
        `${c.model} ${c.method} ${c.dtype} ${c.batch}×${c.seqLen} rank ${args.rank}: step ${
          cap.stepMs.toFixed(0)
        } ms, ${cap.dispatches.length} dispatches, recording them ${cap.recordMs.toFixed(0)} ms`,
      );
    }
    console.log(`GPU ms per step by kernel kind, from ${source}:`);
    const all = [...new Set(kinds.flatMap((k) => [...k.keys()]))];
    const ms = (i: number, kind: string) => kinds[i].get(kind)?.ms ?? 0;
    all.sort((p, q) => Math.max(ms(0, q), ms(1, q)) - Math.max(ms(0, p), ms(1, p)));
    const total = (i: number) => [...kinds[i].values()].reduce((sum, k) => sum + k.ms, 0);
    printTable(
      ["kernel", "full dispatches", "full ms", "bpt dispatches", "bpt ms", "bpt − full ms"],
      [
        ...all.map((kind) => [
          kind,
          kinds[0].get(kind)?.dispatches ?? 0,
          ms(0, kind).toFixed(1),
          kinds[1].get(kind)?.dispatches ?? 0,
          ms(1, kind).toFixed(1),
          (ms(1, kind) - ms(0, kind)).toFixed(1),
        ]),
        [
          "total",
          captures[0].dispatches.length,
          total(0).toFixed(1),
          captures[1].dispatches.length,
          total(1).toFixed(1),
          (total(1) - total(0)).toFixed(1),
        ],
      ],
    );

    return configs.map((c, i) => {
      const gemms = [...perLabel[i].entries()]
        .filter(([label]) => label.startsWith("gemm"))
        .map(([label, t]) => ({
          label,
          dispatches: captures[i].dispatches.filter((d) => d.label === label).length,
          ms: t,
        }))
        .sort((p, q) => q.ms - p.ms);
      return {
        ...c,
        rank: args.rank,
        stepMs: captures[i].stepMs,
        recordMs: captures[i].recordMs,
        dispatches: captures[i].dispatches.length,
        source,
        kinds: [...kinds[i].values()].sort((p, q) => q.ms - p.ms),
        gemms,
      };
    });
  } finally {
    for (const t of trainers) disposeTrainer(t);
  }
}

// ---- results file ----

interface ResultsFile {
  adapter: string;
  suites: Record<string, unknown>;
}

async function saveResults(dir: string, suite: Suite, result: unknown): Promise<string> {
  const adapter = gpu().description;
  const path = `${dir}/${adapterSlug(adapter)}.json`;
  let file: ResultsFile = { adapter, suites: {} };
  try {
    file = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new OptionsError(`cannot read ${path} (${(error as Error).message}): fix or delete it`);
    }
  }
  file.adapter = adapter;
  file.suites[suite] = {
    date: new Date().toISOString(),
    adapter,
    deno: Deno.version.deno,
    result,
  };
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(path, JSON.stringify(file, null, 2) + "\n");
  return path;
}

// The step suite's MFU needs a ceiling: this run's gemm result, else the saved one.
async function savedCeiling(dir: string): Promise<number | null> {
  try {
    const file: ResultsFile = JSON.parse(
      await Deno.readTextFile(`${dir}/${adapterSlug(gpu().description)}.json`),
    );
    const gemmSuite = file.suites.gemm as { result?: { ceilingGflops?: number } } | undefined;
    return gemmSuite?.result?.ceilingGflops ?? null;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof SyntaxError) return null;
    throw error;
  }
}

async function main() {
  const args = parseBenchArgs(Deno.args);
  if (args.help) {
    console.log(BENCH_HELP);
    return;
  }
  const g = await initGpu();
  const waits = countWaits(g);
  let ceiling: number | null = null;
  if (args.suites.includes("step") && !args.suites.includes("gemm")) {
    ceiling = await savedCeiling(args.out);
    if (ceiling === null) {
      console.error("step: no saved gemm result for this adapter, running gemm");
    }
  }
  for (const suite of args.suites) {
    console.log(`\n== ${suite} ==`);
    let result: unknown;
    switch (suite) {
      case "gemm": {
        const r = await runGemm();
        ceiling = r.ceilingGflops;
        result = r;
        break;
      }
      case "step":
        if (ceiling === null) {
          const r = await runGemm();
          ceiling = r.ceilingGflops;
          await saveResults(args.out, "gemm", r);
        }
        result = await runStep(args, ceiling, waits);
        break;
      case "memory":
        result = await runMemory(args);
        break;
      case "data":
        result = await runData();
        break;
      case "profile":
        result = await runProfile(args);
        break;
    }
    const path = await saveResults(args.out, suite, result);
    console.log(`saved to ${path}`);
  }
}

if (import.meta.main) await runCli(main);
