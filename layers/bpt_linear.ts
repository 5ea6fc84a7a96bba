// Fused BPT linear: y = a ⊙ (W (b ⊙ x) + U (V (b ⊙ x))) (+ bias) as one
// autograd node with a hand-written backward.
//
// b ⊙ x is never stored: the GEMMs scale their inner dimension by b as they
// load (scaleK), and dV = dtᵀ (b ⊙ x) scales its columns (scaleN). With
// xb = b ⊙ x [N, m] and t = xb Vᵀ [N, r], z = xb Wᵀ + t Uᵀ [N, n] is either
// one gemmSum, or, for enough rows, xb W_effᵀ with W_eff = W + U V [n, m]
// merged for this forward pass (see mergeWeights). One kernel writes z, which
// backward needs, and y = a ⊙ z + bias.
//
// Backward, with dz = dy ⊙ a:
//   da = Σ_rows dy ⊙ z     dbias = Σ_rows dy
//   dU = dzᵀ t             dt = dz U
//   dV = dtᵀ xb            dxb = dz W + dt V = dz W_eff
//   db = Σ_rows dxb ⊙ x    dx = dxb ⊙ b
// Neither dz nor a separate pass for dx exists: the GEMMs reading dz scale
// their rows or K by a, and the dxb GEMM also writes dx. The dU and dV GEMMs
// sum da, dbias and db in their k loops where they can, and one columnSums
// kernel does it otherwise. Gradients of inputs that do not require one are
// skipped with their GEMMs.

import { leafGrad, record } from "../core/autograd.ts";
import { gemm, type GemmOptions, gemmSum } from "../core/ops/matmul.ts";
import { type ColumnSum, columnSums } from "../core/ops/scale_columns.ts";
import { empty, ShapeError, type Tensor, zeros } from "../core/tensor.ts";

/**
 * Returns whether a BPT linear over `rows` input rows merges W_eff = W + U V
 * for its forward pass. The merge costs n·m·r multiply-adds and keeps an f32 [n, m]
 * until backward. It saves the rank-r halves of z and dxb, rows·r·(n + m).
 * With rows·(n + m) ≥ 2·n·m it saves at least twice what it costs, and the
 * kept W_eff is at most half the size of z and x, which the op keeps anyway.
 * qwen2.5-tiny at 512 tokens merges, and qwen2.5-0.5b at 64 does not.
 */
export function mergeWeights(rows: number, n: number, m: number): boolean {
  return rows * (n + m) >= 2 * n * m;
}

/**
 * Computes the BPT linear for x [.., m], W [n, m], U [n, r], V [r, m],
 * a [n], b [m] and an optional bias [n], and returns y [.., n] as f32.
 */
export function bptLinear(
  x: Tensor,
  w: Tensor,
  u: Tensor,
  v: Tensor,
  a: Tensor,
  b: Tensor,
  bias?: Tensor,
): Tensor {
  const { rows, n, m, r } = checkShapes(x, w, u, v, a, b, bias);
  const x2 = x.reshape([rows, m]);

  let weff: Tensor | null = null;
  if (mergeWeights(rows, n, m)) {
    weff = empty([n, m]);
    gemm(weff, u, v, { addend: w, tag: "bpt.merge" });
  }
  const t = empty([rows, r]);
  gemm(t, x2, v, { transB: true, scaleK: b, tag: "bpt.t" });
  const z = empty([rows, n]);
  const y = empty([...x.shape.slice(0, -1), n]);
  const opts: GemmOptions = {
    transB: true,
    scaleK: b,
    scaledCopy: { out: y, scale: a, bias },
    tag: "bpt.z",
  };
  if (weff) gemm(z, x2, weff, opts);
  else gemmSum(z, x2, w, t, u, opts);

  const inputs = bias ? [x, w, u, v, a, b, bias] : [x, w, u, v, a, b];
  record("bptLinear", y, inputs, (dy) => {
    const dy2 = dy.reshape([rows, n]);
    const grads = bptLinearBackward({ x: x2, w, u, v, a, b, bias, weff, t, z }, dy2);
    if (grads[0]) grads[0] = grads[0].reshape([...x.shape]);
    weff?.dispose();
    return grads;
  });
  return y;
}

interface Saved {
  /** The input as [N, m]. */
  x: Tensor;
  w: Tensor;
  u: Tensor;
  v: Tensor;
  a: Tensor;
  b: Tensor;
  bias?: Tensor;
  /** W + U V, when merged. */
  weff: Tensor | null;
  /** xb Vᵀ, [N, r]. */
  t: Tensor;
  /** xb Wᵀ + t Uᵀ, [N, n]. */
  z: Tensor;
}

