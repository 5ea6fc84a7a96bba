// GEMM throughput benchmark: times `gemm` on given shapes. Each run records
// several dispatches into one submission and waits once. The time of an empty
// submit-and-wait (~11 ms on Mesa llvmpipe, less on real GPUs) is subtracted,
// so that small shapes are not charged for it. The result is the median of
// several runs.

import { gemm } from "./ops/matmul.ts";
import { beginScope, type DType, empty, endScope, fromArray, gpu } from "./tensor.ts";
import { seededArray } from "./testing.ts";

/** One GEMM shape: C [m, n] = op(A) · op(B) with inner dimension k. */
export interface GemmShape {
  m: number;
  n: number;
  k: number;
  transA?: boolean;
  transB?: boolean;
  /** dtype of B (the weight); A and C are f32. Default f32. */
  dtypeB?: DType;
}

/** Timing of one shape: milliseconds per GEMM and GFLOP/s (2·m·n·k flops). */
export interface GemmTiming {
  m: number;
  n: number;
  k: number;
  gflops: number;
  ms: number;
}

/**
 * Times each shape: after two warm-up runs (the first compiles the kernel),
 * `runs` runs of enough back-to-back GEMMs (at most 1000) to take about
 * `targetMs` of GPU time.
 */
export async function benchGemm(
  shapes: GemmShape[],
  opts: { runs?: number; targetMs?: number } = {},
): Promise<GemmTiming[]> {
  const runs = opts.runs ?? 5;
  const targetMs = opts.targetMs ?? 200;
  const results: GemmTiming[] = [];
  const waitMs = await emptyWaitMs();
  for (const s of shapes) {
    beginScope();
    try {
      results.push(await timeShape(s, runs, targetMs, waitMs));
    } finally {
      endScope();
    }
  }
  return results;
}

// Median time of a submit-and-wait with nothing in it but a 16-byte clear.
async function emptyWaitMs(): Promise<number> {
  const probe = empty([4], { memoryClass: "scratch" });
  const samples: number[] = [];
  try {
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      gpu().clear(probe.buffer, 0, 16);
      await gpu().sync();
      samples.push(performance.now() - t0);
    }
  } finally {
    probe.dispose();
  }
  samples.sort((x, y) => x - y);
  return samples[samples.length >> 1];
}

async function timeShape(
  s: GemmShape,
  runs: number,
  targetMs: number,
  waitMs: number,
): Promise<GemmTiming> {
  const { m, n, k } = s;
  const a = fromArray(seededArray(m * k, 1), s.transA ? [k, m] : [m, k]);
  const b = fromArray(seededArray(k * n, 2), s.transB ? [n, k] : [k, n], { dtype: s.dtypeB });
  const c = empty([m, n]);
  const opts = { transA: s.transA, transB: s.transB };

  // Milliseconds per GEMM, without the submit-and-wait. A run that is no
  // longer than the wait itself (noise) counts as 1 µs.
  const time = async (reps: number): Promise<number> => {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) gemm(c, a, b, opts);
    await gpu().sync();
    return Math.max(1e-3, (performance.now() - t0 - waitMs) / reps);
  };

  await time(1);
  const estimate = await time(4);
  const reps = Math.max(1, Math.min(1000, Math.round(targetMs / estimate)));
  const samples: number[] = [];
  for (let r = 0; r < runs; r++) samples.push(await time(reps));
  samples.sort((x, y) => x - y);
  const ms = samples[Math.floor(samples.length / 2)];
  return { m, n, k, ms, gflops: (2 * m * n * k) / (ms * 1e6) };
}

if (import.meta.main) {
  const { initGpu } = await import("./tensor.ts");
  await initGpu();
  const shapes: GemmShape[] = [
    { m: 1024, n: 1024, k: 1024 },
    { m: 512, n: 2048, k: 512 },
    { m: 512, n: 128, k: 128, transB: true },
    { m: 512, n: 384, k: 128, transB: true },
    { m: 512, n: 512, k: 128, transB: true },
    { m: 512, n: 50304, k: 128, transB: true },
    // The other two GEMMs of a tied 50,304-token LM head with 512 tokens and
    // hidden size 128: dx = dlogits · E (K = 50,304) and dE = dlogitsᵀ · x.
    { m: 512, n: 128, k: 50304 },
    { m: 50304, n: 128, k: 512, transA: true },
  ];
  const timings = await benchGemm(shapes);
  for (const [i, t] of timings.entries()) {
    const flags = [shapes[i].transA && "transA", shapes[i].transB && "transB"].filter(Boolean);
    const name = [`${t.m}x${t.n}x${t.k}`, ...flags].join(" ");
    console.log(`${name}  ${t.ms.toFixed(3)} ms  ${t.gflops.toFixed(1)} GFLOP/s`);
  }
}
