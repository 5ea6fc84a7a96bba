// Fused causal self-attention with grouped-query heads (GQA), forward and
// backward, in the FlashAttention-2 style. Scores are computed block by block
// in workgroup memory with an online softmax, so no T×T matrix is ever stored.
//
// Layout: q [B, T, Hq, D], k and v [B, T, Hkv, D] (a linear projection reshaped,
// no transpose). Query head h reads KV head h / (Hq / Hkv), as Hugging Face's
// repeat_kv does. The forward saves the log-sum-exp of every score row
// (lse [B, Hq, T]) and the backward recomputes the probabilities from it:
//
//   P = exp(S − lse),  Δ_i = Σ_d dO[i, d] · O[i, d],  dS = P ⊙ (dP − Δ)
//   dV = Pᵀ dO,  dP = dO Vᵀ,  dQ = scale · dS K,  dK = scale · dSᵀ Q
//
// Source: T. Dao, "FlashAttention-2" (2023, arXiv:2307.08691).
//
// The backward is deterministic: one kernel writes each dq row, and another
// writes each dk/dv row, looping over the queries at or after that key in
// every query head of the group. WGSL has no f32 atomics, so nothing is
// accumulated across workgroups.
//
// Threads: a workgroup owns a block of rows (queries, or keys for dk/dv) and
// TPR threads share a row. For dot products each of the TPR threads takes every
// TPR-th column of the score block. For the D-wide accumulators each thread
// owns dims c, c + TPR, c + 2·TPR, … (ND = ⌈D / TPR⌉ registers per accumulator).

import { gradEnabled, record } from "../autograd.ts";
import { GpuError } from "../gpu.ts";
import { empty, gpu, ShapeError, type Tensor } from "../tensor.ts";
import { flatIndex, grid1d, main1d, storage, uniforms, window, windowElements } from "../wgsl.ts";

/** Options for `attention`. */
export interface AttentionOptions {
  /** Factor on q·k before the softmax; default D^-0.5. */
  scale?: number;
}

// Threads per row. With 4, a thread keeps 32 values of each accumulator at D = 128.
const TPR = 4;

// Block sizes (query rows BQ, key rows BK) in order of preference. Each kernel
// uses the first whose workgroup memory fits the device limit: 16 × 32 fits
// D = 64 in 32 KiB, and the small ones fit D = 128 in WebGPU's default 16 KiB.
// NOTE: the order is not tuned on a discrete GPU. Only correctness was checked,
// on Mesa llvmpipe.
const TILE_CANDIDATES: [number, number][] = [[16, 32], [16, 16], [8, 16], [8, 8], [4, 8], [4, 4]];

type Kernel = "forward" | "dq" | "dkdv";

// Workgroup memory in bytes. Shared rows are padded to D + 1 floats so that
// threads reading the same column of different rows hit different banks.
function workgroupBytes(kernel: Kernel, d: number, bq: number, bk: number): number {
  const sd = d + 1;
  if (kernel === "forward") return 4 * ((bq + 2 * bk) * sd + bq * bk);
  if (kernel === "dq") return 4 * (2 * (bq + bk) * sd + bq * bk);
  return 4 * (2 * (bq + bk) * sd + 2 * bq * bk + 2 * bq);
}

function pickTiles(kernel: Kernel, d: number): [number, number] {
  const limit = gpu().limits.maxComputeWorkgroupStorageSize;
  for (const [bq, bk] of TILE_CANDIDATES) {
    if (workgroupBytes(kernel, d, bq, bk) <= limit) return [bq, bk];
  }
  const need = workgroupBytes(kernel, d, 4, 4);
  throw new ShapeError(
    `attention: head dim D=${d} needs ${need} bytes of workgroup memory but the device allows ${limit}; use a smaller head dim`,
  );
}

interface Dims {
  B: number;
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
}

function checkShapes(q: Tensor, k: Tensor, v: Tensor): Dims {
  const shapes = `q ${q.shapeString}, k ${k.shapeString}, v ${v.shapeString}`;
  if (q.shape.length !== 4 || k.shape.length !== 4 || v.shape.length !== 4) {
    throw new ShapeError(
      `attention: expected q [B, T, Hq, D] and k, v [B, T, Hkv, D], got ${shapes}`,
    );
  }
  const [B, T, Hq, D] = q.shape;
  const [Bk, Tk, Hkv, Dk] = k.shape;
  if (k.shape.join() !== v.shape.join()) {
    throw new ShapeError(`attention: k and v must have the same shape, got ${shapes}`);
  }
  if (Bk !== B || Tk !== T || Dk !== D) {
    throw new ShapeError(`attention: q, k and v must agree in B, T and D, got ${shapes}`);
  }
  if (Hkv === 0 || Hq % Hkv !== 0) {
    throw new ShapeError(
      `attention: query heads Hq=${Hq} must be a multiple of KV heads Hkv=${Hkv}, got ${shapes}`,
    );
  }
  return { B, T, Hq, Hkv, D };
}

