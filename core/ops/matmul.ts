// GEMM: C = alpha · op(A) · op(B) + beta · C (+ bias), the hot path of
// training, plus the `matmul` and `linear` ops built on it. Options fold
// BPT's diagonals into the GEMMs. scaleK scales the inner dimension as B is
// loaded. scaleM and scaleN scale C's rows and columns, and scaledCopy writes
// a column-scaled copy of C next to it. addend adds a matrix to the product, for W + U V.
//
// Register-tiled kernels: each invocation accumulates a tileM × tileN block
// of C in registers and reads A and B straight from storage, four k at a time
// as vec4 loads when shapes and offsets are multiples of 4 and one k at a time
// otherwise. There is no workgroup memory. On Mesa llvmpipe 22.3 (2 cores,
// 256-bit AVX2) a 16×16 workgroup-memory tile ran at 0.5 GFLOP/s and this
// kernel at ~30 (`deno run -A core/gemm_bench.ts`, 1024³ f32). Barriers there
// run as coroutine switches, and every storage or workgroup load is a scalar
// loop over the SIMD lanes (gallivm lp_bld_nir_soa.c, emit_load_mem). So on
// CPU adapters speed comes from large per-invocation tiles, which raise the
// FMAs per load. `gemmConfig` sets the tile sizes per adapter.
//
// Operands may be f32, bf16 or f16 (packed two per u32 word); C is f32.
// Operands larger than one storage binding are split into blocks along M, N
// and K, accumulating over K blocks with beta = 1. A block with long K and
// few tiles of C (the LM head's dx = dlogits · E: 512×128 outputs, K = 50,304)
// is cut into split-K slices that write separate partial sums, and a second
// pass adds them in slice order.

import { leafGrad, record } from "../autograd.ts";
import { type DType, empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import {
  flatIndex,
  grid1d,
  main1d,
  storage,
  uniforms,
  vecStorage,
  type Window,
  window,
  windowElements,
} from "../wgsl.ts";
import { sumRows } from "./elementwise.ts";
import { scaleColumns } from "./scale_columns.ts";

/** Workgroup shape and register tile of the GEMM kernel. */
export interface GemmConfig {
  /** Invocations per workgroup along N. */
  workgroupX: number;
  /** Invocations per workgroup along M. */
  workgroupY: number;
  /** Rows of C per invocation (a power of two). */
  tileM: number;
  /** Columns of C per invocation (a power of two, at least 4). */
  tileN: number;
  /**
   * Workgroup count below which long K is split into slices that run in
   * parallel. With 0 or absent, K is never split.
   */
  splitKWorkgroups?: number;
  /** Minimum K per split-K slice (default 256). */
  splitKMinK?: number;
  /**
   * Computes a C narrower than one workgroup's columns as Cᵀ = op(B)ᵀ · op(A)ᵀ,
   * whose rows are wide, and stores it transposed.
   */
  transposeNarrow?: boolean;
}

let override: GemmConfig | null = null;

/** Forces a kernel configuration (tests and benchmarks); `null` restores the automatic choice. */
export function setGemmConfig(config: GemmConfig | null): void {
  override = config;
}

/**
 * Returns the kernel configuration for the current adapter.
 *
 * Fallback (CPU) adapters such as llvmpipe run one workgroup as SIMD lanes on
 * one core, so the workgroup is one SIMD width of invocations. Each invocation
 * takes a 16×16 tile: its 64 vec4 accumulators spill to L1, yet on llvmpipe it
 * ran faster than 8×8 or 8×16 tiles because it needs fewer loads per FMA. On GPUs each
 * invocation takes 4×4 (16 accumulator registers) and a workgroup of up to
 * 256 invocations, capped by `maxComputeInvocationsPerWorkgroup`, covers 64×64
 * of C so that neighbouring invocations share A and B rows in cache.
 *
 * Split-K: on a GPU, 512×128 outputs make only 16 such workgroups, so long K
 * is split until there are about 256. On llvmpipe both cores are busy without
 * it, but slices of at least 1024 k (8 for K = 50,304) keep the B slice in
 * cache: 512×128×50304 f32 ran 10–20 % faster that way (core/gemm_bench.ts,
 * 2-core llvmpipe with LLVM 15).
 *
 * On llvmpipe a narrow C such as BPT's 512×32 t = (b ⊙ x) Vᵀ only fills
 * 16×4 tiles, which do few FMAs per load. Computed as the 32×512 Cᵀ with
 * 16×16 tiles and stored transposed, the rank-32 shapes of qwen2.5-tiny ran
 * 1.3–1.6× faster (core/gemm_bench.ts).
 */
export function gemmConfig(): GemmConfig {
  if (override) return override;
  const g = gpu();
  const info = g.adapterInfo as GPUAdapterInfo & {
    isFallbackAdapter?: boolean;
    subgroupMaxSize?: number;
  };
  if (info.isFallbackAdapter) {
    return {
      workgroupX: info.subgroupMaxSize || 8,
      workgroupY: 1,
      tileM: 16,
      tileN: 16,
      splitKWorkgroups: 256,
      splitKMinK: 1024,
      transposeNarrow: true,
    };
  }
  // NOTE: the GPU configuration is checked for correctness on llvmpipe only;
  // its speed on discrete GPUs, and so its split-K target, are unmeasured.
  const side = Math.floor(Math.sqrt(Math.min(256, g.limits.maxComputeInvocationsPerWorkgroup)));
  return {
    workgroupX: side,
    workgroupY: side,
    tileM: 4,
    tileN: 4,
    splitKWorkgroups: 256,
    splitKMinK: 256,
  };
}

/** Options of `gemm`. */
export interface GemmOptions {
  /** A is stored [.., K, M] and used transposed. */
  transA?: boolean;
  /** B is stored [N, K] (PyTorch weight layout) and used transposed. */
  transB?: boolean;
  /** Default 1. */
  alpha?: number;
  /** Default 0, which never reads C, so C may hold garbage or NaN. */
  beta?: number;
  /** A length-N vector added to every row of C (not scaled by alpha). */
  bias?: Tensor;
  /**
   * A length-K vector s: the product becomes op(A) · diag(s) · op(B), so that
   * BPT's b ⊙ x never has to be stored. In `gemmSum` it scales the first product only.
   */
  scaleK?: Tensor;
  /** A length-M vector s scaling the product's rows: alpha · diag(s) · op(A) · op(B). */
  scaleM?: Tensor;
  /** A length-N vector s scaling the product's columns: alpha · op(A) · op(B) · diag(s). */
  scaleN?: Tensor;
  /** A tensor of C's shape, of any dtype, added to the product; needs beta 0. */
  addend?: Tensor;
  /**
   * Also write out = C ⊙ scale + bias, with out f32 of C's shape, scale and
   * bias [N]: from the same values in the same kernel when C is one block,
   * else in a second pass.
   */
  scaledCopy?: { out: Tensor; scale: Tensor; bias?: Tensor };
  /**
   * The product's role, such as "linear.dW", shown in its dispatch labels as
   * gemm[tag](..), so that profiles can group GEMMs by role.
   */
  tag?: string;
  /**
   * Sums over K along one operand, taken in the GEMM's k loop. With `of: "B"`
   * (B stored [K, N] without transB), `dot` gets Σ_k op(B)[k, j] · x[k, j]
   * and `plain` Σ_k op(B)[k, j] for each column j. With `of: "A"` (A stored
   * [K, M] with transA) they are the same sums over op(A)'s rows i. Both are
   * f32 and added to what they hold; x is laid out as that operand. BPT's
   * backward takes da and the bias gradient from its dU GEMM this way, and db
   * from dV. Only a 2-D product without scaleK takes them, and only when it
   * runs as one unsplit kernel that reads the operand row by row. `gemm`
   * returns false when it did not take them, and then it computed neither.
   */
  sums?: { of: "A" | "B"; x?: Tensor; dot?: Tensor; plain?: Tensor };
}

// One GEMM problem in element units. A batched operand advances by its stride
// per batch; a stride of 0 shares the operand across the batch.
interface Problem {
  batch: number;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  lda: number;
  ldb: number;
  ldc: number;
  strideA: number;
  strideB: number;
  strideC: number;
}

function dims(t: Tensor): { batch: number; rows: number; cols: number; batchShape: number[] } {
  const s = t.shape;
  const batchShape = s.slice(0, -2);
  return {
    batch: batchShape.reduce((p, q) => p * q, 1),
    rows: s[s.length - 2],
    cols: s[s.length - 1],
    batchShape,
  };
}

function describe(a: Tensor, b: Tensor, transA: boolean, transB: boolean): string {
  return `${a.shapeString}${transA ? "ᵀ" : ""} @ ${b.shapeString}${transB ? "ᵀ" : ""}`;
}

// Checks shapes and returns M, N, K and the batch shape of op(A) · op(B).
function checkShapes(op: string, a: Tensor, b: Tensor, transA: boolean, transB: boolean) {
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new ShapeError(
      `${op}: operands need at least 2 dimensions: ${describe(a, b, transA, transB)}`,
    );
  }
  const da = dims(a);
  const db = dims(b);
  const [m, ka] = transA ? [da.cols, da.rows] : [da.rows, da.cols];
  const [kb, n] = transB ? [db.cols, db.rows] : [db.rows, db.cols];
  if (ka !== kb) {
    throw new ShapeError(`${op}: inner dimensions differ: ${describe(a, b, transA, transB)}`);
  }
  const aBatched = a.shape.length > 2;
  const bBatched = b.shape.length > 2;
  if (aBatched && bBatched && da.batchShape.join() !== db.batchShape.join()) {
    throw new ShapeError(
      `${op}: batch dimensions differ: ${
        describe(a, b, transA, transB)
      }; a batched B needs A's batch dimensions`,
    );
  }
  const batchShape = aBatched ? da.batchShape : db.batchShape;
  return { m, n, k: ka, batchShape, aBatched, bBatched };
}

