// Fused BPT linear: y = a ⊙ (W (b ⊙ x) + U (V (b ⊙ x))) (+ bias) as one
// autograd node with a hand-written backward.
//
// Built from separate mul/linear/add ops, each wrapped linear kept about four
// [N, n]-sized intermediates alive until backward. This op saves only
// xb = b ⊙ x [N, m], t = xb Vᵀ [N, r] and z = xb Wᵀ + t Uᵀ [N, n], and writes
// z with two GEMMs into one buffer (the second accumulates with beta = 1).
//
// Backward, with dz = dy ⊙ a:
//   da = Σ_rows dy ⊙ z     dbias = Σ_rows dy
//   dU = dzᵀ t             dt = dz U
//   dV = dtᵀ xb            dxb = dz W + dt V
//   db = Σ_rows dxb ⊙ x    dx = dxb ⊙ b
// Gradients of inputs that do not require one are skipped with their GEMMs.

import { noGrad, record } from "../core/autograd.ts";
import { mul, sumRows } from "../core/ops/elementwise.ts";
import { gemm } from "../core/ops/matmul.ts";
import { empty, gpu, ShapeError, type Tensor } from "../core/tensor.ts";
import {
  flatIndex,
  grid1d,
  main1d,
  storage,
  uniforms,
  window,
  windowElements,
} from "../core/wgsl.ts";

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

  // The forward's element-wise ops must not land on the tape: this op records itself.
  const xb = noGrad(() => mul(x, b));
  const xb2 = xb.reshape([rows, m]);
  const t = empty([rows, r]);
  gemm(t, xb2, v, { transB: true });
  const z = empty([rows, n]);
  gemm(z, xb2, w, { transB: true });
  gemm(z, t, u, { transB: true, beta: 1 });
  const y = empty([...x.shape.slice(0, -1), n]);
  scaleColumns(y, z, a, bias);

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

// Returns [dx, dW, dU, dV, da, db, dbias], null where the input needs no gradient.
// Runs inside `backward`, which records nothing, so the element-wise ops here are plain kernels.
function bptLinearBackward(s: Saved, dy: Tensor, rows: number): (Tensor | null)[] {
  const { x, w, u, v, a, b, bias, xb, t, z } = s;
  const n = w.shape[0];
  const m = w.shape[1];
  const r = u.shape[1];
  const needDxb = x.requiresGrad || b.requiresGrad;
  const needDt = needDxb || v.requiresGrad;

  let da: Tensor | null = null;
  if (a.requiresGrad) {
    const prod = mul(dy, z);
    da = sumRows(prod, n);
    prod.dispose();
  }
  const dbias = bias?.requiresGrad ? sumRows(dy, n) : null;

  const dz = mul(dy, a);
  let dw: Tensor | null = null;
  if (w.requiresGrad) {
    dw = empty([n, m]);
    gemm(dw, dz, xb, { transA: true });
  }
  let du: Tensor | null = null;
  if (u.requiresGrad) {
    du = empty([n, r]);
    gemm(du, dz, t, { transA: true });
  }

  let dt: Tensor | null = null;
  if (needDt) {
    dt = empty([rows, r]);
    gemm(dt, dz, u);
  }
  let dv: Tensor | null = null;
  if (v.requiresGrad) {
    dv = empty([r, m]);
    gemm(dv, dt!, xb, { transA: true });
  }

  let dx: Tensor | null = null;
  let db: Tensor | null = null;
  if (needDxb) {
    const dxb = empty([...x.shape]);
    const dxb2 = dxb.reshape([rows, m]);
    gemm(dxb2, dz, w);
    gemm(dxb2, dt!, v, { beta: 1 });
    if (b.requiresGrad) {
      const prod = mul(dxb, x);
      db = sumRows(prod, m);
      prod.dispose();
    }
    if (x.requiresGrad) dx = mul(dxb, b);
    dxb.dispose();
  }
  dz.dispose();
  dt?.dispose();
  return [dx, dw, du, dv, da, db, dbias];
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

// Writes out[i, j] = z[i, j] · a[j] (+ bias[j]) in one pass without recording autograd.
function scaleColumns(out: Tensor, z: Tensor, a: Tensor, bias?: Tensor) {
  const cols = a.numel;
  const code = `
struct P { n: u32, cols: u32, oz: u32, oo: u32, base: u32, oa: u32, obias: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "Z", z.dtype)}
${storage(2, "A", a.dtype)}
${storage(3, "O", "f32", "read_write")}
${bias ? storage(4, "Bias", bias.dtype) : ""}
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  let col = (p.base + i) % p.cols;
  O[p.oo + i] = ld_Z(p.oz + i) * ld_A(p.oa + col)${bias ? " + ld_Bias(p.obias + col)" : ""};
}`;
  const wa = window(a, 0, cols);
  const wbias = bias ? window(bias, 0, cols) : null;
  const step = windowElements("f32");
  for (let start = 0; start < z.numel; start += step) {
    const count = Math.min(step, z.numel - start);
    const wz = window(z, start, count);
    const wo = window(out, start, count);
    const buffers: GPUBufferBinding[] = [wz.binding, wa.binding, wo.binding];
    if (wbias) buffers.push(wbias.binding);
    gpu().dispatch({
      label: `bptScaleColumns(${z.shapeString}${bias ? ", bias" : ""})`,
      code,
      buffers,
      uniforms: uniforms(
        count,
        cols,
        wz.offset,
        wo.offset,
        start % cols,
        wa.offset,
        wbias ? wbias.offset : 0,
      ),
      workgroups: grid1d(count),
    });
  }
}