function describe(op: string, s: Dims): string {
  return `${op}(B=${s.B} T=${s.T} Hq=${s.Hq} Hkv=${s.Hkv} D=${s.D})`;
}

// Splits the batch so that every binding of one dispatch fits in a window and
// the grid's z dimension stays within the device limit. Returns [b0, count] pairs.
function batchChunks(s: Dims, op: string): [number, number][] {
  const perSequence = s.T * s.Hq * s.D;
  const fit = Math.floor(windowElements("f32") / perSequence);
  if (fit === 0) {
    throw new GpuError(
      `${
        describe(op, s)
      }: one sequence of q (${perSequence} elements) exceeds the storage binding limit; use a shorter sequence`,
    );
  }
  const step = Math.min(fit, gpu().limits.maxComputeWorkgroupsPerDimension);
  const chunks: [number, number][] = [];
  for (let b0 = 0; b0 < s.B; b0 += step) chunks.push([b0, Math.min(step, s.B - b0)]);
  return chunks;
}

// Binds batches [b0, b0 + n) of a tensor whose batch entries are `perBatch` elements.
function batchWindow(t: Tensor, b0: number, n: number, perBatch: number) {
  return window(t, b0 * perBatch, n * perBatch);
}

// WGSL constants and index helpers shared by the three block kernels.
function header(d: number, bq: number, bk: number): string {
  return `
const D = ${d}u;
const SD = ${d + 1}u;
const BQ = ${bq}u;
const BK = ${bk}u;
const TPR = ${TPR}u;
const ND = ${Math.ceil(d / TPR)}u;
struct P { T: u32, Hq: u32, Hkv: u32, group: u32, o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
// Element index of (b, t, head, 0) in a [B, T, H, D] tensor.
fn row_q(b: u32, t: u32, h: u32) -> u32 { return ((b * p.T + t) * p.Hq + h) * D; }
fn row_kv(b: u32, t: u32, h: u32) -> u32 { return ((b * p.T + t) * p.Hkv + h) * D; }
// Index of (b, head, t) in a [B, Hq, T] row statistic (lse, Δ).
fn row_stat(b: u32, h: u32, t: u32) -> u32 { return (b * p.Hq + h) * p.T + t; }`;
}

