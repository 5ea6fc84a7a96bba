// RMSNorm over the last axis, as in Qwen2 and OLMo-2 (transformers'
// Qwen2RMSNorm and Olmo2RMSNorm, which normalise in f32):
//
//   y = x · rstd · w,   rstd = 1 / sqrt(mean(x²) + eps)
//
// Backward, with g = dy ⊙ w and C the row length:
//   dx = rstd · g − rstd³ · x · (Σ_c g_c x_c) / C
//   dw = Σ_rows dy ⊙ x · rstd
//
// x [R, C] and the output use one workgroup per row. dw is reduced in two
// deterministic stages: per chunk of DW_CHUNK rows, then over the chunks.
// x and w may be any dtype (w is often bf16); outputs and gradients are f32.

import { gradEnabled, record } from "../autograd.ts";
import { empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import { flatIndex, grid1d, main1d, storage, uniforms, window } from "../wgsl.ts";
import { sumRows } from "./elementwise.ts";
import { rowBlocks, rowMain, rowsAndCols, WG_REDUCE } from "./rows.ts";

// Rows summed serially by one invocation in the first stage of dw.
const DW_CHUNK = 64;

/** RMSNorm of x [..., C] with weight [C]; `eps` is added to mean(x²) (1e-6 in Qwen2.5 and OLMo-2). */
export function rmsnorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  const [rows, cols] = rowsAndCols(x.shape);
  if (weight.shape.length !== 1 || weight.shape[0] !== cols) {
    throw new ShapeError(
      `rmsnorm: weight ${weight.shapeString} must be [${cols}], the last dimension of x ${x.shapeString}`,
    );
  }
  const out = empty(x.shape);
  const rstd = empty([rows]);
  const code = `
struct P { rows: u32, cols: u32, ox: u32, oy: u32, orstd: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
${storage(2, "W", weight.dtype)}
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read_write> RSTD: array<f32>;
${WG_REDUCE}
${rowMain()}
  let base = row * p.cols;
  var acc = 0.0;
  for (var c = lid; c < p.cols; c += ROW_WG) {
    let v = ld_X(p.ox + base + c);
    acc += v * v;
  }
  let r = inverseSqrt(wg_sum(acc, lid) / f32(p.cols) + p.eps);
  for (var c = lid; c < p.cols; c += ROW_WG) {
    Y[p.oy + base + c] = ld_X(p.ox + base + c) * r * ld_W(c);
  }
  if (lid == 0u) {
    RSTD[p.orstd + row] = r;
  }
}`;
  for (const { start, count } of rowBlocks("rmsnorm", rows, cols)) {
    const wx = window(x, start * cols, count * cols);
    const wy = window(out, start * cols, count * cols);
    const wr = window(rstd, start, count);
    gpu().dispatch({
      label: `rmsnorm(${rows}x${cols})`,
      code,
      buffers: [wx.binding, weight.buffer, wy.binding, wr.binding],
      uniforms: uniforms(count, cols, wx.offset, wy.offset, wr.offset, { f: eps }),
      workgroups: grid1d(count, 1),
    });
  }

  // rstd lives only as long as the backward closure needs it.
  if (!gradEnabled() || !(x.requiresGrad || weight.requiresGrad)) {
    rstd.dispose();
    return out;
  }
  record("rmsnorm", out, [x, weight], (dy) => {
    const dx = x.requiresGrad ? rmsnormBackwardX(x, weight, rstd, dy, rows, cols) : null;
    const dw = weight.requiresGrad ? rmsnormBackwardWeight(x, rstd, dy, rows, cols) : null;
    rstd.dispose();
    return [dx, dw];
  });
  return out;
}

