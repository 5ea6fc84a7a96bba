// Conversion between storage dtypes. f32 → bf16 rounds to nearest even on the
// bit pattern (NaN stays a quiet NaN, ±Inf stays ±Inf, subnormals are kept);
// f32 → f16 uses WGSL's pack2x16float. Each invocation writes one u32 word, so
// two neighbouring elements never race on a shared word.

import { record } from "../autograd.ts";
import { type DType, empty, gpu, type Tensor } from "../tensor.ts";
import {
  BF16_PACK,
  flatIndex,
  grid1d,
  main1d,
  storage,
  uniforms,
  window,
  windowElements,
} from "../wgsl.ts";

/** Returns `x` converted to `dtype` (a new tensor; the gradient flows back as f32). */
export function cast(x: Tensor, dtype: DType): Tensor {
  const out = empty(x.shape, { dtype });
  if (dtype === "f32") toF32(x, out);
  else to16(x, out, dtype);
  record("cast", out, [x], (dy) => [dy]);
  return out;
}

function toF32(x: Tensor, out: Tensor) {
  const code = `
struct P { n: u32, ox: u32, oo: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  O[p.oo + i] = ld_X(p.ox + i);
}`;
  const step = windowElements("f32") & ~1;
  for (let start = 0; start < x.numel; start += step) {
    const n = Math.min(step, x.numel - start);
    const wx = window(x, start, n);
    const wo = window(out, start, n);
    gpu().dispatch({
      label: `cast(${x.shapeString} ${x.dtype}→f32)`,
      code,
      buffers: [wx.binding, wo.binding],
      uniforms: uniforms(n, wx.offset, wo.offset),
      workgroups: grid1d(n),
    });
  }
}

function to16(x: Tensor, out: Tensor, dtype: "bf16" | "f16") {
  // The source is read as raw bits when f32, so subnormals survive any
  // flush-to-zero in float loads.
  const src = x.dtype === "f32"
    ? `@group(0) @binding(1) var<storage, read> X: array<u32>;
fn bits_X(i: u32) -> u32 { return X[i]; }`
    : `${storage(1, "X", x.dtype)}
fn bits_X(i: u32) -> u32 { return bitcast<u32>(ld_X(i)); }`;
  const pack = dtype === "bf16"
    ? "bf16_bits_u(lo) | (bf16_bits_u(hi) << 16u)"
    : "pack2x16float(vec2<f32>(bitcast<f32>(lo), bitcast<f32>(hi)))";
  const code = `
struct P { n: u32, ox: u32, ow: u32 }
@group(0) @binding(0) var<uniform> p: P;
${src}
@group(0) @binding(2) var<storage, read_write> O: array<u32>;
${BF16_PACK}
${main1d()} {
  let w = ${flatIndex()};
  let i = 2u * w;
  if (i >= p.n) { return; }
  let lo = bits_X(p.ox + i);
  var hi = 0u;
  if (i + 1u < p.n) { hi = bits_X(p.ox + i + 1u); }
  O[p.ow + w] = ${pack};
}`;
  const step = windowElements("f32") & ~1;
  for (let start = 0; start < x.numel; start += step) {
    const n = Math.min(step, x.numel - start);
    const wx = window(x, start, n);
    const wo = window(out, start, n);
    gpu().dispatch({
      label: `cast(${x.shapeString} ${x.dtype}→${dtype})`,
      code,
      buffers: [wx.binding, wo.binding],
      uniforms: uniforms(n, wx.offset, wo.offset / 2),
      workgroups: grid1d(Math.ceil(n / 2)),
    });
  }
}
