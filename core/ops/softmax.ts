// Softmax over the last axis: y = exp(x − max x) / Σ exp(x − max x).
//
// One workgroup per row. The forward pass reads the row once for the max and
// the sum of exponentials together (online softmax: a running max rescales the
// running sum), then once more to write y. Backward: dx = y ⊙ (dy − Σ dy ⊙ y).
// Inputs may be any dtype; outputs and gradients are f32.

import { record } from "../autograd.ts";
import { empty, gpu, type Tensor } from "../tensor.ts";
import { grid1d, storage, uniforms, window } from "../wgsl.ts";
import { rowBlocks, rowMain, rowsAndCols, WG_REDUCE } from "./rows.ts";

/** Softmax over the last axis. A row of -inf only, or containing +inf or NaN, gives NaN. */
export function softmax(x: Tensor): Tensor {
  const [rows, cols] = rowsAndCols(x.shape);
  const out = empty(x.shape);
  const code = `
struct P { rows: u32, cols: u32, ox: u32, oy: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
${WG_REDUCE}
${rowMain()}
  let base = row * p.cols;
  var acc = vec2<f32>(LOWEST, 0.0);
  for (var c = lid; c < p.cols; c += ROW_WG) {
    acc = online_add(acc, ld_X(p.ox + base + c));
  }
  let stats = wg_max_sumexp(acc.x, acc.y, lid);
  let inv = 1.0 / stats.y;
  for (var c = lid; c < p.cols; c += ROW_WG) {
    Y[p.oy + base + c] = exp(ld_X(p.ox + base + c) - stats.x) * inv;
  }
}`;
  for (const { start, count } of rowBlocks("softmax", rows, cols)) {
    const wx = window(x, start * cols, count * cols);
    const wy = window(out, start * cols, count * cols);
    gpu().dispatch({
      label: `softmax(${rows}x${cols})`,
      code,
      buffers: [wx.binding, wy.binding],
      uniforms: uniforms(count, cols, wx.offset, wy.offset),
      workgroups: grid1d(count, 1),
    });
  }

  record("softmax", out, [x], (dy) => [softmaxBackward(out, dy, rows, cols)]);
  return out;
}

function softmaxBackward(y: Tensor, dy: Tensor, rows: number, cols: number): Tensor {
  const dx = empty(y.shape);
  const code = `
struct P { rows: u32, cols: u32, oy: u32, ody: u32, odx: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Y: array<f32>;
${storage(2, "DY", dy.dtype)}
@group(0) @binding(3) var<storage, read_write> DX: array<f32>;
${WG_REDUCE}
${rowMain()}
  let base = row * p.cols;
  var acc = 0.0;
  for (var c = lid; c < p.cols; c += ROW_WG) {
    acc += Y[p.oy + base + c] * ld_DY(p.ody + base + c);
  }
  let dot = wg_sum(acc, lid);
  for (var c = lid; c < p.cols; c += ROW_WG) {
    DX[p.odx + base + c] = Y[p.oy + base + c] * (ld_DY(p.ody + base + c) - dot);
  }
}`;
  for (const { start, count } of rowBlocks("softmax_backward", rows, cols)) {
    const wy = window(y, start * cols, count * cols);
    const wdy = window(dy, start * cols, count * cols);
    const wdx = window(dx, start * cols, count * cols);
    gpu().dispatch({
      label: `softmax_backward(${rows}x${cols})`,
      code,
      buffers: [wy.binding, wdy.binding, wdx.binding],
      uniforms: uniforms(count, cols, wy.offset, wdy.offset, wdx.offset),
      workgroups: grid1d(count, 1),
    });
  }
  return dx;
}