function rmsnormBackwardX(
  x: Tensor,
  weight: Tensor,
  rstd: Tensor,
  dy: Tensor,
  rows: number,
  cols: number,
): Tensor {
  const dx = empty(x.shape);
  const code = `
struct P { rows: u32, cols: u32, ox: u32, ody: u32, odx: u32, orstd: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
${storage(2, "W", weight.dtype)}
@group(0) @binding(3) var<storage, read> RSTD: array<f32>;
${storage(4, "DY", dy.dtype)}
@group(0) @binding(5) var<storage, read_write> DX: array<f32>;
${WG_REDUCE}
${rowMain()}
  let base = row * p.cols;
  var acc = 0.0;
  for (var c = lid; c < p.cols; c += ROW_WG) {
    acc += ld_DY(p.ody + base + c) * ld_W(c) * ld_X(p.ox + base + c);
  }
  let r = RSTD[p.orstd + row];
  let k = r * r * r * wg_sum(acc, lid) / f32(p.cols);
  for (var c = lid; c < p.cols; c += ROW_WG) {
    let g = ld_DY(p.ody + base + c) * ld_W(c);
    DX[p.odx + base + c] = r * g - k * ld_X(p.ox + base + c);
  }
}`;
  for (const { start, count } of rowBlocks("rmsnorm_backward", rows, cols)) {
    const wx = window(x, start * cols, count * cols);
    const wr = window(rstd, start, count);
    const wdy = window(dy, start * cols, count * cols);
    const wdx = window(dx, start * cols, count * cols);
    gpu().dispatch({
      label: `rmsnorm_backward_x(${rows}x${cols})`,
      code,
      buffers: [wx.binding, weight.buffer, wr.binding, wdy.binding, wdx.binding],
      uniforms: uniforms(count, cols, wx.offset, wdy.offset, wdx.offset, wr.offset),
      workgroups: grid1d(count, 1),
    });
  }
  return dx;
}

// dw in two stages: partial[k, c] = Σ over the DW_CHUNK rows of chunk k of
// dy·x·rstd (chunks never cross a row block), then a column sum over chunks.
function rmsnormBackwardWeight(
  x: Tensor,
  rstd: Tensor,
  dy: Tensor,
  rows: number,
  cols: number,
): Tensor {
  const blocks = rowBlocks("rmsnorm_backward", rows, cols);
  const chunkCounts = blocks.map((b) => Math.ceil(b.count / DW_CHUNK));
  const totalChunks = chunkCounts.reduce((a, b) => a + b, 0);
  const partial = empty([totalChunks, cols]);
  const code = `
struct P { n: u32, cols: u32, rows: u32, ox: u32, ody: u32, orstd: u32, opart: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
@group(0) @binding(2) var<storage, read> RSTD: array<f32>;
${storage(3, "DY", dy.dtype)}
@group(0) @binding(4) var<storage, read_write> PART: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  let c = i % p.cols;
  let k = i / p.cols;
  let first = k * ${DW_CHUNK}u;
  let last = min(first + ${DW_CHUNK}u, p.rows);
  var acc = 0.0;
  for (var r = first; r < last; r++) {
    acc += ld_DY(p.ody + r * p.cols + c) * ld_X(p.ox + r * p.cols + c) * RSTD[p.orstd + r];
  }
  PART[p.opart + i] = acc;
}`;
  let chunkStart = 0;
  blocks.forEach(({ start, count }, b) => {
    const n = chunkCounts[b] * cols;
    const wx = window(x, start * cols, count * cols);
    const wr = window(rstd, start, count);
    const wdy = window(dy, start * cols, count * cols);
    const wp = window(partial, chunkStart * cols, n);
    gpu().dispatch({
      label: `rmsnorm_backward_w(${rows}x${cols})`,
      code,
      buffers: [wx.binding, wr.binding, wdy.binding, wp.binding],
      uniforms: uniforms(n, cols, count, wx.offset, wdy.offset, wr.offset, wp.offset),
      workgroups: grid1d(n),
    });
    chunkStart += chunkCounts[b];
  });
  const dw = sumRows(partial, cols);
  partial.dispose();
  return dw;
}