// Forward: one workgroup per (query block, query head, batch).
function forwardCode(q: Tensor, k: Tensor, v: Tensor, d: number, bq: number, bk: number): string {
  return `${header(d, bq, bk)}
${storage(1, "Q", q.dtype)}
${storage(2, "K", k.dtype)}
${storage(3, "V", v.dtype)}
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
@group(0) @binding(5) var<storage, read_write> L: array<f32>;
var<workgroup> Qs: array<f32, BQ * SD>;
var<workgroup> Ks: array<f32, BK * SD>;
var<workgroup> Vs: array<f32, BK * SD>;
var<workgroup> Ss: array<f32, BQ * BK>;

@compute @workgroup_size(BQ * TPR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q0 = wid.x * BQ;
  let h = wid.y;
  let b = wid.z;
  let hk = h / p.group;
  let r = lid / TPR;
  let c = lid % TPR;
  let t = q0 + r;

  // The scale is folded into the staged queries, so Ss contains scaled scores.
  for (var i = lid; i < BQ * D; i += BQ * TPR) {
    let tt = q0 + i / D;
    var x = 0.0;
    if (tt < p.T) { x = ld_Q(p.o1 + row_q(b, tt, h) + i % D) * p.scale; }
    Qs[(i / D) * SD + i % D] = x;
  }

  // Running max m and denominator l start at a finite minimum so that a block
  // with no visible key gives exp(m - m) = 1 instead of exp(-inf + inf) = NaN.
  var m = -3.0e38;
  var l = 0.0;
  var acc: array<f32, ND>;
  let kEnd = min(q0 + BQ, p.T);
  for (var k0 = 0u; k0 < kEnd; k0 += BK) {
    // The barrier also orders the previous block's reads before these writes.
    workgroupBarrier();
    for (var i = lid; i < BK * D; i += BQ * TPR) {
      let tk = k0 + i / D;
      var kx = 0.0;
      var vx = 0.0;
      if (tk < p.T) {
        let idx = row_kv(b, tk, hk) + i % D;
        kx = ld_K(p.o2 + idx);
        vx = ld_V(p.o3 + idx);
      }
      Ks[(i / D) * SD + i % D] = kx;
      Vs[(i / D) * SD + i % D] = vx;
    }
    workgroupBarrier();

    for (var j = c; j < BK; j += TPR) {
      var s = 0.0;
      for (var e = 0u; e < D; e++) { s += Qs[r * SD + e] * Ks[j * SD + e]; }
      Ss[r * BK + j] = s;
    }
    workgroupBarrier();

    // Causal mask: query t attends to keys k0 .. k0 + visible - 1 of this block.
    let visible = select(0u, min(BK, t + 1u - k0), t + 1u > k0);
    var mNew = m;
    for (var j = 0u; j < visible; j++) { mNew = max(mNew, Ss[r * BK + j]); }
    let alpha = exp(m - mNew);
    l *= alpha;
    for (var e = 0u; e < ND; e++) { acc[e] *= alpha; }
    for (var j = 0u; j < visible; j++) {
      let pj = exp(Ss[r * BK + j] - mNew);
      l += pj;
      for (var e = 0u; e < ND; e++) {
        let dd = c + e * TPR;
        if (dd < D) { acc[e] += pj * Vs[j * SD + dd]; }
      }
    }
    m = mNew;
  }

  if (t >= p.T) { return; }
  for (var e = 0u; e < ND; e++) {
    let dd = c + e * TPR;
    if (dd < D) { O[p.o4 + row_q(b, t, h) + dd] = acc[e] / l; }
  }
  if (c == 0u) { L[p.o5 + row_stat(b, h, t)] = m + log(l); }
}`;
}

// Δ_i = Σ_d dO[i, d] · O[i, d], one invocation per (b, head, t) row.
function deltaCode(dy: Tensor, d: number): string {
  return `
struct P { n: u32, T: u32, Hq: u32, oy: u32, oo: u32, od: u32 }
@group(0) @binding(0) var<uniform> p: P;
${storage(1, "DY", dy.dtype)}
@group(0) @binding(2) var<storage, read> O: array<f32>;
@group(0) @binding(3) var<storage, read_write> DL: array<f32>;
${main1d()} {
  let i = ${flatIndex()};
  if (i >= p.n) { return; }
  let t = i % p.T;
  let h = (i / p.T) % p.Hq;
  let b = i / (p.T * p.Hq);
  let base = ((b * p.T + t) * p.Hq + h) * ${d}u;
  var s = 0.0;
  for (var e = 0u; e < ${d}u; e++) { s += ld_DY(p.oy + base + e) * O[p.oo + base + e]; }
  DL[p.od + i] = s;
}`;
}

