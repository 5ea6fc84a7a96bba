// Cross-entropy of logits [N, V] against integer targets [N], fused with the
// log-softmax, averaged over the targets that are not `ignoreIndex` (PyTorch's
// F.cross_entropy with reduction "mean"):
//
//   loss = Σ_{n: t_n ≠ ignore} (lse_n − x[n, t_n]) / count,   lse_n = log Σ_v exp(x[n, v])
//   dlogits[n, v] = dloss · (exp(x[n, v] − lse_n) − [v = t_n]) / count, 0 on ignored rows
//
// The forward pass reads each row once, with one workgroup per row computing
// the max and the sum of exponentials together (online softmax). It keeps only
// the max and log Σ exp(x − max) per row, from which the backward pass
// recomputes the softmax element by element. Keeping the two apart, instead
// of their sum lse, keeps exp(x − lse) accurate when the max dominates
// (lse = 1000 + 4.5e-5 rounds to 1000 in f32).
//
// Logits larger than one binding are bound in row blocks: N x 151,936 f32
// logits pass 128 MiB at N = 221.

import { gradEnabled, record } from "../autograd.ts";
import { empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import { grid1d, grid2d, main2d, storage, uniforms, window } from "../wgsl.ts";
import { gridBlocks, ROW_WG, rowBlocks, rowMain, rowsAndCols, WG_REDUCE } from "./rows.ts";

const NAN = "bitcast<f32>(0x7fc00000u)";

/**
 * Mean cross-entropy of `logits` [..., V] (any dtype) against `targets` (i32
 * from `fromInt32`, one per row of logits), skipping targets equal to
 * `ignoreIndex`. Returns shape [1]: NaN when every target is ignored, as in
 * PyTorch, and NaN when a target is outside [0, V) and not ignored.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, ignoreIndex = -100): Tensor {
  const [rows, cols] = rowsAndCols(logits.shape);
  if (logits.shape.length < 2 || targets.numel !== rows) {
    throw new ShapeError(
      `cross_entropy: logits ${logits.shapeString} must be [N, V] with one target per row, got targets ${targets.shapeString}`,
    );
  }
  if (!Number.isInteger(ignoreIndex) || Math.abs(ignoreIndex) >= 2 ** 31) {
    throw new RangeError(`cross_entropy: ignore index ${ignoreIndex} must be a 32-bit integer`);
  }

  const stats = empty([rows, 2], { name: "cross_entropy.stats" });
  const rowLoss = empty([rows], { name: "cross_entropy.row_loss" });
  rowLosses(logits, targets, stats, rowLoss, rows, cols, ignoreIndex);

  const loss = empty([1]);
  const count = empty([1], { name: "cross_entropy.count" });
  meanLoss(rowLoss, targets, loss, count, rows, ignoreIndex);
  rowLoss.dispose();

  if (!gradEnabled() || !logits.requiresGrad) {
    stats.dispose();
    count.dispose();
    return loss;
  }
  record("cross_entropy", loss, [logits, targets], (dy) => {
    const dlogits = crossEntropyBackward(
      logits,
      targets,
      stats,
      count,
      dy,
      rows,
      cols,
      ignoreIndex,
    );
    stats.dispose();
    count.dispose();
    return [dlogits, null];
  });
  return loss;
}

// stats[n] = (max, log Σ exp(x − max)) and the per-row loss (0 for ignored
// rows), one workgroup per row.
function rowLosses(
  logits: Tensor,
  targets: Tensor,
  stats: Tensor,
  rowLoss: Tensor,
  rows: number,
  cols: number,
  ignoreIndex: number,
) {
  const code = `
struct P { rows: u32, cols: u32, ox: u32, ot: u32, ostats: u32, oloss: u32, ignore: i32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", logits.dtype)}
@group(0) @binding(2) var<storage, read> TGT: array<i32>;
@group(0) @binding(3) var<storage, read_write> STATS: array<f32>;
@group(0) @binding(4) var<storage, read_write> LOSS: array<f32>;
${WG_REDUCE}
${rowMain()}
  let base = row * p.cols;
  var acc = vec2<f32>(LOWEST, 0.0);
  for (var c = lid; c < p.cols; c += ROW_WG) {
    acc = online_add(acc, ld_X(p.ox + base + c));
  }
  let stats = wg_max_sumexp(acc.x, acc.y, lid);
  if (lid == 0u) {
    let log_sum = log(stats.y);
    STATS[p.ostats + 2u * row] = stats.x;
    STATS[p.ostats + 2u * row + 1u] = log_sum;
    let t = TGT[p.ot + row];
    var loss = 0.0;
    if (t != p.ignore) {
      if (t < 0 || t >= i32(p.cols)) {
        loss = ${NAN};
      } else {
        // (max − x_t) + log Σ exp(x − max) keeps the digits that lse − x_t would cancel.
        loss = (stats.x - ld_X(p.ox + base + u32(t))) + log_sum;
      }
    }
    LOSS[p.oloss + row] = loss;
  }
}`;
  for (const { start, count } of rowBlocks("cross_entropy", rows, cols)) {
    const wx = window(logits, start * cols, count * cols);
    const wt = window(targets, start, count);
    const ws = window(stats, start * 2, count * 2);
    const wr = window(rowLoss, start, count);
    gpu().dispatch({
      label: `cross_entropy(${rows}x${cols})`,
      code,
      buffers: [wx.binding, wt.binding, ws.binding, wr.binding],
      uniforms: uniforms(count, cols, wx.offset, wt.offset, ws.offset, wr.offset, {
        i: ignoreIndex,
      }),
      workgroups: grid1d(count, 1),
    });
  }
}

// loss[0] = Σ rowLoss / count and count[0] = number of targets not ignored,
// reduced by a single workgroup.
function meanLoss(
  rowLoss: Tensor,
  targets: Tensor,
  loss: Tensor,
  count: Tensor,
  rows: number,
  ignoreIndex: number,
) {
  const code = `
struct P { rows: u32, ignore: i32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ROWLOSS: array<f32>;
@group(0) @binding(2) var<storage, read> TGT: array<i32>;
@group(0) @binding(3) var<storage, read_write> LOSS: array<f32>;
@group(0) @binding(4) var<storage, read_write> COUNT: array<f32>;
${WG_REDUCE}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var total = 0.0;
  var valid = 0.0;
  for (var r = lid; r < p.rows; r += ROW_WG) {
    total += ROWLOSS[r];
    if (TGT[r] != p.ignore) {
      valid += 1.0;
    }
  }
  let sum = wg_sum(total, lid);
  let n = wg_sum(valid, lid);
  if (lid == 0u) {
    LOSS[0] = sum / n;
    COUNT[0] = n;
  }
}`;
  gpu().dispatch({
    label: `cross_entropy_mean(${rows})`,
    code,
    buffers: [rowLoss.buffer, targets.buffer, loss.buffer, count.buffer],
    uniforms: uniforms(rows, { i: ignoreIndex }),
    workgroups: [1],
  });
}

function crossEntropyBackward(
  logits: Tensor,
  targets: Tensor,
  stats: Tensor,
  count: Tensor,
  dy: Tensor,
  rows: number,
  cols: number,
  ignoreIndex: number,
): Tensor {
  const dx = empty(logits.shape);
  const code = `
struct P { rows: u32, cols: u32, ox: u32, ot: u32, ostats: u32, odx: u32, ignore: i32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", logits.dtype)}
@group(0) @binding(2) var<storage, read> TGT: array<i32>;
@group(0) @binding(3) var<storage, read> STATS: array<f32>;
@group(0) @binding(4) var<storage, read> COUNT: array<f32>;
${storage(5, "DY", dy.dtype)}
@group(0) @binding(6) var<storage, read_write> DX: array<f32>;
${main2d()}
  let i = row * p.cols + col;
  let t = TGT[p.ot + row];
  if (t == p.ignore) {
    DX[p.odx + i] = 0.0;
    return;
  }
  if (t < 0 || t >= i32(p.cols)) {
    DX[p.odx + i] = ${NAN};
    return;
  }
  let row_max = STATS[p.ostats + 2u * row];
  let log_sum = STATS[p.ostats + 2u * row + 1u];
  let prob = exp((ld_X(p.ox + i) - row_max) - log_sum);
  let onehot = select(0.0, 1.0, u32(t) == col);
  DX[p.odx + i] = ld_DY(0u) / COUNT[0] * (prob - onehot);
}`;
  for (const { start, count: blockRows } of gridBlocks("cross_entropy_backward", rows, cols)) {
    const wx = window(logits, start * cols, blockRows * cols);
    const wt = window(targets, start, blockRows);
    const ws = window(stats, start * 2, blockRows * 2);
    const wdx = window(dx, start * cols, blockRows * cols);
    gpu().dispatch({
      label: `cross_entropy_backward(${rows}x${cols})`,
      code,
      buffers: [wx.binding, wt.binding, ws.binding, count.buffer, dy.buffer, wdx.binding],
      uniforms: uniforms(blockRows, cols, wx.offset, wt.offset, ws.offset, wdx.offset, {
        i: ignoreIndex,
      }),
      workgroups: grid2d(blockRows, cols),
    });
  }
  return dx;
}