/**
 * Computes C = alpha · op(A) · op(B) + beta · C (+ bias) into an existing f32
 * tensor, recording no autograd.
 *
 * A is [.., M, K] ([.., K, M] with transA), B is [K, N] ([N, K] with transB);
 * each may be 2-D (shared across the batch) or carry the batch dimensions. C
 * is [.., M, N] with the batch dimensions, or [M, N] to sum over the batch
 * (a shared weight's gradient).
 */
export function gemm(c: Tensor, a: Tensor, b: Tensor, opts: GemmOptions = {}): boolean {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const { m, n, k, batchShape, aBatched, bBatched } = checkShapes("gemm", a, b, transA, transB);
  const batch = batchShape.reduce((p, q) => p * q, 1);
  const expected = [...batchShape, m, n];
  const reduce = c.shape.length === 2 && batchShape.length > 0;
  if (c.dtype !== "f32") {
    throw new ShapeError(`gemm: output must be f32, got ${c.dtype} ${c.shapeString}`);
  }
  if (!reduce && c.shape.join() !== expected.join()) {
    throw new ShapeError(
      `gemm: output ${c.shapeString} does not match ${describe(a, b, transA, transB)} = ${
        expected.join("x")
      }`,
    );
  }
  if (reduce && (c.shape[0] !== m || c.shape[1] !== n)) {
    throw new ShapeError(
      `gemm: output ${c.shapeString} does not match ${
        describe(a, b, transA, transB)
      } summed over the batch = ${m}x${n}`,
    );
  }
  if (opts.bias && opts.bias.numel !== n) {
    throw new ShapeError(`gemm: bias ${opts.bias.shapeString} does not have ${n} elements`);
  }
  const beta = opts.beta ?? 0;
  checkExtras("gemm", opts, c, m, k, n, beta);
  if (opts.addend && reduce && batch > 1) {
    throw new ShapeError(
      `gemm: an addend needs C with the batch dimensions, got C ${c.shapeString} summed over the batch`,
    );
  }

  const p: Problem = {
    batch,
    m,
    n,
    k,
    transA,
    transB,
    lda: a.shape[a.shape.length - 1],
    ldb: b.shape[b.shape.length - 1],
    ldc: n,
    strideA: aBatched ? m * k : 0,
    strideB: bBatched ? k * n : 0,
    strideC: reduce ? 0 : m * n,
  };
  const alpha = opts.alpha ?? 1;
  const run: Run = {
    a,
    b,
    c,
    bias: opts.bias ?? null,
    alpha,
    label: describe(a, b, transA, transB),
    tag: opts.tag ? `[${opts.tag}]` : "",
    ...extraTensors(opts),
    sums: sumsSpec(opts, a, b, m, n, batch, transA, transB),
    sumsDone: { done: false },
  };

  const copy = opts.scaledCopy;
  if (copy && batch === 1 && oneKernel(p, run, copy)) run.scaledCopy = copyWindows(copy, n, m * n);
  if (!reduce || batch === 1) {
    dispatchBatches(run, p, 0, batch, beta, true);
  } else if (transA && !transB && aBatched && bBatched && !run.scaleK) {
    // Summing over the batch. When both operands are stored with K as their
    // row dimension, the batch folds into K: [batch·K, M]ᵀ @ [batch·K, N].
    // A scaleK of K elements would not cover the folded K.
    dispatchBatches(
      run,
      { ...p, batch: 1, k: batch * k, strideA: 0, strideB: 0 },
      0,
      1,
      beta,
      true,
    );
  } else {
    for (let z = 0; z < batch; z++) {
      dispatchBatches(run, { ...p, strideC: 0 }, z, 1, z === 0 ? beta : 1, z === 0);
    }
  }
  if (copy && !run.scaledCopy) {
    const rows = c.numel / Math.max(n, 1);
    scaleColumns(copy.out.reshape([rows, n]), c.reshape([rows, n]), copy.scale, copy.bias);
  }
  return !opts.sums || run.sumsDone!.done;
}

// The in-kernel sums of GemmOptions.sums, or null when the product cannot take them.
function sumsSpec(
  opts: GemmOptions,
  a: Tensor,
  b: Tensor,
  m: number,
  n: number,
  batch: number,
  transA: boolean,
  transB: boolean,
): Run["sums"] {
  const sums = opts.sums;
  if (!sums || (!sums.dot && !sums.plain)) return null;
  const operand = sums.of === "A" ? a : b;
  const len = sums.of === "A" ? m : n;
  for (const t of [sums.dot, sums.plain]) {
    if (t && (t.dtype !== "f32" || t.numel !== len)) {
      throw new ShapeError(
        `gemm: sums over ${sums.of} need f32 outputs of ${len} elements, got ${t.dtype} ${t.shapeString}`,
      );
    }
  }
  if (sums.x && sums.x.shape.join() !== operand.shape.join()) {
    throw new ShapeError(
      `gemm: sums over ${sums.of} need x of its shape ${operand.shapeString}, got ${sums.x.shapeString}`,
    );
  }
  if (sums.dot && !sums.x) {
    throw new ShapeError(`gemm: sums over ${sums.of} with a dot output need x`);
  }
  const rowWise = sums.of === "A" ? transA : !transB;
  const ok = batch === 1 && a.shape.length === 2 && b.shape.length === 2 && rowWise &&
    !opts.scaleK;
  if (!ok) return null;
  const dot = sums.dot ?? null;
  return { of: sums.of, x: dot ? sums.x! : null, dot, plain: sums.plain ?? null };
}

// Checks scaleK, scaleM, scaleN, addend and scaledCopy against C and the product's M, K and N.
function checkExtras(
  op: string,
  opts: GemmOptions,
  c: Tensor,
  m: number,
  k: number,
  n: number,
  beta: number,
) {
  const { scaleK, scaleM, scaleN, addend, scaledCopy: copy } = opts;
  if (scaleK && scaleK.numel !== k) {
    throw new ShapeError(`${op}: scaleK ${scaleK.shapeString} does not have K = ${k} elements`);
  }
  if (scaleM && scaleM.numel !== m) {
    throw new ShapeError(`${op}: scaleM ${scaleM.shapeString} does not have M = ${m} elements`);
  }
  if (scaleN && scaleN.numel !== n) {
    throw new ShapeError(`${op}: scaleN ${scaleN.shapeString} does not have N = ${n} elements`);
  }
  if (addend && addend.numel !== c.numel) {
    throw new ShapeError(
      `${op}: addend ${addend.shapeString} does not match C ${c.shapeString}`,
    );
  }
  if (addend && beta !== 0) {
    throw new ShapeError(`${op}: an addend replaces beta · C; pass beta 0, got ${beta}`);
  }
  if (
    copy &&
    (copy.out.dtype !== "f32" || copy.out.numel !== c.numel || copy.scale.numel !== n ||
      (copy.bias && copy.bias.numel !== n))
  ) {
    throw new ShapeError(
      `${op}: scaled copy needs an f32 output of C's ${c.numel} elements and a scale and bias of ${n}, got ${copy.out.dtype} ${copy.out.shapeString}, scale ${copy.scale.shapeString}${
        copy.bias ? `, bias ${copy.bias.shapeString}` : ""
      }`,
    );
  }
}

function extraTensors(opts: GemmOptions) {
  return {
    scaleK: opts.scaleK ?? null,
    scaleM: opts.scaleM ?? null,
    scaleN: opts.scaleN ?? null,
    addend: opts.addend ?? null,
  };
}

function copyWindows(copy: NonNullable<GemmOptions["scaledCopy"]>, n: number, span: number) {
  return {
    scale: copy.scale,
    bias: copy.bias ?? null,
    ws: window(copy.scale, 0, n),
    wy: window(copy.out, 0, span),
    wbias: copy.bias ? window(copy.bias, 0, n) : null,
  };
}

