// WGSL for the AdamW update and the f32 master-copy load.
//
// Each invocation updates one pair of elements (2k, 2k+1), so a packed 16-bit
// word is written by exactly one invocation whatever the dtypes of parameter
// and state. Binding windows therefore start at even element indices.

import type { DType } from "../core/tensor.ts";
import { batchedJob, BF16_PACK, flatIndex, main1d, storage } from "../core/wgsl.ts";
import { HASH_WGSL, SROUND_BF16_WGSL, SROUND_F16_WGSL } from "./rounding.ts";

/**
 * Write rule for a parameter's new value. f32 parameters use `f32`. 16-bit
 * parameters use `master` (an f32 copy, rounded to nearest into the
 * parameter), `stochastic` or `nearest` (round-to-nearest-even).
 */
export type WriteMode = "f32" | "master" | "stochastic" | "nearest";

/**
 * Uniform layout of one job (one binding window of one parameter) of an
 * update kernel, 64 bytes. `first` is the job's first workgroup in the dispatch.
 */
export const UPDATE_STRUCT = `struct U {
  n: u32, op: u32, og: u32, os: u32, ow: u32, base: u32, key: u32, first: u32,
  stepSize: f32, b1: f32, b2: f32, eps: f32, decayMul: f32, bc2Sqrt: f32, omb1: f32, omb2: f32,
}`;

/** Values of one job of an update dispatch, in `UPDATE_STRUCT` order. */
export interface UpdateUniforms {
  /** Elements in this window. */
  n: number;
  /** Window-relative offsets of parameter, gradient, state (m and v share it) and master. */
  op: number;
  og: number;
  os: number;
  ow: number;
  /** Element index of the window start inside the parameter, for the random stream. */
  base: number;
  /** Random-stream key of this parameter and step (stochastic mode only). */
  key: number;
  /** lr / (1 − β1^t). */
  stepSize: number;
  b1: number;
  b2: number;
  eps: number;
  /** 1 − lr·wd for decayed parameters, 1 otherwise. */
  decayMul: number;
  /** √(1 − β2^t). */
  bc2Sqrt: number;
}

/** Returns the workgroups of one job of n elements; each invocation updates two. */
export function updateWorkgroups(n: number): number {
  return Math.max(1, Math.ceil(n / 2 / UPDATE_WG));
}

const UPDATE_WG = 256;

/**
 * Packs the uniforms of a dispatch of `jobs`: a 16-byte header (job count,
 * total workgroups) and 16 words per job, whose `first` fields are filled in.
 */
export function updateUniforms(jobs: readonly UpdateUniforms[]): Uint32Array {
  const words = new Uint32Array(4 + 16 * jobs.length);
  const floats = new Float32Array(words.buffer);
  let groups = 0;
  jobs.forEach((u, j) => {
    const o = 4 + 16 * j;
    words.set([u.n, u.op, u.og, u.os, u.ow, u.base, u.key >>> 0, groups], o);
    floats.set(
      [u.stepSize, u.b1, u.b2, u.eps, u.decayMul, u.bc2Sqrt, 1 - u.b1, 1 - u.b2],
      o + 8,
    );
    groups += updateWorkgroups(u.n);
  });
  words.set([jobs.length, groups], 0);
  return words;
}

/** Returns the bindings per job: parameter, gradient, m and v, and the master copy in master mode. */
export function bindingsPerJob(mode: WriteMode): number {
  return mode === "master" ? 5 : 4;
}

// WGSL statement that stores the pair (a, b) at element index `index` of
// binding `name`. When the pair has only one element, an f32 store drops b and
// a 16-bit store keeps the old high half of the word.
function storePair(name: string, dtype: DType, index: string, a: string, b: string): string {
  if (dtype === "f32") {
    return `${name}[${index}] = ${a};
  if (two) { ${name}[${index} + 1u] = ${b}; }`;
  }
  const hi = `select(ld_${name}(${index} + 1u), ${b}, two)`;
  return dtype === "bf16"
    ? `${name}[(${index}) >> 1u] = pack_bf16(${a}, ${hi});`
    : `${name}[(${index}) >> 1u] = pack2x16float(vec2<f32>(${a}, ${hi}));`;
}

function storeParamStochastic(dtype: DType, P: string): string {
  const random = `let r0 = hash32(hash32(u.base + i) ^ u.key);
  let r1 = hash32(hash32(u.base + i + 1u) ^ u.key);`;
  if (dtype === "bf16") {
    return `${random}
  let old = ${P}[(u.op + i) >> 1u];
  let hi = select(old >> 16u, sround_bf16(b.p, r1), two);
  ${P}[(u.op + i) >> 1u] = sround_bf16(a.p, r0) | (hi << 16u);`;
  }
  return `${random}
  let hi = select(ld_${P}(u.op + i + 1u), sround_f16(b.p, r1), two);
  ${P}[(u.op + i) >> 1u] = pack2x16float(vec2<f32>(sround_f16(a.p, r0), hi));`;
}

