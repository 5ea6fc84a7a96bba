// Seeded random tensors.
//
// Values are drawn on the CPU from a counter-based generator (element i's
// value depends only on the seed and i) and uploaded in chunks. Generating on
// the CPU makes the same seed give the same bits on every adapter: WGSL's
// log/cos/sqrt precision varies between GPUs, JavaScript's does not within V8.

import { f32ToBf16, f32ToF16, Tensor, type TensorOptions, writeBytes } from "./tensor.ts";

// 32-bit avalanche mix (the finaliser of MurmurHash3, constants from its public description).
function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Uniform u32 for (seed, counter). */
export function hash2(seed: number, counter: number): number {
  return mix(mix(seed ^ 0x9e3779b9) ^ mix(counter + 0x632be5ab));
}

/** Uniform in (0, 1) with 24 random bits for (seed, counter); never 0 so log() is finite. */
export function uniform01(seed: number, counter: number): number {
  return ((hash2(seed, counter) >>> 8) + 0.5) / 16777216;
}

/** Standard normal for (seed, i), Box–Muller on the pair that element i belongs to. */
export function normalAt(seed: number, i: number): number {
  const pair = Math.floor(i / 2);
  const u1 = uniform01(seed, 2 * pair);
  const u2 = uniform01(seed, 2 * pair + 1);
  const r = Math.sqrt(-2 * Math.log(u1));
  const angle = 2 * Math.PI * u2;
  return i % 2 === 0 ? r * Math.cos(angle) : r * Math.sin(angle);
}

// Elements generated per upload: 4 M values, 16 MB as f32.
const CHUNK = 1 << 22;

function fill(t: Tensor, value: (i: number) => number) {
  const isF32 = t.dtype === "f32";
  const convert = t.dtype === "bf16" ? f32ToBf16 : f32ToF16;
  for (let start = 0; start < t.numel; start += CHUNK) {
    const n = Math.min(CHUNK, t.numel - start);
    let bytes: Uint8Array<ArrayBuffer>;
    if (isF32) {
      const f = new Float32Array(n);
      for (let k = 0; k < n; k++) f[k] = value(start + k);
      bytes = new Uint8Array(f.buffer);
    } else {
      // CHUNK is even, so every chunk starts on a word boundary.
      const w = new Uint16Array(n + (n % 2));
      for (let k = 0; k < n; k++) w[k] = convert(value(start + k));
      bytes = new Uint8Array(w.buffer);
    }
    const perWord = isF32 ? 1 : 2;
    writeBytes(t.buffer, (start / perWord) * 4, bytes);
  }
}

/** Normal(mean, std²) values; the same seed gives the same tensor on every adapter. */
export function randn(
  shape: readonly number[],
  opts: TensorOptions & { seed: number; mean?: number; std?: number },
): Tensor {
  const t = new Tensor(shape, opts);
  const mean = opts.mean ?? 0;
  const std = opts.std ?? 1;
  fill(t, (i) => mean + std * normalAt(opts.seed, i));
  return t;
}

/** Uniform values in [low, high); the same seed gives the same tensor on every adapter. */
export function rand(
  shape: readonly number[],
  opts: TensorOptions & { seed: number; low?: number; high?: number },
): Tensor {
  const t = new Tensor(shape, opts);
  const low = opts.low ?? 0;
  const high = opts.high ?? 1;
  fill(t, (i) => low + (high - low) * ((hash2(opts.seed, i) >>> 8) / 16777216));
  return t;
}