// Whether an unbatched problem runs as one kernel (every operand in one
// binding, no split-K) whose storage bindings, with a scaled copy, stay within
// the device's limit. Only then can that kernel also write the scaled copy.
function oneKernel(p: Problem, run: Run, copy: GemmOptions["scaledCopy"]): boolean {
  const s = spans(p, p.m, p.n, Math.max(p.k, 1));
  const second = run.second ? spans({ ...p, ...run.second }, p.m, p.n, run.second.k) : null;
  const fits = s.a <= windowElements(run.a.dtype) && s.b <= windowElements(run.b.dtype) &&
    s.c <= windowElements("f32") &&
    (!second ||
      (second.a <= windowElements(run.second!.a.dtype) &&
        second.b <= windowElements(run.second!.b.dtype)));
  const kb = p.k + (run.second?.k ?? 0);
  const blk = { mb: p.m, nb: p.n, kb };
  let bindings = 3 +
    [run.bias, run.scaleK, run.scaleM, run.scaleN, run.addend].filter((t) => t).length;
  if (run.second) bindings += 2;
  if (copy) bindings += copy.bias ? 3 : 2;
  return p.m > 0 && p.n > 0 && p.k > 0 && fits && splitKSlices(gemmConfig(), blk) <= 1 &&
    bindings <= gpu().limits.maxStorageBuffersPerShaderStage;
}

/** Options of `gemmSum`: those of `gemm`, where `scaleK` applies to the first product. */
export type GemmSumOptions = GemmOptions;

/**
 * Computes C = alpha · (op(A1) · op(B1) + op(A2) · op(B2)) + beta · C (+ bias)
 * for 2-D operands with the same transposes and C [M, N]; the two inner
 * dimensions may differ. When both products fit single bindings and need no
 * split-K, one kernel sums both into the same accumulators, and otherwise two
 * GEMMs run. BPT uses it for (b ⊙ x) Wᵀ + t Uᵀ and dz W + dt V, whose rank-r
 * halves would each be a narrow GEMM that reads and rewrites all of C.
 * With `scaledCopy` it also writes Y = C ⊙ scale + bias, in the same kernel
 * when fused (BPT's y = a ⊙ z + bias next to z, which its backward needs).
 */
export function gemmSum(
  c: Tensor,
  a1: Tensor,
  b1: Tensor,
  a2: Tensor,
  b2: Tensor,
  opts: GemmSumOptions = {},
): void {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  for (const t of [a1, b1, a2, b2]) {
    if (t.shape.length !== 2) {
      throw new ShapeError(
        `gemmSum: operands must be 2-D: ${describe(a1, b1, transA, transB)} + ${
          describe(a2, b2, transA, transB)
        }`,
      );
    }
  }
  const first = checkShapes("gemmSum", a1, b1, transA, transB);
  const other = checkShapes("gemmSum", a2, b2, transA, transB);
  if (first.m !== other.m || first.n !== other.n) {
    throw new ShapeError(
      `gemmSum: products differ in shape: ${
        describe(a1, b1, transA, transB)
      } is ${first.m}x${first.n}, ${describe(a2, b2, transA, transB)} is ${other.m}x${other.n}`,
    );
  }
  const { m, n } = first;
  if (opts.bias && opts.bias.numel !== n) {
    throw new ShapeError(`gemmSum: bias ${opts.bias.shapeString} does not have ${n} elements`);
  }
  const beta = opts.beta ?? 0;
  checkExtras("gemmSum", opts, c, m, first.k, n, beta);
  const copy = opts.scaledCopy;
  const fallback = () => {
    const { scaledCopy: _, ...plain } = opts;
    gemm(c, a1, b1, plain);
    gemm(c, a2, b2, {
      transA,
      transB,
      alpha: opts.alpha,
      beta: 1,
      scaleM: opts.scaleM,
      scaleN: opts.scaleN,
      tag: opts.tag,
    });
    if (copy) scaleColumns(copy.out.reshape([m, n]), c, copy.scale, copy.bias);
  };
  if (c.dtype !== "f32" || c.shape.length !== 2 || c.shape[0] !== m || c.shape[1] !== n) {
    return fallback(); // gemm reports the bad output
  }

  const p: Problem = {
    batch: 1,
    m,
    n,
    k: first.k,
    transA,
    transB,
    lda: a1.shape[1],
    ldb: b1.shape[1],
    ldc: n,
    strideA: 0,
    strideB: 0,
    strideC: 0,
  };
  const p2 = { ...p, k: other.k, lda: a2.shape[1], ldb: b2.shape[1] };
  const s1 = spans(p, m, n, Math.max(first.k, 1));
  const s2 = spans(p2, m, n, Math.max(other.k, 1));
  const run: Run = {
    a: a1,
    b: b1,
    c,
    bias: opts.bias ?? null,
    alpha: opts.alpha ?? 1,
    label: `${describe(a1, b1, transA, transB)} + ${describe(a2, b2, transA, transB)}`,
    tag: opts.tag ? `[${opts.tag}]` : "",
    ...extraTensors(opts),
    second: {
      a: a2,
      b: b2,
      k: other.k,
      lda: p2.lda,
      ldb: p2.ldb,
      wa: window(a2, 0, s2.a),
      wb: window(b2, 0, s2.b),
    },
  };
  if (other.k === 0 || !oneKernel(p, run, copy)) return fallback();
  if (copy) run.scaledCopy = copyWindows(copy, n, s1.c);

  const blk: Block = {
    z: 1,
    aStart: 0,
    bStart: 0,
    cStart: 0,
    m0: 0,
    n0: 0,
    k0: 0,
    mb: m,
    nb: n,
    kb: first.k,
    beta,
    bias: opts.bias !== undefined,
  };
  dispatchKernel(run, p, blk, gemmConfig(), window(a1, 0, s1.a), window(b1, 0, s1.b), {
    window: window(c, 0, s1.c),
    ldc: n,
    strideC: 0,
    alpha: run.alpha,
    beta,
    bias: opts.bias ? window(opts.bias, 0, n) : null,
    kSplit: 0,
    ...extraWindows(run, blk, p, 0),
  });
}

interface Run {
  a: Tensor;
  b: Tensor;
  c: Tensor;
  bias: Tensor | null;
  alpha: number;
  label: string;
  /** GemmOptions.tag in brackets, or "". */
  tag: string;
  /** GemmOptions.sums as the kernel may take them (`of` flips with the operands), or null. */
  sums?: { of: "A" | "B"; x: Tensor | null; dot: Tensor | null; plain: Tensor | null } | null;
  /** Set when a kernel took the sums; shared by the copies of a run. */
  sumsDone?: { done: boolean };
  /** GemmOptions.scaleK, scaleM, scaleN and addend. */
  scaleK: Tensor | null;
  scaleM: Tensor | null;
  scaleN: Tensor | null;
  addend: Tensor | null;
  /** A second product summed into the same accumulators (`gemmSum`), bound whole. */
  second?: SecondProduct;
  /** The kernel computes Cᵀ: its A and B are the caller's B and A, swapped and transposed. */
  transposed?: boolean;
  /** Y = C ⊙ scale + bias, written from the same values as C (`gemmSum`), bound whole. */
  scaledCopy?: { scale: Tensor; bias: Tensor | null; ws: Window; wy: Window; wbias: Window | null };
}

interface SecondProduct {
  a: Tensor;
  b: Tensor;
  k: number;
  lda: number;
  ldb: number;
  wa: Window;
  wb: Window;
}

// Elements of each operand that one block of mb × nb × kb touches, from its first to its last.
function spans(p: Problem, mb: number, nb: number, kb: number) {
  return {
    a: p.transA ? (kb - 1) * p.lda + mb : (mb - 1) * p.lda + kb,
    b: p.transB ? (nb - 1) * p.ldb + kb : (kb - 1) * p.ldb + nb,
    c: (mb - 1) * p.ldc + nb,
  };
}

// Dispatches batches [z0, z0 + count): in one dispatch when all operands fit
// in a binding each, else batch by batch in blocks.
function dispatchBatches(
  run: Run,
  p: Problem,
  z0: number,
  count: number,
  beta: number,
  withBias: boolean,
) {
  if (count === 0 || p.m === 0 || p.n === 0) return;
  const limA = windowElements(run.a.dtype);
  const limB = windowElements(run.b.dtype);
  const limC = windowElements("f32");
  const full = spans(p, p.m, p.n, p.k);
  const maxZ = gpu().limits.maxComputeWorkgroupsPerDimension;
  const fits = (z: number) =>
    (z - 1) * p.strideA + full.a <= limA && (z - 1) * p.strideB + full.b <= limB &&
    (z - 1) * p.strideC + full.c <= limC;

  if (count <= maxZ && fits(count)) {
    dispatchBlock(run, p, {
      z: count,
      aStart: z0 * p.strideA,
      bStart: z0 * p.strideB,
      cStart: z0 * p.strideC,
      m0: 0,
      n0: 0,
      k0: 0,
      mb: p.m,
      nb: p.n,
      kb: p.k,
      beta,
      bias: withBias,
    });
    return;
  }
  if (count > 1) {
    const step = fits(1) ? largestFittingBatch(fits, Math.min(count, maxZ)) : 1;
    for (let z = z0; z < z0 + count; z += step) {
      dispatchBatches(run, p, z, Math.min(step, z0 + count - z), beta, withBias);
    }
    return;
  }

  const [mb, nb, kb] = blockSizes(p, limA, limB, limC);
  for (let m0 = 0; m0 < p.m; m0 += mb) {
    for (let n0 = 0; n0 < p.n; n0 += nb) {
      for (let k0 = 0; k0 < Math.max(p.k, 1); k0 += Math.max(kb, 1)) {
        dispatchBlock(run, p, {
          z: 1,
          aStart: z0 * p.strideA,
          bStart: z0 * p.strideB,
          cStart: z0 * p.strideC,
          m0,
          n0,
          k0,
          mb: Math.min(mb, p.m - m0),
          nb: Math.min(nb, p.n - n0),
          kb: Math.min(kb, p.k - k0),
          beta: k0 === 0 ? beta : 1,
          bias: withBias && k0 === 0,
        });
      }
    }
  }
}

