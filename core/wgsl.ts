// WGSL snippets shared by the kernels: typed storage bindings with f32 load
// functions, bf16 rounding, and binding windows for tensors larger than one
// binding may cover.

import { type DType, gpu, type Tensor } from "./tensor.ts";

/**
 * Declares storage binding `binding` named `name` and a function `ld_<name>(i: u32) -> f32`
 * that reads element i whatever the dtype (bf16/f16 are packed two per u32).
 */
export function storage(
  binding: number,
  name: string,
  dtype: DType,
  access: "read" | "read_write" = "read",
): string {
  if (dtype === "f32") {
    return `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<f32>;
fn ld_${name}(i: u32) -> f32 { return ${name}[i]; }`;
  }
  const load = dtype === "bf16"
    ? `let w = ${name}[i >> 1u];
  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));`
    : `return unpack2x16float(${name}[i >> 1u])[i & 1u];`;
  return `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<u32>;
fn ld_${name}(i: u32) -> f32 {
  ${load}
}`;
}

/**
 * Declares read-only storage binding `binding` named `name` and a function
 * `lv_<name>(e: u32) -> vec4<f32>` that reads elements e..e+3 (e a multiple of 4).
 */
export function vecStorage(binding: number, name: string, dtype: DType): string {
  if (dtype === "f32") {
    return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec4<f32>>;
fn lv_${name}(e: u32) -> vec4<f32> { return ${name}[e >> 2u]; }`;
  }
  const unpack = dtype === "bf16"
    ? `vec4<f32>(bitcast<f32>(w.x << 16u), bitcast<f32>(w.x & 0xffff0000u), bitcast<f32>(w.y << 16u), bitcast<f32>(w.y & 0xffff0000u))`
    : `vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y))`;
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec2<u32>>;
fn lv_${name}(e: u32) -> vec4<f32> {
  let w = ${name}[e >> 2u];
  return ${unpack};
}`;
}

/**
 * WGSL functions `bf16_bits(x) -> u32` (round to nearest even; NaN stays a quiet
 * NaN, ±Inf stays ±Inf) and `pack_bf16(lo, hi) -> u32`. They work on the bit
 * pattern, so subnormal inputs are not flushed by float arithmetic.
 */
export const BF16_PACK = `
fn bf16_bits_u(u: u32) -> u32 {
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0u) {
    return ((u >> 16u) | 0x40u) & 0xffffu;
  }
  return ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 0xffffu;
}
fn bf16_bits(x: f32) -> u32 { return bf16_bits_u(bitcast<u32>(x)); }
fn pack_bf16(lo: f32, hi: f32) -> u32 { return bf16_bits(lo) | (bf16_bits(hi) << 16u); }
`;

/** WGSL function `pack_16(lo, hi, dtype)` for the given 16-bit dtype. */
export function pack16(dtype: "bf16" | "f16"): string {
  return dtype === "bf16"
    ? `${BF16_PACK}\nfn pack_16(lo: f32, hi: f32) -> u32 { return pack_bf16(lo, hi); }`
    : `fn pack_16(lo: f32, hi: f32) -> u32 { return pack2x16float(vec2<f32>(lo, hi)); }`;
}

/** Workgroup counts for `n` invocations of size `wg`, folded into y past the per-dimension limit. */
export function grid1d(n: number, wg = 256): [number, number] {
  const groups = Math.max(1, Math.ceil(n / wg));
  const maxX = gpu().limits.maxComputeWorkgroupsPerDimension;
  const x = Math.min(groups, maxX);
  return [x, Math.ceil(groups / x)];
}

/** WGSL expression for the flat invocation index under `grid1d` (needs `gid` and `nwg` builtins). */
export function flatIndex(wg = 256): string {
  return `(gid.x + gid.y * nwg.x * ${wg}u)`;
}

/** Entry-point header for 1-D kernels dispatched with `grid1d`. */
export function main1d(wg = 256): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>)`;
}

/** Invocations per workgroup of `main2d` kernels, all along a row. */
export const WG_2D = 64;

/**
 * Entry-point header for kernels over a [rows, cols] view dispatched with
 * `grid2d`: it defines `row` and `col` and returns early past the edges
 * (the uniform struct `p` needs `rows` and `cols` fields). Computing the
 * column as `i % cols` instead costs an integer division per element, which
 * CPU adapters such as llvmpipe run one SIMD lane at a time.
 */
export function main2d(): string {
  return `@compute @workgroup_size(${WG_2D})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x;
  let row = gid.y;
  if (col >= p.cols || row >= p.rows) { return; }`;
}

/**
 * WGSL lines that find the job of a batched dispatch that this workgroup
 * belongs to: they define `group` (the flat workgroup index) and `j`, the last
 * job whose `first` workgroup is ≤ group, and return past the last workgroup.
 * `u` names a uniform struct with fields `count`, `groups` and
 * `jobs: array<Job, N>`, where Job has a `first` field. The entry point needs
 * the `wid` and `nwg` builtins.
 */
export function batchedJob(u: string): string {
  return `  let group = wid.x + wid.y * nwg.x;
  if (group >= ${u}.groups) { return; }
  var j = 0u;
  for (var q = 1u; q < ${u}.count; q++) {
    if (group >= ${u}.jobs[q].first) { j = q; }
  }`;
}

/** Workgroup counts for `main2d` over `rows` (at most maxComputeWorkgroupsPerDimension) × `cols`. */
export function grid2d(rows: number, cols: number): [number, number] {
  return [Math.max(1, Math.ceil(cols / WG_2D)), Math.max(1, rows)];
}

/** A storage binding covering elements [start, start + count) of a tensor. */
export interface Window {
  binding: GPUBufferBinding;
  /** Element index of `start` inside the bound range (the range starts 256-byte aligned). */
  offset: number;
}

/** Binds elements [start, start + count) of `t`, aligning the range start down to the device's offset alignment. */
export function window(t: Tensor, start: number, count: number): Window {
  const align = gpu().limits.minStorageBufferOffsetAlignment;
  const perWord = t.dtype === "f32" ? 1 : 2;
  const startByte = Math.floor(start / perWord) * 4;
  const alignedByte = Math.floor(startByte / align) * align;
  const endByte = Math.ceil((start + count) / perWord) * 4;
  const size = Math.max(4, Math.min(endByte, t.buffer.size) - alignedByte);
  return {
    binding: { buffer: t.buffer, offset: alignedByte, size },
    offset: start - (alignedByte / 4) * perWord,
  };
}

/** Elements of `dtype` that fit in one binding window, with room for the alignment slack. */
export function windowElements(dtype: DType): number {
  const g = gpu();
  const bytes = g.bindingLimit - g.limits.minStorageBufferOffsetAlignment - 4;
  return dtype === "f32" ? Math.floor(bytes / 4) : Math.floor(bytes / 4) * 2;
}

/** Packs u32/f32/i32 fields into uniform bytes (`u:` prefix u32, `f:` f32, `i:` i32 by default u32). */
export function uniforms(...fields: (number | { f: number } | { i: number })[]): Uint32Array {
  const words = new Uint32Array(Math.max(4, Math.ceil(fields.length / 4) * 4));
  const f32 = new Float32Array(words.buffer);
  const i32 = new Int32Array(words.buffer);
  fields.forEach((v, k) => {
    if (typeof v === "number") words[k] = v;
    else if ("f" in v) f32[k] = v.f;
    else i32[k] = v.i;
  });
  return words;
}
