// Fused BPT linear: y = a ⊙ (W (b ⊙ x) + U (V (b ⊙ x))) (+ bias) as one
// autograd node with a hand-written backward.
//
// Built from separate mul/linear/add ops, each wrapped linear kept about four
// [N, n]-sized intermediates alive until backward. This op saves only
// xb = b ⊙ x [N, m], t = xb Vᵀ [N, r] and z = xb Wᵀ + t Uᵀ [N, n], and writes
// z with one kernel that sums both products (gemmSum).
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
import { gemm, gemmSum } from "../core/ops/matmul.ts";
import { type DType, empty, gpu, ShapeError, type Tensor } from "../core/tensor.ts";
import { grid2d, storage, uniforms, vecStorage, WG_2D, window } from "../core/wgsl.ts";

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
  gemmSum(z, xb2, w, t, u, { transB: true });
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

// The element-wise kernels below take 4 columns per invocation, with vec4
// loads and stores, when every row and window offset allows it. On llvmpipe
// each storage access is a loop over the SIMD lanes, and vec4 access made a
// 512×128 scaling 1.5× faster. `lanes` gives the WGSL snippets for either width.
function lanes(vec: boolean) {
  return {
    width: vec ? 4 : 1,
    type: vec ? "vec4<f32>" : "f32",
    /** Read-only binding with loader `<ld>Name(e)`. */
    input: (binding: number, name: string, dtype: DType) =>
      vec ? vecStorage(binding, name, dtype) : storage(binding, name, dtype),
    ld: vec ? "lv_" : "ld_",
    /** Writable f32 binding; store with `Name[at(e)]`. */
    output: (binding: number, name: string) =>
      `@group(0) @binding(${binding}) var<storage, read_write> ${name}: array<${
        vec ? "vec4<f32>" : "f32"
      }>;`,
    at: (e: string) => (vec ? `(${e}) >> 2u` : e),
  };
}

// Whether rows of `cols` and every given window offset allow vec4 access.
function vec4Ok(cols: number, offsets: number[]): boolean {
  return cols % 4 === 0 && offsets.every((o) => o % 4 === 0);
}

// out[i, j] = x[i, j] · s[j] (+ bias[j]) for x and out [R, C], without autograd.
function scaleColumns(out: Tensor, x: Tensor, s: Tensor, bias?: Tensor) {
  const [rows, cols] = x.shape;
  const ws = window(s, 0, cols);
  const wbias = bias ? window(bias, 0, cols) : null;
  const blocks = gridBlocks("bptLinear", rows, cols).map((blk) => ({
    count: blk.count,
    wx: window(x, blk.start * cols, blk.count * cols),
    wo: window(out, blk.start * cols, blk.count * cols),
  }));
  const vec = vec4Ok(cols, [
    ws.offset,
    wbias?.offset ?? 0,
    ...blocks.flatMap((b) => [b.wx.offset, b.wo.offset]),
  ]);
  const L = lanes(vec);
  const code = `
struct P { rows: u32, cols: u32, ox: u32, oo: u32, os: u32, obias: u32 }
@group(0) @binding(0) var<uniform> p: P;
${L.input(1, "X", x.dtype)}
${L.input(2, "S", s.dtype)}
${L.output(3, "O")}
${bias ? L.input(4, "Bias", bias.dtype) : ""}
@compute @workgroup_size(${WG_2D})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x * ${L.width}u;
  let row = gid.y;
  if (col >= p.cols || row >= p.rows) { return; }
  let i = row * p.cols + col;
  let y = ${L.ld}X(p.ox + i) * ${L.ld}S(p.os + col)${bias ? ` + ${L.ld}Bias(p.obias + col)` : ""};
  O[${L.at("p.oo + i")}] = y;
}`;
  for (const blk of blocks) {
    const buffers: GPUBufferBinding[] = [blk.wx.binding, ws.binding, blk.wo.binding];
    if (wbias) buffers.push(wbias.binding);
    gpu().dispatch({
      label: `bptScaleColumns(${x.shapeString}${bias ? ", bias" : ""})`,
      code,
      buffers,
      uniforms: uniforms(
        blk.count,
        cols,
        blk.wx.offset,
        blk.wo.offset,
        ws.offset,
        wbias ? wbias.offset : 0,
      ),
      workgroups: grid2d(blk.count, cols / L.width),
    });
  }
}