function largestFittingBatch(fits: (z: number) => boolean, max: number): number {
  let lo = 1;
  let hi = max;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Block sizes (multiples of 4 where the dimension allows, so blocks keep the
// vec4 path) whose spans fit the binding limits. Each step halves the outer
// (row) dimension of an operand that does not fit, and its inner dimension
// once the outer one is down to 4.
function blockSizes(
  p: Problem,
  limA: number,
  limB: number,
  limC: number,
): [number, number, number] {
  let mb = p.m;
  let nb = p.n;
  let kb = p.k;
  const halve = (x: number) => (x <= 4 ? x : Math.max(4, Math.ceil(x / 8) * 4));
  for (;;) {
    const s = spans(p, mb, nb, kb);
    if (s.a <= limA && s.b <= limB && s.c <= limC) return [mb, nb, kb];
    const before = [mb, nb, kb].join();
    if (s.c > limC) {
      if (mb > 4) mb = halve(mb);
      else nb = halve(nb);
    } else if (s.a > limA) {
      const outerIsK = p.transA;
      if (outerIsK && kb > 4) kb = halve(kb);
      else if (outerIsK) mb = halve(mb);
      else if (mb > 4) mb = halve(mb);
      else kb = halve(kb);
    } else {
      const outerIsN = p.transB;
      if (outerIsN && nb > 4) nb = halve(nb);
      else if (outerIsN) kb = halve(kb);
      else if (kb > 4) kb = halve(kb);
      else nb = halve(nb);
    }
    if ([mb, nb, kb].join() === before) {
      throw new ShapeError(
        `gemm: cannot split ${p.m}x${p.k} @ ${p.k}x${p.n} into blocks that fit a ${gpu().bindingLimit}-byte binding`,
      );
    }
  }
}

interface Block {
  z: number;
  aStart: number;
  bStart: number;
  cStart: number;
  m0: number;
  n0: number;
  k0: number;
  mb: number;
  nb: number;
  kb: number;
  beta: number;
  bias: boolean;
}

function dispatchBlock(run: Run, p: Problem, blk: Block) {
  const { a, b, c } = run;
  const originA = blk.aStart + (p.transA ? blk.k0 * p.lda + blk.m0 : blk.m0 * p.lda + blk.k0);
  const originB = blk.bStart + (p.transB ? blk.n0 * p.ldb + blk.k0 : blk.k0 * p.ldb + blk.n0);
  const s = spans(p, blk.mb, blk.nb, Math.max(blk.kb, 1));
  const wa = window(a, originA, (blk.z - 1) * p.strideA + s.a);
  const wb = window(b, originB, (blk.z - 1) * p.strideB + s.b);
  const bias = blk.bias ? run.bias : null;
  const wbias = bias ? window(bias, blk.n0, blk.nb) : null;

  const cfg = gemmConfig();
  const splits = blk.z === 1 ? splitKSlices(cfg, blk) : 1;
  const originC = blk.cStart + blk.m0 * p.ldc + blk.n0;
  const extra = extraWindows(run, blk, p, originC);
  if (splits <= 1) {
    const wc = window(c, originC, (blk.z - 1) * p.strideC + s.c);
    dispatchKernel(run, p, blk, cfg, wa, wb, {
      window: wc,
      ldc: p.ldc,
      strideC: p.strideC,
      alpha: run.alpha,
      beta: blk.beta,
      bias: wbias,
      kSplit: 0,
      ...extra,
    });
    return;
  }

  // Split-K: slice z sums k in [z·kSplit, (z + 1)·kSplit) into its own
  // [mb, nb] plane of a scratch tensor, and a second pass adds the planes in
  // order, so the result does not depend on scheduling (no float atomics).
  const kSplit = Math.ceil(blk.kb / splits / 4) * 4;
  const slices = Math.ceil(blk.kb / kSplit);
  const partial = empty([slices, blk.mb, blk.nb], { memoryClass: "scratch" });
  try {
    dispatchKernel(run, p, { ...blk, z: slices }, cfg, wa, wb, {
      window: window(partial, 0, partial.numel),
      ldc: blk.nb,
      strideC: blk.mb * blk.nb,
      alpha: 1,
      beta: 0,
      bias: null,
      kSplit,
      scaleK: extra.scaleK,
      scaleM: extra.scaleM,
      scaleN: extra.scaleN,
      addend: null,
    });
    dispatchSplitKSum(run, p, blk, partial, window(c, originC, s.c), wbias, extra.addend);
  } finally {
    // The pool may hand the buffer to a later dispatch, which the queue runs
    // after these two.
    partial.dispose();
  }
}

// Windows of scaleK, scaleM, scaleN and the addend for one block. The addend goes
// with the block's first K slice only: later ones add to C with beta = 1.
function extraWindows(run: Run, blk: Block, p: Problem, originC: number) {
  const s = spans(p, blk.mb, blk.nb, Math.max(blk.kb, 1));
  return {
    scaleK: run.scaleK ? window(run.scaleK, blk.k0, Math.max(blk.kb, 1)) : null,
    scaleM: run.scaleM ? window(run.scaleM, blk.m0, blk.mb) : null,
    scaleN: run.scaleN ? window(run.scaleN, blk.n0, blk.nb) : null,
    addend: run.addend && blk.k0 === 0
      ? window(run.addend, originC, (blk.z - 1) * p.strideC + s.c)
      : null,
  };
}

// Number of split-K slices for a single (unbatched) block: enough to give
// `splitKWorkgroups` workgroups, each slice at least `splitKMinK` long, and
// all partial sums within one binding.
function splitKSlices(cfg: GemmConfig, blk: Pick<Block, "mb" | "nb" | "kb">): number {
  const target = cfg.splitKWorkgroups ?? 0;
  const minK = cfg.splitKMinK ?? 256;
  if (target <= 0 || blk.kb < 2 * minK) return 1;
  const tiles = Math.ceil(blk.mb / (cfg.tileM * cfg.workgroupY)) *
    Math.ceil(blk.nb / (cfg.tileN * cfg.workgroupX));
  if (tiles >= target) return 1;
  const planes = Math.floor(windowElements("f32") / (blk.mb * blk.nb));
  const maxZ = gpu().limits.maxComputeWorkgroupsPerDimension;
  return Math.max(1, Math.min(Math.ceil(target / tiles), Math.floor(blk.kb / minK), planes, maxZ));
}

// Destination of one GEMM dispatch (C or the split-K partial sums), with its
// layout, scaling and bias.
interface Output {
  window: Window;
  ldc: number;
  strideC: number;
  alpha: number;
  beta: number;
  bias: Window | null;
  /** K per split-K slice (workgroup z), or 0 when z is the batch. */
  kSplit: number;
  scaleK: Window | null;
  scaleM: Window | null;
  scaleN: Window | null;
  /** Added in place of beta · C, laid out as C. */
  addend: Window | null;
}

function dispatchKernel(
  run: Run,
  p: Problem,
  blk: Block,
  cfg: GemmConfig,
  wa: Window,
  wb: Window,
  out: Output,
) {
  const { a, b } = run;
  const split = out.kSplit > 0;
  const strideA = split ? 0 : p.strideA;
  const strideB = split ? 0 : p.strideB;
  if (
    cfg.transposeNarrow && !run.transposed && !run.second && !split && blk.z === 1 &&
    blk.nb < cfg.workgroupX * cfg.tileN && blk.mb > blk.nb
  ) {
    // Cᵀ = op(B)ᵀ · op(A)ᵀ: the operands trade places and each transpose flag
    // flips. C's row and column scales become the kernel's column and row
    // scales. The stores, the addend and the scaled copy keep C's layout.
    const pt: Problem = {
      ...p,
      m: p.n,
      n: p.m,
      transA: !p.transB,
      transB: !p.transA,
      lda: p.ldb,
      ldb: p.lda,
      strideA: p.strideB,
      strideB: p.strideA,
    };
    const blkT: Block = { ...blk, m0: blk.n0, n0: blk.m0, mb: blk.nb, nb: blk.mb };
    const runT: Run = {
      ...run,
      a: b,
      b: a,
      scaleM: run.scaleN,
      scaleN: run.scaleM,
      transposed: true,
      sums: run.sums ? { ...run.sums, of: run.sums.of === "A" ? "B" : "A" } : null,
    };
    const outT: Output = { ...out, scaleM: out.scaleN, scaleN: out.scaleM };
    return dispatchKernel(runT, pt, blkT, cfg, wb, wa, outT);
  }

  // vec4 loads need every vector dimension, leading dimension, stride and
  // offset to be a multiple of 4 elements.
  const multiples = [
    blk.nb,
    blk.kb,
    p.lda,
    p.ldb,
    out.ldc,
    strideA,
    strideB,
    out.strideC,
    wa.offset,
    wb.offset,
    out.window.offset,
  ];
  if (p.transA) multiples.push(blk.mb);
  const second = run.second;
  if (second) {
    multiples.push(second.k, second.lda, second.ldb, second.wa.offset, second.wb.offset);
  }
  const copy = run.scaledCopy;
  if (copy) multiples.push(copy.ws.offset, copy.wy.offset, copy.wbias?.offset ?? 0);
  // The sums run in the k loop over B's rows, so the block must be the whole
  // product, in one kernel with all of K.
  const whole = blk.m0 === 0 && blk.n0 === 0 && blk.k0 === 0 && blk.mb === p.m &&
    blk.nb === p.n && blk.kb === p.k && blk.z === 1;
  const sums = run.sums?.of === "B" && !p.transB && !split && !second && whole ? run.sums : null;
  const sumWindows = sums
    ? {
      x: sums.x ? window(sums.x, 0, sums.x.numel) : null,
      dot: sums.dot ? window(sums.dot, 0, p.n) : null,
      plain: sums.plain ? window(sums.plain, 0, p.n) : null,
    }
    : null;
  if (sumWindows?.x) multiples.push(sumWindows.x.offset);
  // scaleM is read one row at a time and needs no alignment.
  for (const w of [out.scaleK, out.scaleN, out.addend]) if (w) multiples.push(w.offset);
  const vec = multiples.every((x) => x % 4 === 0);

  const tileM = Math.min(cfg.tileM, Math.max(vec && p.transA ? 4 : 1, nextPow2(blk.mb)));
  // A narrow C (BPT's and LoRA's rank-r products) gets narrower tiles, so that the
  // workgroup's invocations all have columns: on llvmpipe a 512×32 product ran
  // 2–3× faster with 16×4 tiles than with 16×16, where 6 of 8 SIMD lanes idled.
  const tileN = Math.min(cfg.tileN, Math.max(4, nextPow2(Math.ceil(blk.nb / cfg.workgroupX))));
  const spec: KernelSpec = {
    workgroupX: cfg.workgroupX,
    workgroupY: cfg.workgroupY,
    tileM,
    tileN,
    transA: p.transA,
    transB: p.transB,
    dtypeA: a.dtype,
    dtypeB: b.dtype,
    vec,
    beta: out.beta !== 0,
    bias: out.bias ? run.bias!.dtype : null,
    splitK: split,
    second: second ? { dtypeA: second.a.dtype, dtypeB: second.b.dtype } : null,
    storeT: run.transposed ?? false,
    scaledCopy: copy ? { scale: copy.scale.dtype, bias: copy.bias?.dtype ?? null } : null,
    scaleK: out.scaleK ? run.scaleK!.dtype : null,
    scaleM: out.scaleM ? run.scaleM!.dtype : null,
    scaleN: out.scaleN ? run.scaleN!.dtype : null,
    addend: out.addend ? run.addend!.dtype : null,
    sums: sums ? { x: sums.x?.dtype ?? null, dot: !!sums.dot, plain: !!sums.plain } : null,
  };
  const buffers: GPUBufferBinding[] = [wa.binding, wb.binding, out.window.binding];
  if (out.bias) buffers.push(out.bias.binding);
  if (second) buffers.push(second.wa.binding, second.wb.binding);
  if (copy) buffers.push(copy.ws.binding, copy.wy.binding);
  if (copy?.wbias) buffers.push(copy.wbias.binding);
  for (const w of [out.scaleK, out.scaleM, out.scaleN, out.addend]) if (w) buffers.push(w.binding);
  for (const w of [sumWindows?.x, sumWindows?.dot, sumWindows?.plain]) {
    if (w) buffers.push(w.binding);
  }
  if (sums) run.sumsDone!.done = true;
  gpu().dispatch({
    label: `gemm${run.tag}(${
      blk.z > 1 && !split ? `${blk.z}x ` : ""
    }${run.label}, block ${blk.mb}x${blk.kb} @ ${blk.kb}x${blk.nb}${
      split ? `, split-K ${blk.z}x${out.kSplit}` : ""
    }${run.transposed ? ", as Cᵀ" : ""})`,
    code: kernel(spec),
    buffers,
    uniforms: uniforms(
      blk.mb,
      blk.nb,
      blk.kb,
      p.lda,
      p.ldb,
      out.ldc,
      wa.offset,
      wb.offset,
      out.window.offset,
      strideA,
      strideB,
      out.strideC,
      out.bias ? out.bias.offset : 0,
      { f: out.alpha },
      { f: out.beta },
      out.kSplit,
      second?.k ?? 0,
      second?.lda ?? 0,
      second?.ldb ?? 0,
      second?.wa.offset ?? 0,
      second?.wb.offset ?? 0,
      copy?.ws.offset ?? 0,
      copy?.wy.offset ?? 0,
      copy?.wbias?.offset ?? 0,
      out.scaleK?.offset ?? 0,
      out.scaleN?.offset ?? 0,
      out.addend?.offset ?? 0,
      out.scaleM?.offset ?? 0,
      sumWindows?.x?.offset ?? 0,
      sumWindows?.dot?.offset ?? 0,
      sumWindows?.plain?.offset ?? 0,
    ),
    workgroups: [
      Math.ceil(blk.nb / (tileN * cfg.workgroupX)),
      Math.ceil(blk.mb / (tileM * cfg.workgroupY)),
      blk.z,
    ],
  });
}

// C = alpha · Σ_z partial[z] + bias + beta · C over one block, summing the
// slices in order z = 0, 1, ...
function dispatchSplitKSum(
  run: Run,
  p: Problem,
  blk: Block,
  partial: Tensor,
  wc: Window,
  wbias: Window | null,
  waddend: Window | null,
) {
  const slices = partial.shape[0];
  const biasDtype = wbias ? run.bias!.dtype : null;
  const addendDtype = waddend ? run.addend!.dtype : null;
  const key = `splitK:${blk.beta !== 0}:${biasDtype}:${addendDtype}`;
  let code = kernels.get(key);
  if (!code) {
    code = splitKSumKernel(blk.beta !== 0, biasDtype, addendDtype);
    kernels.set(key, code);
  }
  const buffers: GPUBufferBinding[] = [window(partial, 0, partial.numel).binding, wc.binding];
  if (wbias) buffers.push(wbias.binding);
  if (waddend) buffers.push(waddend.binding);
  gpu().dispatch({
    label: `gemm_splitk_sum${run.tag}(${run.label}, ${slices}x${blk.mb}x${blk.nb})`,
    code,
    buffers,
    uniforms: uniforms(
      blk.mb,
      blk.nb,
      slices,
      p.ldc,
      wc.offset,
      wbias ? wbias.offset : 0,
      { f: run.alpha },
      { f: blk.beta },
      waddend ? waddend.offset : 0,
    ),
    workgroups: grid1d(blk.mb * blk.nb),
  });
}

function splitKSumKernel(beta: boolean, biasDtype: DType | null, addendDtype: DType | null) {
  const old = beta ? " + p.beta * C[ci]" : "";
  const bias = biasDtype ? " + ld_Bias(p.offBias + col)" : "";
  const addend = addendDtype ? " + ld_D(ci - p.offC + p.offD)" : "";
  const addendBinding = biasDtype ? 4 : 3;
  return `
struct P {
  m: u32, n: u32, slices: u32, ldc: u32, offC: u32, offBias: u32, alpha: f32, beta: f32,
  offD: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
${biasDtype ? storage(3, "Bias", biasDtype) : ""}
${addendDtype ? storage(addendBinding, "D", addendDtype) : ""}
${main1d()} {
  let i = ${flatIndex()};
  let plane = p.m * p.n;
  if (i >= plane) { return; }
  var sum = 0.0;
  for (var z = 0u; z < p.slices; z++) { sum += Partial[z * plane + i]; }
  let col = i % p.n;
  let ci = p.offC + (i / p.n) * p.ldc + col;
  C[ci] = p.alpha * sum${bias}${addend}${old};
}`;
}

function nextPow2(x: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, x)));
}