// Bindings and update function `update<k>(u, i, two, scale)` of job k, whose
// bindings start at `first`: parameter, gradient, m, v, then the master copy.
function jobCode(
  k: number,
  first: number,
  param: DType,
  grad: DType,
  state: DType,
  mode: WriteMode,
): string {
  const [P, G, M, V, W] = ["P", "G", "M", "V", "W"].map((x) => `${x}${k}`);
  const loadP = mode === "master" ? `${W}[u.ow + i]` : `ld_${P}(u.op + i)`;
  let storeP: string;
  if (mode === "stochastic") storeP = storeParamStochastic(param, P);
  else storeP = storePair(P, param, "u.op + i", "a.p", "b.p");
  if (mode === "master") storeP = `${storePair(W, "f32", "u.ow + i", "a.p", "b.p")}\n  ${storeP}`;

  return `
${storage(first, P, param, "read_write")}
${storage(first + 1, G, grad)}
${storage(first + 2, M, state, "read_write")}
${storage(first + 3, V, state, "read_write")}
${
    mode === "master"
      ? `@group(0) @binding(${first + 4}) var<storage, read_write> ${W}: array<f32>;`
      : ""
  }

fn adam${k}(u: U, i: u32, scale: f32) -> Step {
  let g = ld_${G}(u.og + i) * scale;
  let p = ${loadP} * u.decayMul;
  let m = u.b1 * ld_${M}(u.os + i) + u.omb1 * g;
  let v = u.b2 * ld_${V}(u.os + i) + u.omb2 * g * g;
  return Step(p - u.stepSize * m / (sqrt(v) / u.bc2Sqrt + u.eps), m, v);
}

fn update${k}(u: U, i: u32, two: bool, scale: f32) {
  let a = adam${k}(u, i, scale);
  var b = a;
  if (two) { b = adam${k}(u, i + 1u, scale); }
  ${storePair(M, state, "u.os + i", "a.m", "b.m")}
  ${storePair(V, state, "u.os + i", "a.v", "b.v")}
  ${storeP}
}`;
}

/**
 * Returns the AdamW kernel for `jobs` parameter windows (1 or more) that share
 * parameter, gradient and state dtypes and write mode. Bindings: per job
 * `bindingsPerJob(mode)` from binding 1 (parameter, gradient, m, v, master
 * copy), then the gradient scale (f32 scalar). Workgroups run job by job:
 * workgroup g belongs to the last job whose `first` is ≤ g.
 *
 * Per element, following PyTorch's AdamW (torch.optim.AdamW, PyTorch 2.x):
 *   g ← g·scale;  p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
 *   p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε).
 * The update uses m and v in f32 before they are rounded to the state dtype.
 */
export function updateCode(
  param: DType,
  grad: DType,
  state: DType,
  mode: WriteMode,
  jobs = 1,
): string {
  const usesBf16 = param === "bf16" || state === "bf16";
  const per = bindingsPerJob(mode);
  const code = Array.from(
    { length: jobs },
    (_, k) => jobCode(k, 1 + k * per, param, grad, state, mode),
  );
  const calls = jobs === 1
    ? "update0(u, i, two, scale);"
    : `switch j {${
      Array.from({ length: jobs }, (_, k) => `
    case ${k}u: { update${k}(u, i, two, scale); }`).join("")
    }
    default: {}
  }`;

  return `
${UPDATE_STRUCT}
struct Batch { count: u32, groups: u32, pad0: u32, pad1: u32, jobs: array<U, ${jobs}> }
@group(0) @binding(0) var<uniform> batch: Batch;
@group(0) @binding(${1 + jobs * per}) var<storage, read> SC: array<f32>;
${usesBf16 ? BF16_PACK : ""}
${mode === "stochastic" ? HASH_WGSL : ""}
${mode === "stochastic" && param === "bf16" ? SROUND_BF16_WGSL : ""}
${mode === "stochastic" && param === "f16" ? SROUND_F16_WGSL : ""}

struct Step { p: f32, m: f32, v: f32 }
${code.join("\n")}

@compute @workgroup_size(${UPDATE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
${batchedJob("batch")}
  let u = batch.jobs[j];
  let i = 2u * ((group - u.first) * ${UPDATE_WG}u + lid.x);
  if (i >= u.n) { return; }
  let two = i + 1u < u.n;
  let scale = SC[0];
  ${calls}
}`;
}

/** Kernel that copies a parameter of any dtype into its f32 master copy. Uniforms: n, op, ow. */
export function masterLoadCode(param: DType): string {
  return `
struct U { n: u32, op: u32, ow: u32 }
@group(0) @binding(0) var<uniform> u: U;
${storage(1, "P", param)}
@group(0) @binding(2) var<storage, read_write> W: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= u.n) { return; }
  W[u.ow + i] = ld_P(u.op + i);
}`;
}
