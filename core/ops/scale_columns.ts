// Column scaling out = x ⊙ s for x [R, C] and s [C] (+ a bias [C]), and its
// backward, as plain kernels without autograd. BPT's diagonals A and B act
// on activations this way: (b ⊙ x) on a linear's input, a ⊙ z on its output.

import { leafGrad } from "../autograd.ts";
import { type DType, empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import { storage, uniforms, vecStorage, window, windowElements } from "../wgsl.ts";
import { sumRows } from "./elementwise.ts";
import { gridBlocks } from "./rows.ts";

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

// scaleColumns' workgroups are 8 column vectors × 8 rows, so that a 128-column
// tensor in vec4 (32 invocations per row) keeps every invocation busy. On
// llvmpipe that ran 1.4× faster than 64 × 1 workgroups, which left half of
// them past the last column.
const WG_X = 8;
const WG_Y = 8;

/** Writes out[i, j] = x[i, j] · s[j] (+ bias[j]) for x and out [R, C] (out f32). */
export function scaleColumns(out: Tensor, x: Tensor, s: Tensor, bias?: Tensor) {
  const [rows, cols] = x.shape;
  const ws = window(s, 0, cols);
  const wbias = bias ? window(bias, 0, cols) : null;
  const blocks = gridBlocks("scaleColumns", rows, cols).map((blk) => ({
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
@compute @workgroup_size(${WG_X}, ${WG_Y})
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
      label: `scaleColumns(${x.shapeString}${bias ? ", bias" : ""})`,
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
      workgroups: [Math.ceil(cols / L.width / WG_X), Math.ceil(blk.count / WG_Y)],
    });
  }
}

// scaleColumnsBackward's workgroups are 8 column vectors × 8 row lanes. Each
// lane walks every 8th row of a chunk of CHUNK_ROWS rows, and the 8 lanes add
// their sums through workgroup memory in a fixed order. When one chunk covers
// all rows (up to 512, as in a 8 × 64-token batch) that sum is final, which
// saves a dispatch per diagonal on adapters where each costs tens of
// microseconds. Longer inputs write one partial row per chunk and a sumRows
// pass adds them in order.
const CHUNK_ROWS = 512;

/**
 * Backward of out = x ⊙ s (s broadcast over the rows of [R, C]) given the
 * upstream gradient g [R, C]: writes dx = g ⊙ s into `dx` (when not null) and
 * returns ds = Σ_rows g ⊙ x, or null when s needs no gradient or ds went into
 * s's leaf gradient (see leafGrad).
 */
export function scaleColumnsBackward(
  g: Tensor,
  x: Tensor,
  s: Tensor,
  dx: Tensor | null,
): Tensor | null {
  const [rows, cols] = g.shape;
  const wantDs = s.requiresGrad;
  if (!wantDs && !dx) return null;
  const ws = window(s, 0, cols);
  const blocks = gridBlocks("scaleColumns", rows, cols).map((blk) => {
    const span = (t: Tensor) => window(t, blk.start * cols, blk.count * cols);
    return {
      count: blk.count,
      groups: Math.ceil(blk.count / CHUNK_ROWS),
      wg: span(g),
      wdx: dx ? span(dx) : null,
      wx: wantDs ? span(x) : null,
    };
  });
  const chunks = blocks.reduce((sum, b) => sum + b.groups, 0);
  const leaf = wantDs ? leafGrad(s) : null;
  // One chunk: the sums go straight into ds (added to the leaf gradient).
  const direct = chunks === 1;
  let ds: Tensor | null = null;
  let sums: Tensor | null = null;
  if (wantDs && direct) sums = leaf ?? (ds = empty([cols]));
  else if (wantDs) sums = empty([chunks, cols], { memoryClass: "scratch" });
  const wsums = sums ? window(sums, 0, sums.numel) : null;
  const vec = vec4Ok(cols, [
    ws.offset,
    wsums?.offset ?? 0,
    ...blocks.flatMap((b) => [b.wg.offset, b.wdx?.offset ?? 0, b.wx?.offset ?? 0]),
  ]);
  const L = lanes(vec);

  // Only the bindings in use are declared: pipelines use "auto" layouts.
  const decls = [L.input(1, "G", g.dtype)];
  if (dx) decls.push(L.input(2, "S", s.dtype), L.output(3, "Dx"));
  if (wantDs) {
    const k = dx ? 4 : 2;
    decls.push(L.input(k, "X", x.dtype), L.output(k + 1, "Sums"));
  }
  const sumsAt = L.at(direct ? "p.osums + col" : "p.osums + wid.y * p.cols + col");
  const reduce = `
  red[lid.y * ${WG_X}u + lid.x] = acc;
  workgroupBarrier();
  if (lid.y == 0u && col < p.cols) {
    var total = red[lid.x];
    for (var j = 1u; j < ${WG_Y}u; j++) { total += red[j * ${WG_X}u + lid.x]; }
    Sums[${sumsAt}] = total${direct && leaf ? ` + Sums[${sumsAt}]` : ""};
  }`;
  const code = `
struct P { rows: u32, cols: u32, og: u32, os: u32, odx: u32, ox: u32, osums: u32 }
@group(0) @binding(0) var<uniform> p: P;
${decls.join("\n")}
${wantDs ? `var<workgroup> red: array<${L.type}, ${WG_X * WG_Y}>;` : ""}
@compute @workgroup_size(${WG_X}, ${WG_Y})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let col = (wid.x * ${WG_X}u + lid.x) * ${L.width}u;
  let r0 = wid.y * ${CHUNK_ROWS}u;
  let rEnd = min(p.rows, r0 + ${CHUNK_ROWS}u);
  var acc = ${L.type}(0.0);
  if (col < p.cols) {
    ${dx ? `let sc = ${L.ld}S(p.os + col);` : ""}
    for (var r = r0 + lid.y; r < rEnd; r += ${WG_Y}u) {
      let i = r * p.cols + col;
      let gi = ${L.ld}G(p.og + i);
      ${dx ? `Dx[${L.at("p.odx + i")}] = gi * sc;` : ""}
      ${wantDs ? `acc += gi * ${L.ld}X(p.ox + i);` : ""}
    }
  }${wantDs ? reduce : ""}
}`;
  let chunk = 0;
  for (const blk of blocks) {
    const buffers: GPUBufferBinding[] = [blk.wg.binding];
    if (blk.wdx) buffers.push(ws.binding, blk.wdx.binding);
    if (blk.wx) buffers.push(blk.wx.binding, wsums!.binding);
    gpu().dispatch({
      label: `scaleColumnsBackward(${g.shapeString})`,
      code,
      buffers,
      uniforms: uniforms(
        blk.count,
        cols,
        blk.wg.offset,
        ws.offset,
        blk.wdx ? blk.wdx.offset : 0,
        blk.wx ? blk.wx.offset : 0,
        (wsums?.offset ?? 0) + (direct ? 0 : chunk * cols),
      ),
      workgroups: [Math.ceil(cols / L.width / WG_X), blk.groups],
    });
    chunk += blk.groups;
  }

  if (!sums || direct) return ds;
  const total = sumRows(sums, cols, leaf ?? undefined);
  sums.dispose();
  return leaf ? null : total;
}

/** One column sum of `columnSums`: Σ_rows g ⊙ x, or Σ_rows g without x, as the gradient of `param`. */
export interface ColumnSum {
  /** [R, C], R shared by every sum of one call. */
  g: Tensor;
  /** [R, C], multiplied into g element by element. */
  x?: Tensor;
  /** The [C] tensor whose gradient the sum is. A sum whose param needs no gradient is skipped. */
  param: Tensor;
}

/**
 * Computes several column sums over the same rows in one pass, such as BPT's
 * da = Σ_rows dy ⊙ z, db = Σ_rows dxb ⊙ x and dbias = Σ_rows dy where its
 * GEMMs cannot take them (GemmOptions.sums). Each sum is added to its param's
 * leaf gradient (and null returned, see leafGrad) or returned as a new [C]
 * tensor. Rows of up to 512 take one dispatch in all, longer inputs one more
 * sumRows per sum. Sums whose inputs exceed one binding, or more sums than
 * the device's storage bindings allow, run as separate kernels.
 */
export function columnSums(sums: readonly ColumnSum[]): (Tensor | null)[] {
  const jobs = sums.filter((s) => s.param.requiresGrad);
  if (jobs.length === 0) return sums.map(() => null);
  const rows = jobs[0].g.shape[0];
  for (const j of jobs) {
    const cols = j.param.numel;
    const bad = j.g.shape.length !== 2 || j.g.shape[0] !== rows || j.g.shape[1] !== cols ||
      (j.x && (j.x.shape.length !== 2 || j.x.shape.join() !== j.g.shape.join()));
    if (bad) {
      throw new ShapeError(
        `columnSums: g ${j.g.shapeString}${
          j.x ? `, x ${j.x.shapeString}` : ""
        } and param ${j.param.shapeString} do not match [${rows}, C] and [C]`,
      );
    }
  }

  const fits = (t: Tensor) => t.numel <= windowElements(t.dtype);
  const limit = gpu().limits.maxStorageBuffersPerShaderStage;
  const results = new Map<ColumnSum, Tensor | null>();
  let group: ColumnSum[] = [];
  let bindings = 0;
  const flush = () => {
    if (group.length > 0) columnSumKernel(rows, group, results);
    group = [];
    bindings = 0;
  };
  for (const j of jobs) {
    if (!fits(j.g) || (j.x && !fits(j.x))) {
      // Row blocks per binding: the one-sum kernels handle them.
      const leaf = leafGrad(j.param);
      const out = j.x
        ? scaleColumnsBackward(j.g, j.x, j.param, null)
        : sumRows(j.g, j.param.numel, leaf ?? undefined);
      results.set(j, leaf ? null : out);
      continue;
    }
    const need = j.x ? 3 : 2;
    if (bindings + need > limit) flush();
    group.push(j);
    bindings += need;
  }
  flush();
  return sums.map((s) => results.get(s) ?? null);
}

// Records one dispatch over `rows` for every sum in `jobs`, all within single bindings.
function columnSumKernel(rows: number, jobs: ColumnSum[], results: Map<ColumnSum, Tensor | null>) {
  const chunks = Math.ceil(rows / CHUNK_ROWS);
  const direct = chunks === 1;
  const plan = jobs.map((j) => {
    const cols = j.param.numel;
    const leaf = leafGrad(j.param);
    let result: Tensor | null = null;
    let target: Tensor;
    if (direct) target = leaf ?? (result = empty([cols]));
    else target = empty([chunks, cols], { memoryClass: "scratch" });
    return {
      job: j,
      cols,
      leaf,
      result,
      target,
      wg: window(j.g, 0, j.g.numel),
      wx: j.x ? window(j.x, 0, j.x.numel) : null,
      wt: window(target, 0, target.numel),
    };
  });
  const vec = plan.every((q) => vec4Ok(q.cols, [q.wg.offset, q.wx?.offset ?? 0, q.wt.offset]));
  const L = lanes(vec);
  const widest = Math.max(...plan.map((q) => q.cols));

  // Bindings per sum: g, then x when given, then the sums.
  const decls: string[] = [];
  const fields: string[] = [];
  const loop: string[] = [];
  const reduce: string[] = [];
  let binding = 1;
  plan.forEach((q, k) => {
    decls.push(L.input(binding++, `G${k}`, q.job.g.dtype));
    if (q.wx) decls.push(L.input(binding++, `X${k}`, q.job.x!.dtype));
    decls.push(L.output(binding++, `S${k}`));
    fields.push(`c${k}: u32, og${k}: u32, ox${k}: u32, os${k}: u32`);
    const term = q.wx
      ? `${L.ld}G${k}(p.og${k} + r * p.c${k} + col) * ${L.ld}X${k}(p.ox${k} + r * p.c${k} + col)`
      : `${L.ld}G${k}(p.og${k} + r * p.c${k} + col)`;
    loop.push(`      if (col < p.c${k}) { acc${k} += ${term}; }`);
    const at = L.at(direct ? `p.os${k} + col` : `p.os${k} + wid.y * p.c${k} + col`);
    reduce.push(`
  red[lid.y * ${WG_X}u + lid.x] = acc${k};
  workgroupBarrier();
  if (lid.y == 0u && col < p.c${k}) {
    var total${k} = red[lid.x];
    for (var j = 1u; j < ${WG_Y}u; j++) { total${k} += red[j * ${WG_X}u + lid.x]; }
    S${k}[${at}] = total${k}${direct && q.leaf ? ` + S${k}[${at}]` : ""};
  }
  workgroupBarrier();`);
  });
  const code = `
struct P { rows: u32, pad0: u32, pad1: u32, pad2: u32, ${fields.join(", ")} }
@group(0) @binding(0) var<uniform> p: P;
${decls.join("\n")}
var<workgroup> red: array<${L.type}, ${WG_X * WG_Y}>;
@compute @workgroup_size(${WG_X}, ${WG_Y})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let col = (wid.x * ${WG_X}u + lid.x) * ${L.width}u;
  let r0 = wid.y * ${CHUNK_ROWS}u;
  let rEnd = min(p.rows, r0 + ${CHUNK_ROWS}u);
  ${plan.map((_, k) => `var acc${k} = ${L.type}(0.0);`).join("\n  ")}
  for (var r = r0 + lid.y; r < rEnd; r += ${WG_Y}u) {
${loop.join("\n")}
  }${reduce.join("")}
}`;

  const buffers: GPUBufferBinding[] = [];
  const values: number[] = [rows, 0, 0, 0];
  for (const q of plan) {
    buffers.push(q.wg.binding);
    if (q.wx) buffers.push(q.wx.binding);
    buffers.push(q.wt.binding);
    values.push(q.cols, q.wg.offset, q.wx?.offset ?? 0, q.wt.offset);
  }
  gpu().dispatch({
    label: `columnSums(${rows}x[${plan.map((q) => q.cols).join(", ")}])`,
    code,
    buffers,
    uniforms: uniforms(...values),
    workgroups: [Math.ceil(widest / L.width / WG_X), chunks],
  });

  for (const q of plan) {
    if (direct) {
      results.set(q.job, q.result);
      continue;
    }
    const total = sumRows(q.target, q.cols, q.leaf ?? undefined);
    q.target.dispose();
    results.set(q.job, q.leaf ? null : total);
  }
}