interface KernelSpec extends GemmConfig {
  transA: boolean;
  transB: boolean;
  dtypeA: DType;
  dtypeB: DType;
  /** vec4 loads four k (or four m/n) at a time; otherwise scalar loads, one k per step. */
  vec: boolean;
  /** Reads C (beta ≠ 0). */
  beta: boolean;
  bias: DType | null;
  /** Workgroup z is a split-K slice instead of a batch index. */
  splitK: boolean;
  /** dtypes of a second product added into the same accumulators (`gemmSum`). */
  second: { dtypeA: DType; dtypeB: DType } | null;
  /**
   * The kernel's (row, col) is C's (col, row): scalar stores with C's ldc, and
   * bias, addend and scaled copy by C's layout.
   */
  storeT: boolean;
  /** dtypes of the scale and bias of a `gemmSum` scaled copy Y = C ⊙ scale + bias. */
  scaledCopy: { scale: DType; bias: DType | null } | null;
  /** dtypes of GemmOptions.scaleK (first product) and the addend, and of the kernel's row and column scales. */
  scaleK: DType | null;
  scaleM: DType | null;
  scaleN: DType | null;
  addend: DType | null;
  /** Column sums of B over K in the k loop (GemmOptions.sums): x's dtype and which outputs. */
  sums: { x: DType | null; dot: boolean; plain: boolean } | null;
}

