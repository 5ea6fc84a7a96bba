// GEMM throughput benchmark: times `gemm` on given shapes. Each run records
// several dispatches into one submission and waits once, so the ~11 ms
// submit-and-wait of Mesa llvmpipe (less on real GPUs) is spread over the
// repetitions. The result is the median of several runs.

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
 * `runs` runs of enough back-to-back dispatches to take about `targetMs`.
 */
export async function benchGemm(
  shapes: GemmShape[],
  opts: { runs?: number; targetMs?: number } = {},
): Promise<GemmTiming[]> {
  const runs = opts.runs ?? 5;
  const targetMs = opts.targetMs ?? 200;
  const results: GemmTiming[] = [];
  for (const s of shapes) {
    beginScope();
    try {
      results.push(await timeShape(s, runs, targetMs));
    } finally {
      endScope();
    }
  }
  return results;
}

async function timeShape(s: GemmShape, runs: number, targetMs: number): Promise<GemmTiming> {
  const { m, n, k } = s;
  const a = fromArray(seededArray(m * k, 1), s.transA ? [k, m] : [m, k]);
  const b = fromArray(seededArray(k * n, 2), s.transB ? [n, k] : [k, n], { dtype: s.dtypeB });
  const c = empty([m, n]);
  const opts = { transA: s.transA, transB: s.transB };

  const time = async (reps: number): Promise<number> => {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) gemm(c, a, b, opts);
    await gpu().sync();
    return (performance.now() - t0) / reps;
  };

  await time(1);
  const estimate = await time(1);
  const reps = Math.max(1, Math.min(100, Math.round(targetMs / Math.max(estimate, 1e-3))));
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
  ];
  for (const t of await benchGemm(shapes)) {
    console.log(`${t.m}x${t.n}x${t.k}  ${t.ms.toFixed(2)} ms  ${t.gflops.toFixed(1)} GFLOP/s`);
  }
}