// Returns [dx, dW, dU, dV, da, db, dbias], null where the input needs no gradient
// or where its leaf gradient was accumulated in place (see leafGrad); dx is [N, m].
// Runs inside `backward`, which records nothing, so the ops here are plain kernels.
function bptLinearBackward(s: Saved, dy: Tensor): (Tensor | null)[] {
  const { x, w, u, v, a, b, bias, weff, t, z } = s;
  const [rows, m] = x.shape;
  const n = w.shape[0];
  const r = u.shape[1];
  const needDxb = x.requiresGrad || b.requiresGrad;
  const needDt = (needDxb && !weff) || v.requiresGrad;

  // dz = dy ⊙ a is never stored: dW and dU scale their rows by a, and dt and
  // dxb scale their K. dW = dzᵀ xb and dV = dtᵀ xb scale their columns by b.
  const dw = w.requiresGrad
    ? gemmGrad(w, [n, m], dy, x, { transA: true, scaleM: a, scaleN: b, tag: "bpt.dW" }).grad
    : null;
  let dt: Tensor | null = null;
  if (needDt) {
    dt = empty([rows, r]);
    gemm(dt, dy, u, { scaleK: a, tag: "bpt.dt" });
  }

  // dxb = dz W_eff (or dz W + dt V), and dx = dxb ⊙ b from the same kernel.
  // db needs dxb itself; without db the kernel writes dx alone.
  let dx: Tensor | null = null;
  let dxb: Tensor | null = null;
  if (needDxb) {
    if (x.requiresGrad) dx = empty([rows, m]);
    const opts: GemmOptions = { scaleK: a, tag: "bpt.dx" };
    let out: Tensor;
    if (b.requiresGrad) {
      out = dxb = empty([rows, m]);
      if (dx) opts.scaledCopy = { out: dx, scale: b };
    } else {
      out = dx!;
      opts.scaleN = b;
    }
    if (weff) gemm(out, dy, weff, opts);
    else gemmSum(out, dy, w, dt!, v, opts);
  }

  // da = Σ_rows dy ⊙ z and dbias = Σ_rows dy are sums over the dU GEMM's K,
  // which reads dy, and db = Σ_rows dxb ⊙ x over dV's, which reads x. Those
  // GEMMs take them in their k loops where they can (GemmOptions.sums), and
  // columnSums computes the rest in one pass.
  const da = sumTarget(a);
  const dbias = sumTarget(bias);
  const db = dxb ? sumTarget(b) : null;
  let du: Tensor | null = null;
  if (u.requiresGrad) {
    const sums = da || dbias
      ? { of: "A" as const, x: z, dot: da?.out, plain: dbias?.out }
      : undefined;
    const res = gemmGrad(u, [n, r], dy, t, { transA: true, scaleM: a, tag: "bpt.dU", sums });
    du = res.grad;
    if (res.took && da) da.done = true;
    if (res.took && dbias) dbias.done = true;
  }
  let dv: Tensor | null = null;
  if (v.requiresGrad) {
    const sums = db ? { of: "B" as const, x: dxb!, dot: db.out } : undefined;
    const res = gemmGrad(v, [r, m], dt!, x, { transA: true, scaleN: b, tag: "bpt.dV", sums });
    dv = res.grad;
    if (res.took && db) db.done = true;
  }

  const rest: ColumnSum[] = [];
  if (da && !da.done) rest.push({ g: dy, x: z, param: a });
  if (db && !db.done) rest.push({ g: dxb!, x, param: b });
  if (dbias && !dbias.done) rest.push({ g: dy, param: bias! });
  const summed = columnSums(rest);
  dxb?.dispose();
  dt?.dispose();
  const result = (target: SumTarget | null) => {
    if (!target) return null;
    if (target.done) return target.fresh ? target.out : null;
    if (target.fresh) target.out.dispose();
    return summed[rest.findIndex((c) => c.param === target.param)];
  };
  return [dx, dw, du, dv, result(da), result(db), result(dbias)];
}

// The tensor into which a GEMM adds the row sums that are the gradient of a
// vector `param`: its leaf gradient, or a fresh zeroed tensor that becomes the
// gradient.
interface SumTarget {
  param: Tensor;
  out: Tensor;
  fresh: boolean;
  /** A GEMM computed the sum (see GemmOptions.sums). */
  done: boolean;
}

function sumTarget(param: Tensor | undefined): SumTarget | null {
  if (!param?.requiresGrad) return null;
  const leaf = leafGrad(param);
  return { param, out: leaf ?? zeros([param.numel]), fresh: !leaf, done: false };
}

// op(A) · op(B) as the gradient of `param`: added into its leaf gradient when
// it has one (and null returned), else written to a new tensor of `shape`.
// `took` is what gemm returns: whether it computed GemmOptions.sums.
function gemmGrad(
  param: Tensor,
  shape: number[],
  a: Tensor,
  b: Tensor,
  opts: GemmOptions,
): { grad: Tensor | null; took: boolean } {
  const leaf = leafGrad(param);
  if (leaf) return { grad: null, took: gemm(leaf, a, b, { ...opts, beta: 1 }) };
  const out = empty(shape);
  return { grad: out, took: gemm(out, a, b, opts) };
}

function checkShapes(
  x: Tensor,
  w: Tensor,
  u: Tensor,
  v: Tensor,
  a: Tensor,
  b: Tensor,
  bias?: Tensor,
) {
  const describe = () =>
    `x ${x.shapeString}, W ${w.shapeString}, U ${u.shapeString}, V ${v.shapeString}, ` +
    `a ${a.shapeString}, b ${b.shapeString}${bias ? `, bias ${bias.shapeString}` : ""}`;
  if (x.shape.length < 1 || w.shape.length !== 2 || u.shape.length !== 2 || v.shape.length !== 2) {
    throw new ShapeError(
      `bptLinear: expected x [.., m], W [n, m], U [n, r] and V [r, m], got ${describe()}`,
    );
  }
  const [n, m] = w.shape;
  const r = u.shape[1];
  const ok = x.shape[x.shape.length - 1] === m && u.shape[0] === n && v.shape[0] === r &&
    v.shape[1] === m && a.numel === n && b.numel === m && (!bias || bias.numel === n);
  if (!ok) {
    throw new ShapeError(
      `bptLinear: shapes do not match W [n, m] = [${n}, ${m}]: ${describe()}; ` +
        `use x [.., m], U [n, r], V [r, m], a [n], b [m], bias [n]`,
    );
  }
  const rows = x.numel / Math.max(1, m);
  return { rows, n, m, r };
}