const kernels = new Map<string, string>();

function kernel(spec: KernelSpec): string {
  const key = JSON.stringify(spec);
  let code = kernels.get(key);
  if (!code) {
    code = spec.vec ? vecKernel(spec) : scalarKernel(spec);
    kernels.set(key, code);
  }
  return code;
}

// Uniform struct shared by both kernels; offsets, strides and leading
// dimensions are in elements. kSplit is the K per split-K slice, 0 unless the
// kernel is a split-K one. The fields ending in 2 describe the second product
// of a `gemmSum` kernel, and offS, offY and offBias2 its scaled copy. offSK,
// offSN, offD and offSM locate scaleK, scaleN, the addend and scaleM, and
// offX, offSD and offSP the sums' x and outputs.
const PARAMS = `
struct P {
  m: u32, n: u32, k: u32,
  lda: u32, ldb: u32, ldc: u32,
  offA: u32, offB: u32, offC: u32,
  strideA: u32, strideB: u32, strideC: u32,
  offBias: u32, alpha: f32, beta: f32,
  kSplit: u32,
  k2: u32, lda2: u32, ldb2: u32, offA2: u32, offB2: u32,
  offS: u32, offY: u32, offBias2: u32,
  offSK: u32, offSN: u32, offD: u32, offSM: u32,
  offX: u32, offSD: u32, offSP: u32,
}
@group(0) @binding(0) var<uniform> p: P;`;

function header(s: KernelSpec): string {
  return `@compute @workgroup_size(${s.workgroupX}, ${s.workgroupY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let row0 = (wid.y * ${s.workgroupY}u + lid.y) * ${s.tileM}u;
  let col0 = (wid.x * ${s.workgroupX}u + lid.x) * ${s.tileN}u;
  let a0 = p.offA + wid.z * p.strideA;
  let b0 = p.offB + wid.z * p.strideB;
  let c0 = p.offC + wid.z * p.strideC;
  let kBegin = ${s.splitK ? "wid.z * p.kSplit" : "0u"};
  let kEnd = ${s.splitK ? "min(p.k, kBegin + p.kSplit)" : "p.k"};`;
}

function lines(n: number, f: (i: number) => string): string {
  return Array.from({ length: n }, (_, i) => f(i)).join("\n");
}

// Accumulators acc<i>_<jv>: row i, columns 4jv..4jv+3 of the tile.
function accumulators(s: KernelSpec): string {
  const nv = s.tileN / 4;
  return lines(s.tileM * nv, (t) => `  var acc${Math.floor(t / nv)}_${t % nv} = vec4<f32>(0.0);`);
}

// Kernel for vec4-aligned problems. Per step of four k it loads tileM + tileN
// vec4s and does tileM · tileN vec4 FMAs.
function vecKernel(s: KernelSpec): string {
  const tm = s.tileM;
  const nv = s.tileN / 4;
  const out: string[] = [PARAMS, vecStorage(1, "A", s.dtypeA), vecStorage(2, "B", s.dtypeB)];
  out.push(
    `@group(0) @binding(3) var<storage, read_write> C: array<${s.storeT ? "f32" : "vec4<f32>"}>;`,
  );
  if (s.bias) out.push(storage(4, "Bias", s.bias));
  const extra = extraBindings(s);
  if (s.second) {
    out.push(
      vecStorage(extra.a, "A2", s.second.dtypeA),
      vecStorage(extra.b, "B2", s.second.dtypeB),
    );
  }
  if (s.scaledCopy) {
    // Transposed stores write one element at a time.
    const load = s.storeT ? storage : vecStorage;
    out.push(load(extra.scale, "S", s.scaledCopy.scale));
    out.push(
      `@group(0) @binding(${extra.y}) var<storage, read_write> Y: array<${
        s.storeT ? "f32" : "vec4<f32>"
      }>;`,
    );
    if (s.scaledCopy.bias) out.push(load(extra.bias2, "Bias2", s.scaledCopy.bias));
  }
  out.push(...extraDecls(s, vecStorage, s.storeT ? storage : vecStorage));
  out.push(header(s));
  out.push(accumulators(s));
  out.push(...sumsDecls(s, 4));
  out.push(...vecLoop(s, FIRST));
  if (s.second) out.push(...vecLoop(s, SECOND));
  out.push(...sumsStores(s, 4));
  if (s.storeT) return [...out, ...transposedStores(s), `}`].join("\n");

  // Row scales past the last row are read (bounded by WebGPU) but never stored.
  if (s.scaleM) out.push(lines(tm, (i) => `  let sm${i} = ld_SM(p.offSM + row0 + ${i}u);`));
  for (let jv = 0; jv < nv; jv++) {
    const col = `col0 + ${4 * jv}u`;
    const bias = s.bias
      ? ` + vec4<f32>(${[0, 1, 2, 3].map((c) => `ld_Bias(p.offBias + ${col} + ${c}u)`).join(", ")})`
      : "";
    out.push(`  if (${col} < p.n) {`);
    if (s.scaledCopy) {
      const bias2 = s.scaledCopy.bias ? ` + lv_Bias2(p.offBias2 + ${col})` : "";
      out.push(`    let ys${jv} = lv_S(p.offS + ${col});`);
      out.push(`    let yb${jv} = vec4<f32>(0.0)${bias2};`);
    }
    if (s.scaleN) out.push(`    let sn${jv} = lv_SN(p.offSN + ${col});`);
    for (let i = 0; i < tm; i++) {
      const at = `(row0 + ${i}u) * p.ldc + ${col}`;
      const idx = `(c0 + ${at}) >> 2u`;
      const old = s.beta ? ` + p.beta * C[${idx}]` : "";
      const addend = s.addend ? ` + lv_D(p.offD + wid.z * p.strideC + ${at})` : "";
      const sm = s.scaleM ? ` * sm${i}` : "";
      const sn = s.scaleN ? ` * sn${jv}` : "";
      const value = `p.alpha * acc${i}_${jv}${sm}${sn}${bias}${addend}${old}`;
      if (!s.scaledCopy) {
        out.push(`    if (row0 + ${i}u < p.m) { C[${idx}] = ${value}; }`);
        continue;
      }
      const yIdx = `(p.offY + (row0 + ${i}u) * p.ldc + ${col}) >> 2u`;
      out.push(`    if (row0 + ${i}u < p.m) {`);
      out.push(`      let v = ${value};`);
      out.push(`      C[${idx}] = v;`);
      out.push(`      Y[${yIdx}] = v * ys${jv} + yb${jv};`);
      out.push(`    }`);
    }
    out.push(`  }`);
  }
  out.push(`}`);
  return out.join("\n");
}

// Stores of a kernel computing Cᵀ: its element (row, col) is C's (col, row).
// The bias, the scaled copy's scale and bias, and the kernel's row scale
// belong to C's columns, the kernel's rows. The addend and the scaled copy
// are laid out as C. Transposed kernels are never batched (z = 0).
function transposedStores(s: KernelSpec): string[] {
  const out: string[] = [];
  // Column scales past the last column are read (bounded by WebGPU) but never stored.
  if (s.scaleN) out.push(lines(s.tileN, (j) => `  let sn${j} = ld_SN(p.offSN + col0 + ${j}u);`));
  for (let i = 0; i < s.tileM; i++) {
    const row = `row0 + ${i}u`;
    const bias = s.bias ? ` + ld_Bias(p.offBias + ${row})` : "";
    const sm = s.scaleM ? ` * ld_SM(p.offSM + ${row})` : "";
    out.push(`  if (${row} < p.m) {`);
    if (s.scaledCopy) {
      const bias2 = s.scaledCopy.bias ? ` + ld_Bias2(p.offBias2 + ${row})` : "";
      out.push(`    let ys = ld_S(p.offS + ${row});`, `    let yb = 0.0${bias2};`);
    }
    for (let j = 0; j < s.tileN; j++) {
      const col = `col0 + ${j}u`;
      const at = `(${col}) * p.ldc + ${row}`;
      const idx = `c0 + ${at}`;
      const old = s.beta ? ` + p.beta * C[${idx}]` : "";
      const sn = s.scaleN ? ` * sn${j}` : "";
      const addend = s.addend ? ` + ld_D(p.offD + ${at})` : "";
      const value = `p.alpha * acc${i}_${j >> 2}[${j & 3}]${sm}${sn}${bias}${addend}${old}`;
      if (!s.scaledCopy) {
        out.push(`    if (${col} < p.n) { C[${idx}] = ${value}; }`);
        continue;
      }
      out.push(`    if (${col} < p.n) {`);
      out.push(`      let v = ${value};`);
      out.push(`      C[${idx}] = v;`);
      out.push(`      Y[p.offY + ${at}] = v * ys + yb;`);
      out.push(`    }`);
    }
    out.push(`  }`);
  }
  return out;
}

