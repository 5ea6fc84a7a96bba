// Building blocks for row ops (softmax, RMSNorm, cross-entropy, reductions):
// one workgroup per row of a [R, C] view, a workgroup-memory tree reduction,
// and row blocks that keep every binding under the binding limit.

import { type DType, gpu, ShapeError } from "../tensor.ts";
import { windowElements } from "../wgsl.ts";

/** Invocations per row workgroup; the tree reductions below assume a power of two. */
export const ROW_WG = 256;

/**
 * Returns the WGSL entry-point header for row kernels dispatched with
 * `grid1d(rows, 1)`. It defines `row` (the row index inside the block) and
 * `lid`, and returns early for padding workgroups. The uniform struct `p` must
 * have a `rows` field.
 */
export function rowMain(): string {
  return `@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.rows) { return; }`;
}

/**
 * WGSL workgroup reductions. Every invocation of the workgroup must call them
 * (they contain barriers), and each ends with a barrier so that the scratch
 * arrays can be reused by the next call.
 *
 * `wg_sum(v, lid)` returns the sum of v over the workgroup.
 * `wg_max_sumexp(m, s, lid)` merges per-invocation pairs (m, s = Σ exp(x − m))
 * into the row's (max, Σ exp(x − max)), the online-softmax combination.
 */
export const WG_REDUCE = `
const ROW_WG: u32 = ${ROW_WG}u;
// Lowest finite f32. Starting maxima here instead of -inf keeps exp(m1 - m2)
// finite when a row has fewer elements than the workgroup has invocations.
const LOWEST: f32 = -3.4028234e38;
var<workgroup> red_a: array<f32, ${ROW_WG}>;
var<workgroup> red_b: array<f32, ${ROW_WG}>;

fn wg_sum(v: f32, lid: u32) -> f32 {
  red_a[lid] = v;
  workgroupBarrier();
  for (var stride = ROW_WG / 2u; stride > 0u; stride = stride >> 1u) {
    if (lid < stride) {
      red_a[lid] = red_a[lid] + red_a[lid + stride];
    }
    workgroupBarrier();
  }
  let total = red_a[0];
  workgroupBarrier();
  return total;
}

fn wg_max_sumexp(m: f32, s: f32, lid: u32) -> vec2<f32> {
  red_a[lid] = m;
  red_b[lid] = s;
  workgroupBarrier();
  for (var stride = ROW_WG / 2u; stride > 0u; stride = stride >> 1u) {
    if (lid < stride) {
      let m1 = red_a[lid];
      let m2 = red_a[lid + stride];
      let mx = max(m1, m2);
      red_b[lid] = red_b[lid] * exp(m1 - mx) + red_b[lid + stride] * exp(m2 - mx);
      red_a[lid] = mx;
    }
    workgroupBarrier();
  }
  let total = vec2<f32>(red_a[0], red_b[0]);
  workgroupBarrier();
  return total;
}

// Adds x to the running pair (m, s = Σ exp(x_i − m)) with one exp per element.
fn online_add(acc: vec2<f32>, x: f32) -> vec2<f32> {
  if (x > acc.x) {
    return vec2<f32>(x, acc.y * exp(acc.x - x) + 1.0);
  }
  return vec2<f32>(acc.x, acc.y + exp(x - acc.x));
}
`;

/** Rows [start, start + count) of a [rows, cols] view that one dispatch handles. */
export interface RowBlock {
  start: number;
  count: number;
}

/**
 * Splits `rows` rows of `cols` elements into blocks whose windows fit one
 * binding and that hold at most `maxRows` rows. `dtype` is the widest dtype
 * among the tensors bound in blocks, f32 by default because op outputs are
 * f32. Throws ShapeError when a single row is larger than a binding.
 */
export function rowBlocks(
  op: string,
  rows: number,
  cols: number,
  dtype: DType = "f32",
  maxRows = Infinity,
): RowBlock[] {
  const perWindow = windowElements(dtype);
  if (cols > perWindow) {
    throw new ShapeError(
      `${op}: a row of ${cols} elements exceeds one storage binding (${perWindow} ${dtype} elements); use a smaller last dimension`,
    );
  }
  const step = Math.min(maxRows, Math.max(1, Math.floor(perWindow / Math.max(1, cols))));
  const blocks: RowBlock[] = [];
  for (let start = 0; start < rows; start += step) {
    blocks.push({ start, count: Math.min(step, rows - start) });
  }
  return blocks;
}

/** Row blocks for `main2d` kernels: within one binding and one grid dimension each. */
export function gridBlocks(op: string, rows: number, cols: number): RowBlock[] {
  return rowBlocks(op, rows, cols, "f32", gpu().limits.maxComputeWorkgroupsPerDimension);
}

/** Splits a tensor's shape into rows and the last dimension, for row ops. */
export function rowsAndCols(shape: readonly number[]): [number, number] {
  const cols = shape.length === 0 ? 1 : shape[shape.length - 1];
  const numel = shape.reduce((a, b) => a * b, 1);
  return [cols === 0 ? 0 : numel / cols, cols];
}