// dq: one workgroup per (query block, query head, batch), looping over key blocks.
function dqCode(q: Tensor, k: Tensor, v: Tensor, dy: Tensor, d: number, bq: number, bk: number) {
  return `${header(d, bq, bk)}
${storage(1, "Q", q.dtype)}
${storage(2, "K", k.dtype)}
${storage(3, "V", v.dtype)}
${storage(4, "DY", dy.dtype)}
@group(0) @binding(5) var<storage, read> L: array<f32>;
@group(0) @binding(6) var<storage, read> DL: array<f32>;
@group(0) @binding(7) var<storage, read_write> DQ: array<f32>;
var<workgroup> Qs: array<f32, BQ * SD>;
var<workgroup> DYs: array<f32, BQ * SD>;
var<workgroup> Ks: array<f32, BK * SD>;
var<workgroup> Vs: array<f32, BK * SD>;
var<workgroup> DSs: array<f32, BQ * BK>;

@compute @workgroup_size(BQ * TPR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q0 = wid.x * BQ;
  let h = wid.y;
  let b = wid.z;
  let hk = h / p.group;
  let r = lid / TPR;
  let c = lid % TPR;
  let t = q0 + r;

  for (var i = lid; i < BQ * D; i += BQ * TPR) {
    let tt = q0 + i / D;
    var x = 0.0;
    var y = 0.0;
    if (tt < p.T) {
      let idx = row_q(b, tt, h) + i % D;
      x = ld_Q(p.o1 + idx) * p.scale;
      y = ld_DY(p.o4 + idx);
    }
    Qs[(i / D) * SD + i % D] = x;
    DYs[(i / D) * SD + i % D] = y;
  }
  var lse = 0.0;
  var delta = 0.0;
  if (t < p.T) {
    lse = L[p.o5 + row_stat(b, h, t)];
    delta = DL[p.o6 + row_stat(b, h, t)];
  }

  var dq: array<f32, ND>;
  let kEnd = min(q0 + BQ, p.T);
  for (var k0 = 0u; k0 < kEnd; k0 += BK) {
    workgroupBarrier();
    for (var i = lid; i < BK * D; i += BQ * TPR) {
      let tk = k0 + i / D;
      var kx = 0.0;
      var vx = 0.0;
      if (tk < p.T) {
        let idx = row_kv(b, tk, hk) + i % D;
        kx = ld_K(p.o2 + idx);
        vx = ld_V(p.o3 + idx);
      }
      Ks[(i / D) * SD + i % D] = kx;
      Vs[(i / D) * SD + i % D] = vx;
    }
    workgroupBarrier();

    for (var j = c; j < BK; j += TPR) {
      var ds = 0.0;
      if (t < p.T && k0 + j <= t) {
        var s = 0.0;
        var dp = 0.0;
        for (var e = 0u; e < D; e++) {
          s += Qs[r * SD + e] * Ks[j * SD + e];
          dp += DYs[r * SD + e] * Vs[j * SD + e];
        }
        ds = exp(s - lse) * (dp - delta);
      }
      DSs[r * BK + j] = ds;
    }
    workgroupBarrier();

    for (var j = 0u; j < BK; j++) {
      let ds = DSs[r * BK + j];
      for (var e = 0u; e < ND; e++) {
        let dd = c + e * TPR;
        if (dd < D) { dq[e] += ds * Ks[j * SD + dd]; }
      }
    }
  }

  if (t >= p.T) { return; }
  for (var e = 0u; e < ND; e++) {
    let dd = c + e * TPR;
    if (dd < D) { DQ[p.o7 + row_q(b, t, h) + dd] = dq[e] * p.scale; }
  }
}`;
}

