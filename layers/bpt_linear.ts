// Fused BPT linear: y = a ⊙ (W (b ⊙ x) + U (V (b ⊙ x))) (+ bias) as one
// autograd node with a hand-written backward.
//
// Built from separate mul/linear/add ops, each wrapped linear kept about four
// [N, n]-sized intermediates alive until backward. This op saves only
// xb = b ⊙ x [N, m], t = xb Vᵀ [N, r] and z = xb Wᵀ + t Uᵀ [N, n]. One
// kernel (gemmSum) sums both products into z and writes y = a ⊙ z + bias.
//
// Backward, with dz = dy ⊙ a:
//   da = Σ_rows dy ⊙ z     dbias = Σ_rows dy
//   dU = dzᵀ t             dt = dz U
//   dV = dtᵀ xb            dxb = dz W + dt V
//   db = Σ_rows dxb ⊙ x    dx = dxb ⊙ b
// Gradients of inputs that do not require one are skipped with their GEMMs.

import { leafGrad, record } from "../core/autograd.ts";
import { sumRows } from "../core/ops/elementwise.ts";
import { gemm, gemmSum } from "../core/ops/matmul.ts";
import { scaleColumns, scaleColumnsBackward } from "../core/ops/scale_columns.ts";
import { empty, ShapeError, type Tensor } from "../core/tensor.ts";

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

  const xb2 = empty([rows, m]);
  scaleColumns(xb2, x.reshape([rows, m]), b);
  const t = empty([rows, r]);
  gemm(t, xb2, v, { transB: true });
  const z = empty([rows, n]);
  const y = empty([...x.shape.slice(0, -1), n]);
  gemmSum(z, xb2, w, t, u, { transB: true, scaledCopy: { out: y, scale: a, bias } });

  const inputs = bias ? [x, w, u, v, a, b, bias] : [x, w, u, v, a, b];
  record("bptLinear", y, inputs, (dy) => {
    const dy2 = dy.reshape([rows, n]);
    return bptLinearBackward({ x, w, u, v, a, b, bias, xb: xb2, t, z }, dy2, rows);
  });
  return y;
}

interface Saved {
  x: Tensor;
  w: Tensor;
  u: Tensor;
  v: Tensor;
  a: Tensor;
  b: Tensor;
  bias?: Tensor;
  /** b ⊙ x as [N, m]. */
  xb: Tensor;
  /** xb Vᵀ, [N, r]. */
  t: Tensor;
  /** xb Wᵀ + t Uᵀ, [N, n]. */
  z: Tensor;
}

// Returns [dx, dW, dU, dV, da, db, dbias], null where the input needs no gradient
// or where its leaf gradient was accumulated in place (see leafGrad).
// Runs inside `backward`, which records nothing, so the ops here are plain kernels.
function bptLinearBackward(s: Saved, dy: Tensor, rows: number): (Tensor | null)[] {
  const { x, w, u, v, a, b, bias, xb, t, z } = s;
  const n = w.shape[0];
  const m = w.shape[1];
  const r = u.shape[1];
  const needDxb = x.requiresGrad || b.requiresGrad;
  const needDt = needDxb || v.requiresGrad;

  // dz = dy ⊙ a and da = Σ_rows dy ⊙ z in one pass over dy.
  const dz = empty([rows, n]);
  const da = scaleColumnsBackward(dy, z, a, dz);
  let dbias: Tensor | null = null;
  if (bias?.requiresGrad) {
    const leaf = leafGrad(bias);
    if (leaf) sumRows(dy, n, leaf);
    else dbias = sumRows(dy, n);
  }

  const dw = w.requiresGrad ? gemmGrad(w, [n, m], dz, xb, { transA: true }) : null;
  const du = u.requiresGrad ? gemmGrad(u, [n, r], dz, t, { transA: true }) : null;
  let dt: Tensor | null = null;
  if (needDt) {
    dt = empty([rows, r]);
    gemm(dt, dz, u);
  }
  const dv = v.requiresGrad ? gemmGrad(v, [r, m], dt!, xb, { transA: true }) : null;

  // dxb = dz W + dt V, then dx = dxb ⊙ b and db = Σ_rows dxb ⊙ x in one pass.
  let dx: Tensor | null = null;
  let db: Tensor | null = null;
  if (needDxb) {
    const dxb = empty([rows, m]);
    gemmSum(dxb, dz, w, dt!, v);
    if (x.requiresGrad) dx = empty([...x.shape]);
    db = scaleColumnsBackward(dxb, x.reshape([rows, m]), b, dx?.reshape([rows, m]) ?? null);
    dxb.dispose();
  }
  dz.dispose();
  dt?.dispose();
  return [dx, dw, du, dv, da, db, dbias];
}

// op(A) · op(B) as the gradient of `param`: added into its leaf gradient when
// it has one (and null returned), else written to a new tensor of `shape`.
function gemmGrad(
  param: Tensor,
  shape: number[],
  a: Tensor,
  b: Tensor,
  opts: { transA?: boolean },
): Tensor | null {
  const leaf = leafGrad(param);
  if (leaf) {
    gemm(leaf, a, b, { ...opts, beta: 1 });
    return null;
  }
  const out = empty(shape);
  gemm(out, a, b, opts);
  return out;
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
