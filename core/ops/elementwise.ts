// Element-wise ops: add, mul (same shape, or the second operand broadcast over
// rows), scale, in-place accumulate and fill, and the row sum that the
// broadcast backward needs.
//
// Outputs are f32; inputs may be any dtype. Tensors larger than one binding
// are processed in windows of at most `windowElements` elements.

import { record } from "../autograd.ts";
import { empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import {
  flatIndex,
  grid1d,
  grid2d,
  main1d,
  main2d,
  storage,
  uniforms,
  window,
  windowElements,
} from "../wgsl.ts";
import { gridBlocks, rowBlocks } from "./rows.ts";

// Returns how `b` combines with `a`: the same shape, or `b` repeated every
// `b.numel` elements of `a` when a's trailing dims equal b's shape (a bias or a norm weight).
function broadcastKind(op: string, a: Tensor, b: Tensor): "same" | "rows" {
  if (a.numel === b.numel && a.shape.join() === b.shape.join()) return "same";
  const tail = a.shape.slice(a.shape.length - b.shape.length);
  if (b.shape.length <= a.shape.length && tail.join() === b.shape.join()) return "rows";
  throw new ShapeError(
    `${op}: shapes ${a.shapeString} and ${b.shapeString} do not match and ${b.shapeString} is not a trailing shape of ${a.shapeString}`,
  );
}

const BINARY = { add: "x + y", mul: "x * y" } as const;

// out = a (op) b, with b of a's shape or one row repeated down a viewed as [rows, b.numel].
function binary(op: keyof typeof BINARY, a: Tensor, b: Tensor, kind: "same" | "rows"): Tensor {
  const out = empty(a.shape);
  const label = `${op}(${a.shapeString}, ${b.shapeString})`;
  if (kind === "same") {
    const code = `
struct P { n: u32, oa: u32, ob: u32, oo: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "A", a.dtype)}
${storage(2, "B", b.dtype)}
${storage(3, "O", "f32", "read_write")}
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  let x = ld_A(p.oa + i);
  let y = ld_B(p.ob + i);
  O[p.oo + i] = ${BINARY[op]};
}`;
    const step = windowElements("f32");
    for (let start = 0; start < a.numel; start += step) {
      const n = Math.min(step, a.numel - start);
      const wa = window(a, start, n);
      const wb = window(b, start, n);
      const wo = window(out, start, n);
      gpu().dispatch({
        label,
        code,
        buffers: [wa.binding, wb.binding, wo.binding],
        uniforms: uniforms(n, wa.offset, wb.offset, wo.offset),
        workgroups: grid1d(n),
      });
    }
    return out;
  }

  const cols = b.numel;
  const code = `
struct P { rows: u32, cols: u32, oa: u32, ob: u32, oo: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "A", a.dtype)}
${storage(2, "B", b.dtype)}
${storage(3, "O", "f32", "read_write")}
${main2d()}
  let i = row * p.cols + col;
  let x = ld_A(p.oa + i);
  let y = ld_B(p.ob + col);
  O[p.oo + i] = ${BINARY[op]};
}`;
  const wb = window(b, 0, cols);
  for (const blk of gridBlocks(op, a.numel / Math.max(1, cols), cols)) {
    const wa = window(a, blk.start * cols, blk.count * cols);
    const wo = window(out, blk.start * cols, blk.count * cols);
    gpu().dispatch({
      label,
      code,
      buffers: [wa.binding, wb.binding, wo.binding],
      uniforms: uniforms(blk.count, cols, wa.offset, wb.offset, wo.offset),
      workgroups: grid2d(blk.count, cols),
    });
  }
  return out;
}

/** a + b, with b the same shape or a trailing shape of a (broadcast over rows). */
export function add(a: Tensor, b: Tensor): Tensor {
  const kind = broadcastKind("add", a, b);
  const out = binary("add", a, b, kind);
  record("add", out, [a, b], (dy) => [dy, kind === "same" ? dy : sumRows(dy, b.numel)]);
  return out;
}

/** a ⊙ b, with b the same shape or a trailing shape of a (broadcast over rows). */
export function mul(a: Tensor, b: Tensor): Tensor {
  const kind = broadcastKind("mul", a, b);
  const out = binary("mul", a, b, kind);
  record("mul", out, [a, b], (dy) => {
    const da = a.requiresGrad ? binary("mul", dy, b, kind) : null;
    let db: Tensor | null = null;
    if (b.requiresGrad) {
      const prod = binary("mul", dy, a, "same");
      db = kind === "same" ? prod : sumRows(prod, b.numel);
      if (kind !== "same") prod.dispose();
      db = db.numel === b.numel ? db.reshape([...b.shape]) : db;
    }
    return [da, db];
  });
  return out;
}

/** s · a for a constant s. */
export function scale(a: Tensor, s: number): Tensor {
  const out = empty(a.shape);
  scaleInto(out, a, s);
  record("scale", out, [a], (dy) => {
    const dx = empty(dy.shape);
    scaleInto(dx, dy, s);
    return [dx];
  });
  return out;
}

function scaleInto(out: Tensor, a: Tensor, s: number) {
  const code = `
struct P { n: u32, oa: u32, oo: u32, s: f32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "A", a.dtype)}
${storage(2, "O", "f32", "read_write")}
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  O[p.oo + i] = p.s * ld_A(p.oa + i);
}`;
  const step = windowElements("f32");
  for (let start = 0; start < a.numel; start += step) {
    const n = Math.min(step, a.numel - start);
    const wa = window(a, start, n);
    const wo = window(out, start, n);
    gpu().dispatch({
      label: `scale(${a.shapeString})`,
      code,
      buffers: [wa.binding, wo.binding],
      uniforms: uniforms(n, wa.offset, wo.offset, { f: s }),
      workgroups: grid1d(n),
    });
  }
}

/** dst += src in place (f32 dst, no autograd). Shapes must have equal element counts. */
export function addInto(dst: Tensor, src: Tensor): void {
  if (dst.dtype !== "f32" || dst.numel !== src.numel) {
    throw new ShapeError(
      `addInto: cannot accumulate ${src.dtype} ${src.shapeString} into ${dst.dtype} ${dst.shapeString}`,
    );
  }
  const code = `
struct P { n: u32, os: u32, od: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "S", src.dtype)}
@group(0) @binding(2) var<storage, read_write> D: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  D[p.od + i] = D[p.od + i] + ld_S(p.os + i);
}`;
  const step = windowElements("f32");
  for (let start = 0; start < dst.numel; start += step) {
    const n = Math.min(step, dst.numel - start);
    const ws = window(src, start, n);
    const wd = window(dst, start, n);
    gpu().dispatch({
      label: `addInto(${dst.shapeString})`,
      code,
      buffers: [ws.binding, wd.binding],
      uniforms: uniforms(n, ws.offset, wd.offset),
      workgroups: grid1d(n),
    });
  }
}

/** Sets every element of an f32 tensor to `value` (no autograd). */
export function fillInPlace(t: Tensor, value: number): void {
  if (t.dtype !== "f32") {
    throw new ShapeError(`fill: tensor ${t.name || t.shapeString} is ${t.dtype}; fill takes f32`);
  }
  const code = `
struct P { n: u32, o: u32, v: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> D: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  D[p.o + i] = p.v;
}`;
  const step = windowElements("f32");
  for (let start = 0; start < t.numel; start += step) {
    const n = Math.min(step, t.numel - start);
    const w = window(t, start, n);
    gpu().dispatch({
      label: `fill(${t.shapeString})`,
      code,
      buffers: [w.binding],
      uniforms: uniforms(n, w.offset, { f: value }),
      workgroups: grid1d(n),
    });
  }
}

/**
 * Sums a tensor viewed as [R, C] over its rows: out[c] = Σ_r x[r, c], with
 * C = `cols`. Used by broadcast backward (bias and norm-weight gradients).
 * With `into` (f32, `cols` elements) the sums are added to it and it is returned.
 */
export function sumRows(x: Tensor, cols: number, into?: Tensor): Tensor {
  if (x.numel % cols !== 0) {
    throw new ShapeError(`sumRows: ${x.shapeString} does not split into rows of ${cols}`);
  }
  if (into && (into.dtype !== "f32" || into.numel !== cols)) {
    throw new ShapeError(
      `sumRows: cannot add ${cols} column sums into ${into.dtype} ${into.shapeString}`,
    );
  }
  const rows = x.numel / cols;
  const out = into ?? empty([cols]);
  // One invocation per column, walking the rows: fine for bias-sized outputs.
  // Row blocks keep each window of x within one binding; later blocks add to O.
  const code = `
struct P { rows: u32, cols: u32, ox: u32, first: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
${main1d()} {
  let c = ${flatIndex()};
  if (c >= p.cols) { return; }
  var s = 0.0;
  for (var r = 0u; r < p.rows; r++) { s += ld_X(p.ox + r * p.cols + c); }
  if (p.first == 1u) { O[c] = s; } else { O[c] = O[c] + s; }
}`;
  const blocks = rowBlocks("sumRows", rows, cols, x.dtype);
  blocks.forEach((blk, i) => {
    const wx = window(x, blk.start * cols, blk.count * cols);
    gpu().dispatch({
      label: `sumRows(${rows}x${cols})`,
      code,
      buffers: [wx.binding, out.buffer],
      uniforms: uniforms(blk.count, cols, wx.offset, i === 0 && !into ? 1 : 0),
      workgroups: grid1d(cols),
    });
  });
  return out;
}