// dk, dv: one workgroup per (key block, KV head, batch). Each key row sums over
// every query head of its group and every query at or after it, in a fixed order.
function dkdvCode(q: Tensor, k: Tensor, v: Tensor, dy: Tensor, d: number, bq: number, bk: number) {
  return `${header(d, bq, bk)}
${storage(1, "Q", q.dtype)}
${storage(2, "K", k.dtype)}
${storage(3, "V", v.dtype)}
${storage(4, "DY", dy.dtype)}
@group(0) @binding(5) var<storage, read> L: array<f32>;
@group(0) @binding(6) var<storage, read> DL: array<f32>;
@group(0) @binding(7) var<storage, read_write> DK: array<f32>;
@group(0) @binding(8) var<storage, read_write> DV: array<f32>;
var<workgroup> Ks: array<f32, BK * SD>;
var<workgroup> Vs: array<f32, BK * SD>;
var<workgroup> Qs: array<f32, BQ * SD>;
var<workgroup> DYs: array<f32, BQ * SD>;
var<workgroup> Ls: array<f32, BQ>;
var<workgroup> DLs: array<f32, BQ>;
var<workgroup> Ps: array<f32, BK * BQ>;
var<workgroup> DSs: array<f32, BK * BQ>;

@compute @workgroup_size(BK * TPR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let k0 = wid.x * BK;
  let hk = wid.y;
  let b = wid.z;
  let r = lid / TPR;
  let c = lid % TPR;
  let tk = k0 + r;

  for (var i = lid; i < BK * D; i += BK * TPR) {
    let tt = k0 + i / D;
    var kx = 0.0;
    var vx = 0.0;
    if (tt < p.T) {
      let idx = row_kv(b, tt, hk) + i % D;
      kx = ld_K(p.o2 + idx);
      vx = ld_V(p.o3 + idx);
    }
    Ks[(i / D) * SD + i % D] = kx;
    Vs[(i / D) * SD + i % D] = vx;
  }

  var dk: array<f32, ND>;
  var dv: array<f32, ND>;
  for (var g = 0u; g < p.group; g++) {
    let h = hk * p.group + g;
    for (var q0 = k0; q0 < p.T; q0 += BQ) {
      workgroupBarrier();
      for (var i = lid; i < BQ * D; i += BK * TPR) {
        let tt = q0 + i / D;
        var x = 0.0;
        var y = 0.0;
        if (tt < p.T) {
          let idx = row_q(b, tt, h) + i % D;
          x = ld_Q(p.o1 + idx) * p.scale;
          y = ld_DY(p.o4 + idx);
        }
        Qs[(i / D) * SD + i % D] = x;
        DYs[(i / D) * SD + i % D] = y;
      }
      for (var i = lid; i < BQ; i += BK * TPR) {
        var lse = 0.0;
        var delta = 0.0;
        if (q0 + i < p.T) {
          lse = L[p.o5 + row_stat(b, h, q0 + i)];
          delta = DL[p.o6 + row_stat(b, h, q0 + i)];
        }
        Ls[i] = lse;
        DLs[i] = delta;
      }
      workgroupBarrier();

      for (var i = c; i < BQ; i += TPR) {
        let tq = q0 + i;
        var pv = 0.0;
        var ds = 0.0;
        if (tq < p.T && tq >= tk) {
          var s = 0.0;
          var dp = 0.0;
          for (var e = 0u; e < D; e++) {
            s += Qs[i * SD + e] * Ks[r * SD + e];
            dp += DYs[i * SD + e] * Vs[r * SD + e];
          }
          pv = exp(s - Ls[i]);
          ds = pv * (dp - DLs[i]);
        }
        Ps[r * BQ + i] = pv;
        DSs[r * BQ + i] = ds;
      }
      workgroupBarrier();

      // Qs contains scale · q, so Σ dS · Qs is already dK = scale · dSᵀ Q.
      for (var i = 0u; i < BQ; i++) {
        let pv = Ps[r * BQ + i];
        let ds = DSs[r * BQ + i];
        for (var e = 0u; e < ND; e++) {
          let dd = c + e * TPR;
          if (dd < D) {
            dv[e] += pv * DYs[i * SD + dd];
            dk[e] += ds * Qs[i * SD + dd];
          }
        }
      }
    }
  }

  if (tk >= p.T) { return; }
  for (var e = 0u; e < ND; e++) {
    let dd = c + e * TPR;
    if (dd < D) {
      DK[p.o7 + row_kv(b, tk, hk) + dd] = dk[e];
      DV[p.o7 + row_kv(b, tk, hk) + dd] = dv[e];
    }
  }
}`;
}

