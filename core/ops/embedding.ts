// Token embedding lookup: out[n, :] = table[ids[n], :], with ids [B, T] from
// `fromInt32` and table [V, C] in any dtype. Output and gradient are f32.
//
// The backward pass is a scatter-add, dTable[v, :] = Σ_{n: ids[n] = v} dy[n, :],
// made deterministic without float atomics (WGSL has atomics only for
// integers): the tokens are counting-sorted by (id, n), then one invocation
// per (run of equal ids, column) sums its run in token order. The sort compares
// every pair of tokens in a block, O(N²) integer compares for N tokens.
//
// Tables larger than one binding (a 151,936 x 896 vocabulary is 544 MB in f32)
// are bound in row blocks, and so are the token rows of the output and of dy.

import { leafGrad, record } from "../autograd.ts";
import { type DType, empty, gpu, ShapeError, type Tensor, zeros } from "../tensor.ts";
import { flatIndex, grid1d, main1d, storage, uniforms, type Window, window } from "../wgsl.ts";
import { rowBlocks } from "./rows.ts";

// Invocations per workgroup of the rank kernel, which also is its tile of ids.
const RANK_WG = 256;

/**
 * Looks up `ids` (any shape, i32 from `fromInt32`) in `table` [V, C] and
 * returns [...ids.shape, C]. Ids outside [0, V) give rows of NaN, so that a
 * bad token shows up in the loss, and get no gradient.
 */
export function embedding(ids: Tensor, table: Tensor): Tensor {
  if (table.shape.length !== 2) {
    throw new ShapeError(`embedding: table ${table.shapeString} must be [V, C]`);
  }
  const [vocab, cols] = table.shape;
  const tokens = ids.numel;
  const out = empty([...ids.shape, cols]);

  const code = `
struct P { n: u32, cols: u32, vstart: u32, vcount: u32, vocab: u32, oids: u32, otab: u32, oout: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> IDS: array<i32>;
${storage(2, "TAB", table.dtype)}
@group(0) @binding(3) var<storage, read_write> OUT: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  let tok = i / p.cols;
  let c = i % p.cols;
  let id = IDS[p.oids + tok];
  if (id < 0 || id >= i32(p.vocab)) {
    // The first table block writes NaN for invalid ids; no block owns them.
    if (p.vstart == 0u) {
      OUT[p.oout + i] = bitcast<f32>(0x7fc00000u);
    }
    return;
  }
  let v = u32(id);
  if (v < p.vstart || v - p.vstart >= p.vcount) { return; }
  OUT[p.oout + i] = ld_TAB(p.otab + (v - p.vstart) * p.cols + c);
}`;
  const tableBlocks = rowBlocks("embedding", vocab, cols, table.dtype);
  for (const tb of rowBlocks("embedding", tokens, cols)) {
    const wids = window(ids, tb.start, tb.count);
    const wout = window(out, tb.start * cols, tb.count * cols);
    for (const vb of tableBlocks) {
      const wtab = window(table, vb.start * cols, vb.count * cols);
      const n = tb.count * cols;
      gpu().dispatch({
        label: `embedding(${ids.shapeString} in ${vocab}x${cols})`,
        code,
        buffers: [wids.binding, wtab.binding, wout.binding],
        uniforms: uniforms(
          n,
          cols,
          vb.start,
          vb.count,
          vocab,
          wids.offset,
          wtab.offset,
          wout.offset,
        ),
        workgroups: grid1d(n),
      });
    }
  }

  record(
    "embedding",
    out,
    [ids, table],
    (dy) => {
      if (!table.requiresGrad) return [null, null];
      // A leaf table's gradient is summed straight into its .grad: for Qwen2.5-0.5B
      // a separate gradient would be another 519 MiB for the step.
      const leaf = leafGrad(table);
      const dtable = embeddingBackward(ids, dy, vocab, cols, leaf ?? zeros([vocab, cols]));
      return [null, leaf ? null : dtable];
    },
  );
  return out;
}