// Names of one product's operands inside a kernel: the first product, or the
// second one of a `gemmSum` kernel, which starts at k = 0 of its own K.
interface Operands {
  a: string;
  b: string;
  lda: string;
  ldb: string;
  a0: string;
  b0: string;
  kBegin: string;
  kEnd: string;
}
const FIRST: Operands = {
  a: "A",
  b: "B",
  lda: "p.lda",
  ldb: "p.ldb",
  a0: "a0",
  b0: "b0",
  kBegin: "kBegin",
  kEnd: "kEnd",
};
const SECOND: Operands = {
  a: "A2",
  b: "B2",
  lda: "p.lda2",
  ldb: "p.ldb2",
  a0: "p.offA2",
  b0: "p.offB2",
  kBegin: "0u",
  kEnd: "p.k2",
};

// Binding numbers after C and the bias: the second product's A and B, the
// scaled copy's scale, output and bias, scaleK, scaleM, scaleN and the
// addend, then the sums' x and outputs.
function extraBindings(s: KernelSpec) {
  let next = s.bias ? 5 : 4;
  const take = () => next++;
  const a = s.second ? take() : 0;
  const b = s.second ? take() : 0;
  const scale = s.scaledCopy ? take() : 0;
  const y = s.scaledCopy ? take() : 0;
  const bias2 = s.scaledCopy?.bias ? take() : 0;
  const sk = s.scaleK ? take() : 0;
  const sm = s.scaleM ? take() : 0;
  const sn = s.scaleN ? take() : 0;
  const d = s.addend ? take() : 0;
  const x = s.sums?.x ? take() : 0;
  const sd = s.sums?.dot ? take() : 0;
  const sp = s.sums?.plain ? take() : 0;
  return { a, b, scale, y, bias2, sk, sm, sn, d, x, sd, sp };
}

// Declarations of scaleK and the sums' x (read by the k loop's loader), scaleN
// and the addend (read by the stores' loader), scaleM, read one row at a
// time, and the sums' outputs.
type Loader = typeof storage | typeof vecStorage;
function extraDecls(s: KernelSpec, loopLoad: Loader, storeLoad: Loader): string[] {
  const extra = extraBindings(s);
  const out: string[] = [];
  if (s.scaleK) out.push(loopLoad(extra.sk, "SK", s.scaleK));
  if (s.scaleM) out.push(storage(extra.sm, "SM", s.scaleM));
  if (s.scaleN) out.push(storeLoad(extra.sn, "SN", s.scaleN));
  if (s.addend) out.push(storeLoad(extra.d, "D", s.addend));
  if (s.sums?.x) out.push(loopLoad(extra.x, "X", s.sums.x));
  const sumOut = (binding: number, name: string) =>
    `@group(0) @binding(${binding}) var<storage, read_write> ${name}: array<f32>;`;
  if (s.sums?.dot) out.push(sumOut(extra.sd, "SD"));
  if (s.sums?.plain) out.push(sumOut(extra.sp, "SP"));
  return out;
}

// Accumulators of GemmOptions.sums, taken only by invocations of the first
// row tile so that each column is summed once: ds<j> and ps<j> (vec4 per four
// columns in the vec4 kernel, one per column in the scalar one).
function sumsDecls(s: KernelSpec, width: number): string[] {
  if (!s.sums) return [];
  const count = width === 4 ? s.tileN / 4 : s.tileN;
  const zero = width === 4 ? "vec4<f32>(0.0)" : "0.0";
  return [
    `  let doSums = row0 == 0u;`,
    lines(count, (j) => `  var ds${j} = ${zero};\n  var ps${j} = ${zero};`),
  ];
}

// One k step of the sums: the values of B just loaded (bv<u>_<j> in the vec4
// kernel, four k at a time, or b<j> in the scalar one) times x's, added up.
function sumsStep(s: KernelSpec, width: number): string[] {
  const out = [`    if (doSums) {`];
  const add = (acc: string, b: string, x: string) => {
    if (s.sums!.x) out.push(`      ds${acc} = fma(${b}, ${x}, ds${acc});`);
    if (s.sums!.plain) out.push(`      ps${acc} = ps${acc} + ${b};`);
  };
  if (width === 4) {
    for (let u = 0; u < 4; u++) {
      for (let j = 0; j < s.tileN / 4; j++) {
        const x = `lv_X(p.offX + col0 + (k + ${u}u) * p.ldb + ${4 * j}u)`;
        add(`${j}`, `bv${u}_${j}`, s.sums!.x ? x : "");
      }
    }
  } else {
    for (let j = 0; j < s.tileN; j++) add(`${j}`, `b${j}`, `ld_X(cx${j} + k * p.ldb)`);
  }
  out.push(`    }`);
  return out;
}

// Adds the sums of each column into SD and SP.
function sumsStores(s: KernelSpec, width: number): string[] {
  if (!s.sums) return [];
  const out = [`  if (doSums) {`];
  for (let j = 0; j < s.tileN; j++) {
    const v = width === 4 ? `[${j & 3}]` : "";
    const k = width === 4 ? j >> 2 : j;
    const col = `col0 + ${j}u`;
    const adds: string[] = [];
    if (s.sums.dot) adds.push(`SD[p.offSD + ${col}] = SD[p.offSD + ${col}] + ds${k}${v};`);
    if (s.sums.plain) adds.push(`SP[p.offSP + ${col}] = SP[p.offSP + ${col}] + ps${k}${v};`);
    out.push(`    if (${col} < p.n) { ${adds.join(" ")} }`);
  }
  out.push(`  }`);
  return out;
}

// The k loop of the vec4 kernel for one product, in its own block. Per step of
// four k it loads tileM + tileN vec4s and does tileM · tileN vec4 FMAs.
function vecLoop(s: KernelSpec, o: Operands): string[] {
  const tm = s.tileM;
  const nv = s.tileN / 4;
  const out: string[] = [`  {`];
  // Rows and columns past the edge are not clamped: WebGPU bounds every
  // storage access, and their accumulators are never stored.
  out.push(`  let ra = ${o.a0} + ${s.transA ? "row0" : `row0 * ${o.lda}`};`);
  out.push(`  let rb = ${o.b0} + ${s.transB ? `col0 * ${o.ldb}` : "col0"};`);
  out.push(`  for (var k = ${o.kBegin}; k < ${o.kEnd}; k += 4u) {`);
  const scaled = s.scaleK && o === FIRST;
  if (scaled) out.push(`    let sk = lv_SK(p.offSK + k);`);
  const sk = (u: number) => (scaled ? ` * sk[${u}]` : "");

  // B first, then A one row (or one vec4 of rows) at a time, each consumed by
  // its FMAs right away. Every load is a per-lane loop on llvmpipe that LLVM
  // cannot schedule across, so this order keeps fewer values live.
  // bv<u>_<jv> is the vec4 of op(B) at (k + u, 4jv).
  if (!s.transB) {
    out.push(lines(4 * nv, (t) => {
      const u = Math.floor(t / nv);
      const j = t % nv;
      return `    let bv${u}_${j} = lv_${o.b}(rb + (k + ${u}u) * ${o.ldb} + ${4 * j}u)${sk(u)};`;
    }));
    if (s.sums && o === FIRST) out.push(...sumsStep(s, 4));
  } else {
    out.push(lines(s.tileN, (j) => `    let b${j} = lv_${o.b}(rb + k + ${j}u * ${o.ldb});`));
    out.push(lines(4 * nv, (t) => {
      const u = Math.floor(t / nv);
      const jv = t % nv;
      const parts = [0, 1, 2, 3].map((c) => `b${4 * jv + c}[${u}]`).join(", ");
      return `    let bv${u}_${jv} = vec4<f32>(${parts})${sk(u)};`;
    }));
  }
  const fmas = (i: number, a: (u: number) => string) =>
    lines(4 * nv, (t) => {
      const u = Math.floor(t / nv);
      const jv = t % nv;
      return `    acc${i}_${jv} = fma(vec4<f32>(${a(u)}), bv${u}_${jv}, acc${i}_${jv});`;
    });
  if (!s.transA) {
    // a<i> contains op(A)(i, k..k+3).
    for (let i = 0; i < tm; i++) {
      out.push(`    let a${i} = lv_${o.a}(ra + k + ${i}u * ${o.lda});`);
      out.push(fmas(i, (u) => `a${i}[${u}]`));
    }
  } else {
    // a<u>_<iv> contains op(A)(4iv..4iv+3, k + u).
    for (let iv = 0; iv < tm / 4; iv++) {
      out.push(
        lines(
          4,
          (u) => `    let a${u}_${iv} = lv_${o.a}(ra + (k + ${u}u) * ${o.lda} + ${4 * iv}u);`,
        ),
      );
      for (let r = 0; r < 4; r++) out.push(fmas(4 * iv + r, (u) => `a${u}_${iv}[${r}]`));
    }
  }
  out.push(`  }`, `  }`);
  return out;
}