// Rows summed by one invocation of scaleColumnsBackward before writing a partial sum.
const PARTIAL_ROWS = 64;

// Backward of out = x ⊙ s (s broadcast over the rows of [R, C]) given the
// upstream gradient g: writes dx = g ⊙ s into `dx` (when not null) and returns
// ds = Σ_rows g ⊙ x, or null when s needs no gradient or ds went into s's
// leaf gradient. Each invocation walks PARTIAL_ROWS rows of its columns; a
// sumRows pass adds the partial sums, in a fixed order (no float atomics).
function scaleColumnsBackward(g: Tensor, x: Tensor, s: Tensor, dx: Tensor | null): Tensor | null {
  const [rows, cols] = g.shape;
  const wantDs = s.requiresGrad;
  if (!wantDs && !dx) return null;
  const ws = window(s, 0, cols);
  const blocks = gridBlocks("bptLinear", rows, cols).map((blk) => {
    const span = (t: Tensor) => window(t, blk.start * cols, blk.count * cols);
    return {
      count: blk.count,
      groups: Math.ceil(blk.count / PARTIAL_ROWS),
      wg: span(g),
      wdx: dx ? span(dx) : null,
      wx: wantDs ? span(x) : null,
    };
  });
  const partial = wantDs
    ? empty([blocks.reduce((sum, b) => sum + b.groups, 0), cols], { memoryClass: "scratch" })
    : null;
  const vec = vec4Ok(cols, [
    ws.offset,
    ...blocks.flatMap((b) => [b.wg.offset, b.wdx?.offset ?? 0, b.wx?.offset ?? 0]),
  ]);
  const L = lanes(vec);

  // Only the bindings in use are declared: pipelines use "auto" layouts.
  const decls = [L.input(1, "G", g.dtype)];
  if (dx) decls.push(L.input(2, "S", s.dtype), L.output(3, "Dx"));
  if (wantDs) {
    const k = dx ? 4 : 2;
    decls.push(L.input(k, "X", x.dtype), L.output(k + 1, "Part"));
  }
  const code = `
struct P { rows: u32, cols: u32, og: u32, os: u32, odx: u32, ox: u32, opart: u32 }
@group(0) @binding(0) var<uniform> p: P;
${decls.join("\n")}
@compute @workgroup_size(${WG_2D})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x * ${L.width}u;
  let r0 = gid.y * ${PARTIAL_ROWS}u;
  if (col >= p.cols || r0 >= p.rows) { return; }
  ${dx ? `let sc = ${L.ld}S(p.os + col);` : ""}
  var acc = ${L.type}(0.0);
  for (var r = r0; r < min(p.rows, r0 + ${PARTIAL_ROWS}u); r++) {
    let i = r * p.cols + col;
    let gi = ${L.ld}G(p.og + i);
    ${dx ? `Dx[${L.at("p.odx + i")}] = gi * sc;` : ""}
    ${wantDs ? `acc += gi * ${L.ld}X(p.ox + i);` : ""}
  }
  ${wantDs ? `Part[${L.at("p.opart + gid.y * p.cols + col")}] = acc;` : ""}
}`;
  let partRow = 0;
  for (const blk of blocks) {
    const buffers: GPUBufferBinding[] = [blk.wg.binding];
    if (blk.wdx) buffers.push(ws.binding, blk.wdx.binding);
    if (blk.wx) buffers.push(blk.wx.binding, { buffer: partial!.buffer });
    gpu().dispatch({
      label: `bptScaleColumnsBackward(${g.shapeString})`,
      code,
      buffers,
      uniforms: uniforms(
        blk.count,
        cols,
        blk.wg.offset,
        ws.offset,
        blk.wdx ? blk.wdx.offset : 0,
        blk.wx ? blk.wx.offset : 0,
        partRow * cols,
      ),
      workgroups: [Math.ceil(cols / L.width / WG_2D), blk.groups],
    });
    partRow += blk.groups;
  }

  if (!partial) return null;
  const leaf = leafGrad(s);
  const ds = sumRows(partial, cols, leaf ?? undefined);
  partial.dispose();
  return leaf ? null : ds;
}