// Adds the rows of dy into dtable [vocab, cols] at their token ids, and returns dtable.
function embeddingBackward(
  ids: Tensor,
  dy: Tensor,
  vocab: number,
  cols: number,
  dtable: Tensor,
): Tensor {
  const tableBlocks = rowBlocks("embedding_backward", vocab, cols);
  for (const tb of rowBlocks("embedding_backward", ids.numel, cols)) {
    const wids = window(ids, tb.start, tb.count);
    const sorted = sortTokens(wids, tb.count);
    const wdy = window(dy, tb.start * cols, tb.count * cols);
    for (const vb of tableBlocks) {
      scatterAdd(dtable, wids, sorted, wdy, dy.dtype, tb.count, vb.start, vb.count, vocab, cols);
    }
    sorted.dispose();
  }
  return dtable;
}

// Returns the local token indices 0..count-1 of a block sorted by (id, index):
// the rank of token n is #{m: id_m < id_n} + #{m < n: id_m = id_n}, unique,
// so SORTED[rank] = n is a permutation. Ids are compared in workgroup tiles.
function sortTokens(wids: Window, count: number): Tensor {
  const sorted = empty([count], { name: "embedding.sorted" });
  const code = `
struct P { n: u32, oids: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> IDS: array<i32>;
@group(0) @binding(2) var<storage, read_write> SORTED: array<u32>;
var<workgroup> tile: array<i32, ${RANK_WG}>;
@compute @workgroup_size(${RANK_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let n = gid.x + gid.y * nwg.x * ${RANK_WG}u;
  let valid = n < p.n;
  var mine = 0;
  if (valid) {
    mine = IDS[p.oids + n];
  }
  var rank = 0u;
  for (var base = 0u; base < p.n; base += ${RANK_WG}u) {
    if (base + lid < p.n) {
      tile[lid] = IDS[p.oids + base + lid];
    }
    workgroupBarrier();
    let size = min(${RANK_WG}u, p.n - base);
    for (var k = 0u; k < size; k++) {
      let other = tile[k];
      if (other < mine || (other == mine && base + k < n)) {
        rank++;
      }
    }
    workgroupBarrier();
  }
  if (valid) {
    SORTED[rank] = n;
  }
}`;
  gpu().dispatch({
    label: `embedding_sort(${count})`,
    code,
    buffers: [wids.binding, sorted.buffer],
    uniforms: uniforms(count, wids.offset),
    workgroups: grid1d(count, RANK_WG),
  });
  return sorted;
}

// dtable[v] += Σ dy[n] over the block's tokens with id v, for v in the table
// block [vstart, vstart + vcount). The invocation at the start of each run of
// equal ids in SORTED sums the run; the others return at once.
function scatterAdd(
  dtable: Tensor,
  wids: Window,
  sorted: Tensor,
  wdy: Window,
  dyType: DType,
  tokens: number,
  vstart: number,
  vcount: number,
  vocab: number,
  cols: number,
) {
  const wdt = window(dtable, vstart * cols, vcount * cols);
  const code = `
struct P { n: u32, cols: u32, tokens: u32, vstart: u32, vcount: u32, vocab: u32, oids: u32, ody: u32, odt: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> IDS: array<i32>;
@group(0) @binding(2) var<storage, read> SORTED: array<u32>;
${storage(3, "DY", dyType)}
@group(0) @binding(4) var<storage, read_write> DT: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  let s = i / p.cols;
  let c = i % p.cols;
  let id = IDS[p.oids + SORTED[s]];
  if (id < 0 || id >= i32(p.vocab)) { return; }
  let v = u32(id);
  if (v < p.vstart || v - p.vstart >= p.vcount) { return; }
  if (s > 0u && IDS[p.oids + SORTED[s - 1u]] == id) { return; }
  var acc = 0.0;
  for (var k = s; k < p.tokens; k++) {
    let tok = SORTED[k];
    if (IDS[p.oids + tok] != id) { break; }
    acc += ld_DY(p.ody + tok * p.cols + c);
  }
  let j = p.odt + (v - p.vstart) * p.cols + c;
  DT[j] = DT[j] + acc;
}`;
  const n = tokens * cols;
  gpu().dispatch({
    label: `embedding_backward(${tokens} tokens, ${vocab}x${cols})`,
    code,
    buffers: [wids.binding, sorted.buffer, wdy.binding, wdt.binding],
    uniforms: uniforms(n, cols, tokens, vstart, vcount, vocab, wids.offset, wdy.offset, wdt.offset),
    workgroups: grid1d(n),
  });
}
