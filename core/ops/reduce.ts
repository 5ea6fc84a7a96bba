// Sum and mean over the last axis or over all elements.
//
// Each output element is reduced by one workgroup with a tree reduction, so
// results do not depend on scheduling. A reduction over all elements runs in
// passes: chunks of CHUNK elements to one partial sum each, until one is left.
// Inputs may be any dtype; outputs and gradients are f32.

import { record } from "../autograd.ts";
import { empty, gpu, type Tensor } from "../tensor.ts";
import { flatIndex, grid1d, main1d, storage, uniforms, window, windowElements } from "../wgsl.ts";
import { fillInPlace } from "./elementwise.ts";
import { rowBlocks, rowMain, rowsAndCols, WG_REDUCE } from "./rows.ts";

// Elements per partial sum in a reduction over all elements: 16 per invocation.
const CHUNK = 4096;

/**
 * Sum over the last axis (`axis` -1), which drops that axis, or over all
 * elements (`axis` omitted), which returns shape [1]. A 1-D input reduced over
 * its last axis also returns shape [1].
 */
export function sum(x: Tensor, axis?: -1): Tensor {
  return reduce("sum", x, axis, false);
}

/** Mean over the last axis (`axis` -1) or over all elements (`axis` omitted); shapes as in `sum`. */
export function mean(x: Tensor, axis?: -1): Tensor {
  return reduce("mean", x, axis, true);
}

function reduce(op: string, x: Tensor, axis: -1 | undefined, isMean: boolean): Tensor {
  const lastAxis = axis === -1;
  const [rows, cols] = lastAxis ? rowsAndCols(x.shape) : [1, x.numel];
  const outShape = lastAxis && x.shape.length > 1 ? x.shape.slice(0, -1) : [1];
  const out = empty(outShape);
  const scale = isMean ? 1 / cols : 1;

  // PyTorch's convention for empty inputs: the sum is 0 and the mean NaN.
  if (cols === 0) fillInPlace(out, isMean ? NaN : 0);
  else if (lastAxis) sumRowsInto(out, x, rows, cols, rows * cols, scale, op);
  else sumAllInto(out, x, scale, op);

  record(op, out, [x], (dy) => {
    const dx = empty(x.shape);
    broadcastInto(dx, dy, cols, scale);
    return [dx];
  });
  return out;
}

// out[r] = scale · Σ_c x[r·cols + c] over the `len` elements that exist (the
// last row may be short), one workgroup per row.
function sumRowsInto(
  out: Tensor,
  x: Tensor,
  rows: number,
  cols: number,
  len: number,
  scale: number,
  op: string,
) {
  const code = `
struct P { rows: u32, cols: u32, len: u32, ox: u32, oy: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
${WG_REDUCE}
${rowMain()}
  let base = row * p.cols;
  var acc = 0.0;
  for (var c = lid; c < p.cols; c += ROW_WG) {
    if (base + c < p.len) {
      acc += ld_X(p.ox + base + c);
    }
  }
  let total = wg_sum(acc, lid);
  if (lid == 0u) {
    Y[p.oy + row] = total * p.scale;
  }
}`;
  for (const { start, count } of rowBlocks(op, rows, cols)) {
    const first = start * cols;
    const blockLen = Math.min(count * cols, len - first);
    const wx = window(x, first, blockLen);
    const wy = window(out, start, count);
    gpu().dispatch({
      label: `${op}(${rows}x${cols})`,
      code,
      buffers: [wx.binding, wy.binding],
      uniforms: uniforms(count, cols, blockLen, wx.offset, wy.offset, { f: scale }),
      workgroups: grid1d(count, 1),
    });
  }
}

// Reduces all of x into out[0] in passes of CHUNK-element partial sums.
function sumAllInto(out: Tensor, x: Tensor, scale: number, op: string) {
  let src = x;
  while (src.numel > CHUNK) {
    const parts = Math.ceil(src.numel / CHUNK);
    const partial = empty([parts]);
    sumRowsInto(partial, src, parts, CHUNK, src.numel, 1, op);
    if (src !== x) src.dispose();
    src = partial;
  }
  sumRowsInto(out, src, 1, src.numel, src.numel, scale, op);
  if (src !== x) src.dispose();
}

// dx[i] = scale · dy[⌊i / cols⌋]: the gradient of a sum spreads dy over its inputs.
function broadcastInto(dx: Tensor, dy: Tensor, cols: number, scale: number) {
  const code = `
struct P { n: u32, cols: u32, phase: u32, ody: u32, odx: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "DY", dy.dtype)}
@group(0) @binding(2) var<storage, read_write> DX: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  DX[p.odx + i] = p.scale * ld_DY(p.ody + (p.phase + i) / p.cols);
}`;
  const step = windowElements("f32");
  for (let start = 0; start < dx.numel; start += step) {
    const n = Math.min(step, dx.numel - start);
    const firstRow = Math.floor(start / cols);
    const lastRow = Math.floor((start + n - 1) / cols);
    const wdy = window(dy, firstRow, lastRow - firstRow + 1);
    const wdx = window(dx, start, n);
    gpu().dispatch({
      label: `reduce_backward(${dx.shapeString})`,
      code,
      buffers: [wdy.binding, wdx.binding],
      uniforms: uniforms(n, cols, start - firstRow * cols, wdy.offset, wdx.offset, { f: scale }),
      workgroups: grid1d(n),
    });
  }
}
