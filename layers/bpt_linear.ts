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

import { leafGrad, record } from "../core/autograd.ts";
import { sumRows } from "../core/ops/elementwise.ts";
import { gridBlocks } from "../core/ops/rows.ts";
import { gemm } from "../core/ops/matmul.ts";
import { empty, gpu, ShapeError, type Tensor } from "../core/tensor.ts";
import { grid2d, main2d, storage, uniforms, WG_2D, window } from "../core/wgsl.ts";

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
  gemm(z, xb2, w, { transB: true });
  gemm(z, t, u, { transB: true, beta: 1 });
  const y = empty([...x.shape.slice(0, -1), n]);
  scaleColumns(y.reshape([rows, n]), z, a, bias);

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
    gemm(dxb, dz, w);
    gemm(dxb, dt!, v, { beta: 1 });
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

// out[i, j] = x[i, j] · s[j] (+ bias[j]) for x and out [R, C], without autograd.
function scaleColumns(out: Tensor, x: Tensor, s: Tensor, bias?: Tensor) {
  const [rows, cols] = x.shape;
  const code = `
struct P { rows: u32, cols: u32, ox: u32, oo: u32, os: u32, obias: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
${storage(2, "S", s.dtype)}
${storage(3, "O", "f32", "read_write")}
${bias ? storage(4, "Bias", bias.dtype) : ""}
${main2d()}
  let i = row * p.cols + col;
  O[p.oo + i] = ld_X(p.ox + i) * ld_S(p.os + col)${bias ? " + ld_Bias(p.obias + col)" : ""};
}`;
  const ws = window(s, 0, cols);
  const wbias = bias ? window(bias, 0, cols) : null;
  for (const blk of gridBlocks("bptLinear", rows, cols)) {
    const wx = window(x, blk.start * cols, blk.count * cols);
    const wo = window(out, blk.start * cols, blk.count * cols);
    const buffers: GPUBufferBinding[] = [wx.binding, ws.binding, wo.binding];
    if (wbias) buffers.push(wbias.binding);
    gpu().dispatch({
      label: `bptScaleColumns(${x.shapeString}${bias ? ", bias" : ""})`,
      code,
      buffers,
      uniforms: uniforms(
        blk.count,
        cols,
        wx.offset,
        wo.offset,
        ws.offset,
        wbias ? wbias.offset : 0,
      ),
      workgroups: grid2d(blk.count, cols),
    });
  }
}

// Rows summed by one invocation of scaleColumnsBackward before writing a partial sum.
const PARTIAL_ROWS = 64;

// Backward of out = x ⊙ s (s broadcast over the rows of [R, C]) given the
// upstream gradient g: writes dx = g ⊙ s into `dx` (when not null) and returns
// ds = Σ_rows g ⊙ x, or null when s needs no gradient or ds went into s's
// leaf gradient. Each invocation walks PARTIAL_ROWS rows of one column; a
// sumRows pass adds the partial sums, in a fixed order (no float atomics).
function scaleColumnsBackward(g: Tensor, x: Tensor, s: Tensor, dx: Tensor | null): Tensor | null {
  const [rows, cols] = g.shape;
  const wantDs = s.requiresGrad;
  if (!wantDs && !dx) return null;
  // Only the bindings in use are declared: pipelines use "auto" layouts.
  const decls = [storage(1, "G", g.dtype)];
  if (dx) decls.push(storage(2, "S", s.dtype), storage(3, "Dx", "f32", "read_write"));
  if (wantDs) {
    const k = dx ? 4 : 2;
    decls.push(storage(k, "X", x.dtype), storage(k + 1, "Part", "f32", "read_write"));
  }
  const code = `
struct P { rows: u32, cols: u32, og: u32, os: u32, odx: u32, ox: u32, opart: u32 }
@group(0) @binding(0) var<uniform> p: P;
${decls.join("\n")}
@compute @workgroup_size(${WG_2D})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x;
  let r0 = gid.y * ${PARTIAL_ROWS}u;
  if (col >= p.cols || r0 >= p.rows) { return; }
  ${dx ? "let sc = ld_S(p.os + col);" : ""}
  var acc = 0.0;
  for (var r = r0; r < min(p.rows, r0 + ${PARTIAL_ROWS}u); r++) {
    let i = r * p.cols + col;
    let gi = ld_G(p.og + i);
    ${dx ? "Dx[p.odx + i] = gi * sc;" : ""}
    ${wantDs ? "acc += gi * ld_X(p.ox + i);" : ""}
  }
  ${wantDs ? "Part[p.opart + gid.y * p.cols + col] = acc;" : ""}
}`;
  const blocks = gridBlocks("bptLinear", rows, cols);
  const groups = blocks.map((blk) => Math.ceil(blk.count / PARTIAL_ROWS));
  const partial = wantDs
    ? empty([groups.reduce((p, q) => p + q, 0), cols], { memoryClass: "scratch" })
    : null;
  const ws = window(s, 0, cols);
  let partRow = 0;
  blocks.forEach((blk, k) => {
    const span = (t: Tensor) => window(t, blk.start * cols, blk.count * cols);
    const wg = span(g);
    const wdx = dx ? span(dx) : null;
    const wx = wantDs ? span(x) : null;
    const buffers: GPUBufferBinding[] = [wg.binding];
    if (wdx) buffers.push(ws.binding, wdx.binding);
    if (wx) buffers.push(wx.binding, { buffer: partial!.buffer });
    gpu().dispatch({
      label: `bptScaleColumnsBackward(${g.shapeString})`,
      code,
      buffers,
      uniforms: uniforms(
        blk.count,
        cols,
        wg.offset,
        ws.offset,
        wdx ? wdx.offset : 0,
        wx ? wx.offset : 0,
        partRow * cols,
      ),
      workgroups: [Math.ceil(cols / WG_2D), groups[k]],
    });
    partRow += groups[k];
  });

  if (!partial) return null;
  const leaf = leafGrad(s);
  const ds = sumRows(partial, cols, leaf ?? undefined);
  partial.dispose();
  return leaf ? null : ds;
}