/**
 * Computes causal softmax(scale · q kᵀ) v per head with grouped-query heads:
 * q [B, T, Hq, D], k and v [B, T, Hkv, D] with Hkv dividing Hq. Query t attends
 * to keys 0..t. Returns f32 [B, T, Hq, D].
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  const s = checkShapes(q, k, v);
  const scale = opts.scale ?? 1 / Math.sqrt(s.D);
  const out = empty([s.B, s.T, s.Hq, s.D]);
  const lse = empty([s.B, s.Hq, s.T], { name: "attention.lse" });
  if (out.numel === 0) {
    lse.dispose();
    return out;
  }

  const [bq, bk] = pickTiles("forward", s.D);
  const code = forwardCode(q, k, v, s.D, bq, bk);
  const qRow = s.T * s.Hq * s.D;
  const kvRow = s.T * s.Hkv * s.D;
  const statRow = s.Hq * s.T;
  for (const [b0, n] of batchChunks(s, "attention")) {
    const wq = batchWindow(q, b0, n, qRow);
    const wk = batchWindow(k, b0, n, kvRow);
    const wv = batchWindow(v, b0, n, kvRow);
    const wo = batchWindow(out, b0, n, qRow);
    const wl = batchWindow(lse, b0, n, statRow);
    gpu().dispatch({
      label: describe("attention", { ...s, B: n }),
      code,
      buffers: [wq.binding, wk.binding, wv.binding, wo.binding, wl.binding],
      uniforms: uniforms(
        s.T,
        s.Hq,
        s.Hkv,
        s.Hq / s.Hkv,
        wq.offset,
        wk.offset,
        wv.offset,
        wo.offset,
        wl.offset,
        0,
        0,
        { f: scale },
      ),
      workgroups: [Math.ceil(s.T / bq), s.Hq, n],
    });
  }

  if (!gradEnabled() || ![q, k, v].some((t) => t.requiresGrad)) {
    lse.dispose();
    return out;
  }
  record("attention", out, [q, k, v], (dy) => {
    const grads = attentionBackward(q, k, v, out, lse, dy, s, scale);
    lse.dispose();
    return grads;
  });
  return out;
}

function attentionBackward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
  dy: Tensor,
  s: Dims,
  scale: number,
): (Tensor | null)[] {
  const qRow = s.T * s.Hq * s.D;
  const kvRow = s.T * s.Hkv * s.D;
  const statRow = s.Hq * s.T;
  const chunks = batchChunks(s, "attentionBackward");
  const delta = empty([s.B, s.Hq, s.T], { name: "attention.delta" });
  const dq = q.requiresGrad ? empty(q.shape) : null;
  const needKv = k.requiresGrad || v.requiresGrad;
  const dk = needKv ? empty(k.shape) : null;
  const dv = needKv ? empty(v.shape) : null;

  const deltaSrc = deltaCode(dy, s.D);
  for (const [b0, n] of chunks) {
    const wy = batchWindow(dy, b0, n, qRow);
    const wo = batchWindow(out, b0, n, qRow);
    const wd = batchWindow(delta, b0, n, statRow);
    const rows = n * statRow;
    gpu().dispatch({
      label: describe("attentionDelta", { ...s, B: n }),
      code: deltaSrc,
      buffers: [wy.binding, wo.binding, wd.binding],
      uniforms: uniforms(rows, s.T, s.Hq, wy.offset, wo.offset, wd.offset),
      workgroups: grid1d(rows),
    });
  }

  if (dq) {
    const [bq, bk] = pickTiles("dq", s.D);
    const code = dqCode(q, k, v, dy, s.D, bq, bk);
    for (const [b0, n] of chunks) {
      const wq = batchWindow(q, b0, n, qRow);
      const wk = batchWindow(k, b0, n, kvRow);
      const wv = batchWindow(v, b0, n, kvRow);
      const wy = batchWindow(dy, b0, n, qRow);
      const wl = batchWindow(lse, b0, n, statRow);
      const wd = batchWindow(delta, b0, n, statRow);
      const wdq = batchWindow(dq, b0, n, qRow);
      gpu().dispatch({
        label: describe("attentionDq", { ...s, B: n }),
        code,
        buffers: [
          wq.binding,
          wk.binding,
          wv.binding,
          wy.binding,
          wl.binding,
          wd.binding,
          wdq.binding,
        ],
        uniforms: uniforms(
          s.T,
          s.Hq,
          s.Hkv,
          s.Hq / s.Hkv,
          wq.offset,
          wk.offset,
          wv.offset,
          wy.offset,
          wl.offset,
          wd.offset,
          wdq.offset,
          { f: scale },
        ),
        workgroups: [Math.ceil(s.T / bq), s.Hq, n],
      });
    }
  }

  if (dk && dv) {
    const [bq, bk] = pickTiles("dkdv", s.D);
    const code = dkdvCode(q, k, v, dy, s.D, bq, bk);
    for (const [b0, n] of chunks) {
      const wq = batchWindow(q, b0, n, qRow);
      const wk = batchWindow(k, b0, n, kvRow);
      const wv = batchWindow(v, b0, n, kvRow);
      const wy = batchWindow(dy, b0, n, qRow);
      const wl = batchWindow(lse, b0, n, statRow);
      const wd = batchWindow(delta, b0, n, statRow);
      // dk and dv share one offset uniform: both are [B, T, Hkv, D] f32 and
      // windows of equal start and size align the same way.
      const wdk = batchWindow(dk, b0, n, kvRow);
      const wdv = batchWindow(dv, b0, n, kvRow);
      gpu().dispatch({
        label: describe("attentionDkDv", { ...s, B: n }),
        code,
        buffers: [
          wq.binding,
          wk.binding,
          wv.binding,
          wy.binding,
          wl.binding,
          wd.binding,
          wdk.binding,
          wdv.binding,
        ],
        uniforms: uniforms(
          s.T,
          s.Hq,
          s.Hkv,
          s.Hq / s.Hkv,
          wq.offset,
          wk.offset,
          wv.offset,
          wy.offset,
          wl.offset,
          wd.offset,
          wdk.offset,
          { f: scale },
        ),
        workgroups: [Math.ceil(s.T / bk), s.Hkv, n],
      });
    }
  }

  delta.dispose();
  if (dk && !k.requiresGrad) dk.dispose();
  if (dv && !v.requiresGrad) dv.dispose();
  return [dq, k.requiresGrad ? dk : null, v.requiresGrad ? dv : null];
}