// Kernel for any shape and offset: scalar loads, one k per step, and a bounds
// check per stored element.
function scalarKernel(s: KernelSpec): string {
  const tm = s.tileM;
  const tn = s.tileN;
  const out: string[] = [PARAMS, storage(1, "A", s.dtypeA), storage(2, "B", s.dtypeB)];
  out.push(`@group(0) @binding(3) var<storage, read_write> C: array<f32>;`);
  if (s.bias) out.push(storage(4, "Bias", s.bias));
  const extra = extraBindings(s);
  if (s.second) {
    out.push(storage(extra.a, "A2", s.second.dtypeA), storage(extra.b, "B2", s.second.dtypeB));
  }
  if (s.scaledCopy) {
    out.push(storage(extra.scale, "S", s.scaledCopy.scale));
    out.push(`@group(0) @binding(${extra.y}) var<storage, read_write> Y: array<f32>;`);
    if (s.scaledCopy.bias) out.push(storage(extra.bias2, "Bias2", s.scaledCopy.bias));
  }
  out.push(...extraDecls(s, storage, storage));
  out.push(header(s));
  out.push(accumulators(s));
  out.push(...sumsDecls(s, 1));
  if (s.sums) {
    out.push(lines(tn, (j) => `  let cx${j} = p.offX + min(col0 + ${j}u, p.n - 1u);`));
  }
  out.push(...scalarLoop(s, FIRST));
  if (s.second) out.push(...scalarLoop(s, SECOND));
  out.push(...sumsStores(s, 1));
  if (s.storeT) return [...out, ...transposedStores(s), `}`].join("\n");

  for (let i = 0; i < tm; i++) {
    out.push(`  if (row0 + ${i}u < p.m) {`);
    if (s.scaleM) out.push(`    let sm = ld_SM(p.offSM + row0 + ${i}u);`);
    for (let j = 0; j < tn; j++) {
      const col = `col0 + ${j}u`;
      const at = `(row0 + ${i}u) * p.ldc + ${col}`;
      const idx = `c0 + ${at}`;
      const bias = s.bias ? ` + ld_Bias(p.offBias + ${col})` : "";
      const old = s.beta ? ` + p.beta * C[${idx}]` : "";
      const addend = s.addend ? ` + ld_D(p.offD + wid.z * p.strideC + ${at})` : "";
      const sm = s.scaleM ? " * sm" : "";
      const sn = s.scaleN ? ` * ld_SN(p.offSN + ${col})` : "";
      const value = `p.alpha * acc${i}_${j >> 2}[${j & 3}]${sm}${sn}${bias}${addend}${old}`;
      if (!s.scaledCopy) {
        out.push(`    if (${col} < p.n) { C[${idx}] = ${value}; }`);
        continue;
      }
      const bias2 = s.scaledCopy.bias ? ` + ld_Bias2(p.offBias2 + ${col})` : "";
      const yIdx = `p.offY + (row0 + ${i}u) * p.ldc + ${col}`;
      out.push(`    if (${col} < p.n) {`);
      out.push(`      let v = ${value};`);
      out.push(`      C[${idx}] = v;`);
      out.push(`      Y[${yIdx}] = v * ld_S(p.offS + ${col})${bias2};`);
      out.push(`    }`);
    }
    out.push(`  }`);
  }
  out.push(`}`);
  return out.join("\n");
}

// The k loop of the scalar kernel for one product, in its own block.
function scalarLoop(s: KernelSpec, o: Operands): string[] {
  const tm = s.tileM;
  const tn = s.tileN;
  const nv = tn / 4;
  const out: string[] = [`  {`];
  if (!s.transA) {
    out.push(lines(tm, (i) => `  let ra${i} = ${o.a0} + min(row0 + ${i}u, p.m - 1u) * ${o.lda};`));
  } else out.push(lines(tm, (i) => `  let ca${i} = ${o.a0} + min(row0 + ${i}u, p.m - 1u);`));
  if (s.transB) {
    out.push(lines(tn, (j) => `  let rb${j} = ${o.b0} + min(col0 + ${j}u, p.n - 1u) * ${o.ldb};`));
  } else out.push(lines(tn, (j) => `  let cb${j} = ${o.b0} + min(col0 + ${j}u, p.n - 1u);`));
  out.push(`  for (var k = ${o.kBegin}; k < ${o.kEnd}; k++) {`);
  out.push(
    lines(
      tm,
      (i) =>
        s.transA
          ? `    let a${i} = ld_${o.a}(ca${i} + k * ${o.lda});`
          : `    let a${i} = ld_${o.a}(ra${i} + k);`,
    ),
  );
  const scaled = s.scaleK && o === FIRST;
  if (scaled) out.push(`    let sk = ld_SK(p.offSK + k);`);
  const sk = scaled ? " * sk" : "";
  out.push(
    lines(
      tn,
      (j) =>
        s.transB
          ? `    let b${j} = ld_${o.b}(rb${j} + k)${sk};`
          : `    let b${j} = ld_${o.b}(cb${j} + k * ${o.ldb})${sk};`,
    ),
  );
  if (s.sums && o === FIRST && !s.transB) out.push(...sumsStep(s, 1));
  for (let jv = 0; jv < nv; jv++) {
    out.push(
      `    let bv${jv} = vec4<f32>(b${4 * jv}, b${4 * jv + 1}, b${4 * jv + 2}, b${4 * jv + 3});`,
    );
  }
  out.push(lines(tm * nv, (t) => {
    const i = Math.floor(t / nv);
    const jv = t % nv;
    return `    acc${i}_${jv} = fma(vec4<f32>(a${i}), bv${jv}, acc${i}_${jv});`;
  }));
  out.push(`  }`, `  }`);
  return out;
}

/** Options of `matmul`. */
export interface MatmulOptions {
  /** A is stored [.., K, M]. */
  transA?: boolean;
  /** B is stored [N, K]. */
  transB?: boolean;
}

/**
 * Returns op(A) · op(B) as f32: A [.., M, K] ([.., K, M] with transA), B
 * [K, N] ([N, K] with transB), either 2-D or with the other's batch
 * dimensions. Gradient kernels run only for inputs that require a gradient.
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const { m, n, batchShape } = checkShapes("matmul", a, b, transA, transB);
  const out = empty([...batchShape, m, n]);
  gemm(out, a, b, { transA, transB, tag: "matmul" });
  record("matmul", out, [a, b], (dy) => matmulGrads(a, b, transA, transB, dy));
  return out;
}

// dA and dB of C = op(A) · op(B), each null when its input is frozen. A 2-D
// operand of a batched product gets the gradient summed over the batch. dA is
// allocated with `aShape` (the caller's view of A may be reshaped).
function matmulGrads(
  a: Tensor,
  b: Tensor,
  transA: boolean,
  transB: boolean,
  dy: Tensor,
  aShape: readonly number[] = a.shape,
  tags: [string, string] = ["matmul.dA", "matmul.dB"],
) {
  let da: Tensor | null = null;
  let db: Tensor | null = null;
  // A leaf's gradient is accumulated in place (beta = 1) and reported as null.
  if (a.requiresGrad) {
    const leaf = leafGrad(a);
    if (!leaf) da = empty(aShape);
    const target = leaf ?? da!.reshape([...a.shape]);
    const beta = leaf ? 1 : 0;
    // dA = dC · op(B)ᵀ, stored transposed when A is: dAᵀ = op(B) · dCᵀ.
    const t = tags[0];
    if (transA) gemm(target, b, dy, { transA: transB, transB: true, beta, tag: t });
    else gemm(target, dy, b, { transB: !transB, beta, tag: t });
  }
  if (b.requiresGrad) {
    const leaf = leafGrad(b);
    if (!leaf) db = empty(b.shape);
    const target = leaf ?? db!;
    const beta = leaf ? 1 : 0;
    // dB = op(A)ᵀ · dC, stored transposed when B is: dBᵀ = dCᵀ · op(A).
    const t = tags[1];
    if (transB) gemm(target, dy, a, { transA: true, transB: transA, beta, tag: t });
    else gemm(target, a, dy, { transA: !transA, beta, tag: t });
  }
  return [da, db];
}

/**
 * Returns x Wᵀ + bias for x [.., in], W [out, in] (PyTorch layout) and bias
 * [out], with the bias added in the GEMM's output step.
 */
export function linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
  if (x.shape.length < 1 || w.shape.length !== 2) {
    throw new ShapeError(
      `linear: expected x [.., in] and a 2-D weight [out, in], got ${x.shapeString} and ${w.shapeString}`,
    );
  }
  const inFeatures = x.shape[x.shape.length - 1];
  if (w.shape[1] !== inFeatures) {
    throw new ShapeError(
      `linear: inner dimensions differ: ${x.shapeString} @ ${w.shapeString}ᵀ (weight is [out, in])`,
    );
  }
  const outFeatures = w.shape[0];
  const rows = x.numel / Math.max(1, inFeatures);
  const x2 = x.reshape([rows, inFeatures]);
  const out = empty([...x.shape.slice(0, -1), outFeatures]);
  gemm(out.reshape([rows, outFeatures]), x2, w, { transB: true, bias, tag: "linear" });

  const inputs = bias ? [x, w, bias] : [x, w];
  record("linear", out, inputs, (dy) => {
    const [dx, dw] = matmulGrads(
      x2,
      w,
      false,
      true,
      dy.reshape([rows, outFeatures]),
      x.shape,
      ["linear.dx", "linear.dW"],
    );
    const leaf = bias ? leafGrad(bias) : null;
    if (leaf) sumRows(dy, outFeatures, leaf);
    const dbias = bias?.requiresGrad && !leaf ? sumRows(dy, outFeatures) : null;
    return [dx, dw, dbias];
  });
  return out;
}
