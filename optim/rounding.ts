// Stochastic rounding of f32 values into 16-bit floats, driven by a
// counter-based hash so that a run is reproducible: the random bits of an
// element depend only on (seed, parameter, step, element index).
//
// A value x between neighbouring 16-bit values lo < x < hi rounds up with
// probability (x − lo)/(hi − lo), so E[round(x)] = x and updates far below
// half a unit in the last place still move the weight on average.

/**
 * Hashes a 32-bit integer with "lowbias32" (constants 0x7feb352d and
 * 0x846ca68b, from Chris Wellons, "Prospecting for Hash Functions", 2018).
 */
export function hash32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** Key of one parameter's random stream at one optimizer step. */
export function streamKey(seed: number, param: number, step: number): number {
  return hash32(hash32(hash32(seed >>> 0) ^ param) ^ step);
}

/** WGSL `hash32(x)`, the same function as the CPU `hash32`. */
export const HASH_WGSL = `
fn hash32(v: u32) -> u32 {
  var x = v;
  x = x ^ (x >> 16u);
  x = x * 0x7feb352du;
  x = x ^ (x >> 15u);
  x = x * 0x846ca68bu;
  return x ^ (x >> 16u);
}`;

/**
 * WGSL `sround_bf16(x, r) -> u32`: the bf16 bits of x rounded stochastically
 * with the random word r. Adding 16 random bits below the kept 16 and
 * truncating rounds the magnitude up with probability (x − lo)/(hi − lo)
 * exactly, because f32 and bf16 share the exponent field. ±Inf and NaN
 * keep their round-to-nearest-even encoding (needs `BF16_PACK`).
 */
export const SROUND_BF16_WGSL = `
fn sround_bf16(x: f32, r: u32) -> u32 {
  let u = bitcast<u32>(x);
  if ((u & 0x7f800000u) == 0x7f800000u) { return bf16_bits_u(u); }
  return ((u + (r & 0xffffu)) >> 16u) & 0xffffu;
}`;

/**
 * WGSL `sround_f16(x, r) -> f32`: x rounded stochastically onto the f16 grid,
 * returned as an f32 that `pack2x16float` stores exactly. The f16 spacing at
 * |x| is 2^(e − 10) for exponent e ≥ −14 and 2^−24 for subnormals. The round-up
 * probability is compared against 24 random bits, so it is exact to 2^−24.
 * Values beyond the f16 range (|x| > 65504) pass through unchanged.
 */
export const SROUND_F16_WGSL = `
fn sround_f16(x: f32, r: u32) -> f32 {
  let a = abs(x);
  if (!(a <= 65504.0)) { return x; }
  let e = i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127;
  let ulp = exp2(f32(max(e, -14) - 10));
  let scaled = a / ulp;
  let lo = floor(scaled);
  let u = f32(r >> 8u) * (1.0 / 16777216.0);
  let up = select(0.0, 1.0, u < scaled - lo);
  return sign(x) * (lo + up) * ulp;
}`;
