// Test helpers: seeded data and central finite-difference gradient checks.
// Exported from mod.ts so that projects building new ops can check them the same way.

import { backward, noGrad } from "./autograd.ts";
import { beginScope, endScope, fromArray, gpu, type Tensor } from "./tensor.ts";

/** Deterministic uniform values in [lo, hi) from a 32-bit seed (mulberry32). */
export function seededArray(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = lo + (hi - lo) * u;
  }
  return out;
}

/** An input to `checkGradients`: values, shape, and whether its gradient is checked. */
export interface GradInput {
  data: Float32Array;
  shape: number[];
  /** Constant inputs (indices, frozen weights) get no gradient. Default true. */
  requiresGrad?: boolean;
}

/** Worst relative error per input between autograd and central differences. */
export interface GradReport {
  maxRelError: number[];
  checked: number[];
}

/**
 * Compares autograd gradients of L = Σ out ⊙ R (R fixed random weights) with
 * central differences (L(x+h) − L(x−h)) / 2h, evaluated in f64 from f32
 * forwards, on up to `samples` entries of every input. Relative error is
 * |g − n| / max(|g|, |n|, `floor`).
 */
export async function checkGradients(
  forward: (inputs: Tensor[]) => Tensor,
  inputs: GradInput[],
  opts: { h?: number; samples?: number; seed?: number; floor?: number } = {},
): Promise<GradReport> {
  const h = opts.h ?? 1e-2;
  const samples = opts.samples ?? 16;
  const floor = opts.floor ?? 1e-2;

  beginScope();
  try {
    const tensors = inputs.map((x, i) =>
      fromArray(x.data, x.shape, { requiresGrad: x.requiresGrad ?? true, name: `in${i}` })
    );
    const out = forward(tensors);
    const r = seededArray(out.numel, (opts.seed ?? 7) + 1000);
    backward(out, fromArray(r, [...out.shape]));
    const analytic = await Promise.all(
      tensors.map((t) => t.grad ? t.grad.toArray() : Promise.resolve(null)),
    );
    for (const t of tensors) t.grad?.dispose();

    const lossAt = async (k: number, idx: number, delta: number): Promise<number> => {
      const data = inputs.map((x) => x.data.slice());
      data[k][idx] += delta;
      beginScope();
      try {
        const y = noGrad(() => forward(data.map((d, i) => fromArray(d, inputs[i].shape))));
        const v = await y.toArray();
        let s = 0;
        for (let i = 0; i < v.length; i++) s += v[i] * r[i];
        return s;
      } finally {
        endScope();
      }
    };

    const report: GradReport = { maxRelError: [], checked: [] };
    for (let k = 0; k < inputs.length; k++) {
      const g = analytic[k];
      if (!g || inputs[k].requiresGrad === false) {
        report.maxRelError.push(0);
        report.checked.push(0);
        continue;
      }
      const n = inputs[k].data.length;
      const picks = n <= samples
        ? [...Array(n).keys()]
        : [...seededArray(samples, k + 31, 0, n)].map(Math.floor);
      let worst = 0;
      for (const idx of picks) {
        const num = ((await lossAt(k, idx, h)) - (await lossAt(k, idx, -h))) / (2 * h);
        const err = Math.abs(g[idx] - num) / Math.max(Math.abs(g[idx]), Math.abs(num), floor);
        worst = Math.max(worst, err);
      }
      report.maxRelError.push(worst);
      report.checked.push(picks.length);
    }
    return report;
  } finally {
    endScope();
  }
}

/**
 * Asserts that `actual` matches `expected` element-wise within `tol` relative to
 * max(1, |expected|): absolute near zero, relative for large values. NaN matches NaN.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  label: string,
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length}, expected ${expected.length}`);
  }
  for (let i = 0; i < expected.length; i++) {
    const ok = Number.isNaN(expected[i])
      ? Number.isNaN(actual[i])
      : Math.abs(actual[i] - expected[i]) <= tol * Math.max(1, Math.abs(expected[i]));
    if (!ok) throw new Error(`${label}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

/** Runs `fn` and returns the labels of the dispatches it records, in order. */
export async function dispatchLabels(fn: () => void | Promise<void>): Promise<string[]> {
  const g = gpu();
  const labels: string[] = [];
  const original = g.dispatch;
  g.dispatch = (d) => {
    labels.push(d.label);
    original.call(g, d);
  };
  try {
    await fn();
  } finally {
    g.dispatch = original;
  }
  return labels;
}
