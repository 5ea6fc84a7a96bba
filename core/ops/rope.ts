// Rotary position embedding (RoPE) in the rotate-half layout of transformers'
// Qwen2 and OLMo-2 models: for head_dim D, element i pairs with i + D/2 and
// the pair rotates by the angle pos · θ^(−2i/D), i < D/2:
//
//   y[i]       = x[i] · cos − x[i + D/2] · sin
//   y[i + D/2] = x[i + D/2] · cos + x[i] · sin
//
// The backward pass is the inverse rotation (sin negated). Inverse frequencies
// θ^(−2i/D) are computed on the CPU in f64, rounded to f32, and passed as
// uniforms. The angle is the f32 product pos · inv_freq, as in transformers'
// rotary embedding, then reduced to [−π, π] before sin and cos because WGSL
// bounds their error only on that interval.

import { record } from "../autograd.ts";
import { empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import { flatIndex, grid1d, main1d, storage, uniforms, window } from "../wgsl.ts";
import { rowBlocks } from "./rows.ts";

// 2π = TWO_PI_A + TWO_PI_B + TWO_PI_C (Cody-Waite reduction). A and B have 10
// significant bits, so k · A and k · B are exact f32 products for |k| < 2^14,
// that is for angles up to about 1.0e5 rad; C is the f32 rounding of the rest.
const ANGLE_REDUCTION = `
const INV_TWO_PI: f32 = 0.15915493667125702;
const TWO_PI_A: f32 = 6.28125;
const TWO_PI_B: f32 = 0.0019359588623046875;
const TWO_PI_C: f32 = -6.516827397717861e-7;
fn reduce_angle(a: f32) -> f32 {
  let k = round(a * INV_TWO_PI);
  return ((a - k * TWO_PI_A) - k * TWO_PI_B) - k * TWO_PI_C;
}`;

/**
 * Rotates the query or key heads x [B, T, H, D] by their positions
 * `positionOffset + t`, with base `theta` (1e6 in Qwen2.5, 5e5 in OLMo-2).
 */
export function rope(x: Tensor, theta: number, positionOffset = 0): Tensor {
  if (x.shape.length !== 4 || x.shape[3] === 0 || x.shape[3] % 2 !== 0) {
    throw new ShapeError(
      `rope: input ${x.shapeString} must be [B, T, H, D] with an even head dimension D > 0`,
    );
  }
  if (!(theta > 0)) throw new RangeError(`rope: theta ${theta} must be a positive number`);
  if (!Number.isInteger(positionOffset) || positionOffset < 0) {
    throw new RangeError(`rope: position offset ${positionOffset} must be an integer ≥ 0`);
  }
  // NOTE: the angle reduction is exact below about 1e5 rad, which position 1e5
  // reaches at the highest frequency. Beyond that, and beyond position 2^24
  // where f32 stops representing integers, rotations lose accuracy.

  const out = empty(x.shape);
  rotate(out, x, theta, positionOffset, 1);
  record("rope", out, [x], (dy) => {
    const dx = empty(x.shape);
    rotate(dx, dy, theta, positionOffset, -1);
    return [dx];
  });
  return out;
}

// out = rotation of x by sign · angle; sign −1 is the inverse rotation.
function rotate(out: Tensor, x: Tensor, theta: number, positionOffset: number, sign: 1 | -1) {
  const [, seq, heads, dim] = x.shape;
  const half = dim / 2;
  const invFreq: number[] = [];
  for (let i = 0; i < half; i++) invFreq.push(Math.fround(1 / Math.pow(theta, (2 * i) / dim)));
  const vec4s = Math.max(1, Math.ceil(half / 4));

  const code = `
struct P {
  n: u32, half: u32, heads: u32, seq: u32,
  row_start: u32, pos_offset: u32, ox: u32, oy: u32,
  sign: f32, pad0: u32, pad1: u32, pad2: u32,
  inv_freq: array<vec4<f32>, ${vec4s}>,
}
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "X", x.dtype)}
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
${ANGLE_REDUCTION}
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  let row = i / p.half;
  let j = i % p.half;
  let t = ((p.row_start + row) / p.heads) % p.seq;
  let angle = f32(p.pos_offset + t) * p.inv_freq[j / 4u][j % 4u];
  let r = reduce_angle(angle);
  let c = cos(r);
  let s = p.sign * sin(r);
  let lo = row * 2u * p.half + j;
  let hi = lo + p.half;
  let x1 = ld_X(p.ox + lo);
  let x2 = ld_X(p.ox + hi);
  Y[p.oy + lo] = x1 * c - x2 * s;
  Y[p.oy + hi] = x2 * c + x1 * s;
}`;
  const rows = x.numel / dim;
  const label = sign > 0 ? "rope" : "rope_backward";
  for (const { start, count } of rowBlocks(label, rows, dim)) {
    const wx = window(x, start * dim, count * dim);
    const wy = window(out, start * dim, count * dim);
    const n = count * half;
    gpu().dispatch({
      label: `${label}(${x.shapeString})`,
      code,
      buffers: [wx.binding, wy.binding],
      uniforms: uniforms(
        n,
        half,
        heads,
        seq,
        start,
        positionOffset,
        wx.offset,
        wy.offset,
        { f: sign },
        0,
        0,
        0,
        ...invFreq.map((v) => ({ f: v })),
      ),
      workgroups: grid1d(n),
    });
  }
}
