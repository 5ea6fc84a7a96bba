import assert from "node:assert/strict";
import { attention } from "./attention.ts";
import { backward } from "../autograd.ts";
import {
  beginScope,
  bf16ToF32,
  endScope,
  f32ToBf16,
  fromArray,
  gpu,
  initGpu,
  ShapeError,
  type Tensor,
} from "../tensor.ts";
import { checkGradients, seededArray } from "../testing.ts";

await initGpu();

interface Dims {
  B: number;
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
}

// Causal GQA attention in f64 with plain loops: for every (b, h, t) the
// softmax over keys 0..t of scale · q·k, applied to v.
function referenceForward(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  s: Dims,
  scale: number,
): Float64Array {
  const { B, T, Hq, Hkv, D } = s;
  const group = Hq / Hkv;
  const out = new Float64Array(B * T * Hq * D);
  const scores = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const hk = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        const qi = ((b * T + t) * Hq + h) * D;
        let max = -Infinity;
        for (let j = 0; j <= t; j++) {
          const kj = ((b * T + j) * Hkv + hk) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qi + d] * k[kj + d];
          scores[j] = scale * dot;
          max = Math.max(max, scores[j]);
        }
        let sum = 0;
        for (let j = 0; j <= t; j++) {
          scores[j] = Math.exp(scores[j] - max);
          sum += scores[j];
        }
        for (let j = 0; j <= t; j++) {
          const vj = ((b * T + j) * Hkv + hk) * D;
          for (let d = 0; d < D; d++) out[qi + d] += (scores[j] / sum) * v[vj + d];
        }
      }
    }
  }
  return out;
}

// Gradients of Σ out ⊙ dO in f64, from the softmax Jacobian written out:
// dP_j = dO·v_j, dS_j = P_j (dP_j − Σ_i P_i dP_i).
function referenceBackward(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dO: ArrayLike<number>,
  s: Dims,
  scale: number,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { B, T, Hq, Hkv, D } = s;
  const group = Hq / Hkv;
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const probs = new Float64Array(T);
  const dProbs = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const hk = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        const qi = ((b * T + t) * Hq + h) * D;
        let max = -Infinity;
        for (let j = 0; j <= t; j++) {
          const kj = ((b * T + j) * Hkv + hk) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qi + d] * k[kj + d];
          probs[j] = scale * dot;
          max = Math.max(max, probs[j]);
        }
        let sum = 0;
        for (let j = 0; j <= t; j++) {
          probs[j] = Math.exp(probs[j] - max);
          sum += probs[j];
        }
        let expected = 0;
        for (let j = 0; j <= t; j++) {
          probs[j] /= sum;
          const vj = ((b * T + j) * Hkv + hk) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += dO[qi + d] * v[vj + d];
          dProbs[j] = dot;
          expected += probs[j] * dot;
        }
        for (let j = 0; j <= t; j++) {
          const kj = ((b * T + j) * Hkv + hk) * D;
          const dScore = probs[j] * (dProbs[j] - expected);
          for (let d = 0; d < D; d++) {
            dq[qi + d] += scale * dScore * k[kj + d];
            dk[kj + d] += scale * dScore * q[qi + d];
            dv[kj + d] += probs[j] * dO[qi + d];
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}

function inputs(s: Dims, seed: number) {
  const { B, T, Hq, Hkv, D } = s;
  return {
    q: seededArray(B * T * Hq * D, seed),
    k: seededArray(B * T * Hkv * D, seed + 1),
    v: seededArray(B * T * Hkv * D, seed + 2),
  };
}

function maxError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - want[i]) / Math.max(1, Math.abs(want[i])));
  }
  return worst;
}

function name(s: Dims): string {
  return `B=${s.B} T=${s.T} Hq=${s.Hq} Hkv=${s.Hkv} D=${s.D}`;
}

async function runForward(s: Dims, x: ReturnType<typeof inputs>, scale?: number) {
  beginScope();
  try {
    const out = attention(
      fromArray(x.q, [s.B, s.T, s.Hq, s.D]),
      fromArray(x.k, [s.B, s.T, s.Hkv, s.D]),
      fromArray(x.v, [s.B, s.T, s.Hkv, s.D]),
      { scale },
    );
    assert.deepEqual(out.shape, [s.B, s.T, s.Hq, s.D]);
    return await out.toArray();
  } finally {
    endScope();
  }
}

const FORWARD_CASES: Dims[] = [
  { B: 1, T: 1, Hq: 2, Hkv: 2, D: 8 },
  { B: 1, T: 7, Hq: 2, Hkv: 2, D: 16 },
  { B: 2, T: 7, Hq: 4, Hkv: 2, D: 8 },
  { B: 1, T: 33, Hq: 6, Hkv: 1, D: 16 },
  { B: 1, T: 33, Hq: 2, Hkv: 2, D: 64 },
  { B: 2, T: 65, Hq: 4, Hkv: 2, D: 32 },
  { B: 1, T: 20, Hq: 2, Hkv: 1, D: 128 },
  // D not a multiple of the threads per row.
  { B: 1, T: 9, Hq: 3, Hkv: 3, D: 6 },
];

Deno.test("attention forward matches reference", async () => {
  for (const [i, s] of FORWARD_CASES.entries()) {
    const x = inputs(s, 10 * i);
    const got = await runForward(s, x);
    const want = referenceForward(x.q, x.k, x.v, s, 1 / Math.sqrt(s.D));
    const err = maxError(got, want);
    assert.ok(err < 2e-5, `${name(s)}: max error ${err}`);
  }
});

Deno.test("attention forward custom scale", async () => {
  const s = { B: 1, T: 12, Hq: 4, Hkv: 2, D: 16 };
  const x = inputs(s, 5);
  const got = await runForward(s, x, 0.9);
  const err = maxError(got, referenceForward(x.q, x.k, x.v, s, 0.9));
  assert.ok(err < 2e-5, `max error ${err}`);
});

Deno.test("attention forward bf16 inputs", async () => {
  const s = { B: 1, T: 10, Hq: 4, Hkv: 1, D: 16 };
  const x = inputs(s, 77);
  const round = (a: Float32Array) => a.map((y) => bf16ToF32(f32ToBf16(y)));
  beginScope();
  try {
    const out = attention(
      fromArray(x.q, [s.B, s.T, s.Hq, s.D], { dtype: "bf16" }),
      fromArray(x.k, [s.B, s.T, s.Hkv, s.D], { dtype: "bf16" }),
      fromArray(x.v, [s.B, s.T, s.Hkv, s.D], { dtype: "bf16" }),
    );
    assert.equal(out.dtype, "f32");
    const want = referenceForward(round(x.q), round(x.k), round(x.v), s, 0.25);
    const err = maxError(await out.toArray(), want);
    assert.ok(err < 2e-5, `max error ${err}`);
  } finally {
    endScope();
  }
});

Deno.test("attention is causal", async () => {
  const s = { B: 1, T: 11, Hq: 4, Hkv: 2, D: 8 };
  const x = inputs(s, 3);
  const before = await runForward(s, x);

  // Change key and value rows at t = 6 in every KV head.
  const changed = { q: x.q, k: x.k.slice(), v: x.v.slice() };
  const row = 6 * s.Hkv * s.D;
  for (let i = row; i < row + s.Hkv * s.D; i++) {
    changed.k[i] += 0.5;
    changed.v[i] -= 0.7;
  }
  const after = await runForward(s, changed);

  const split = 6 * s.Hq * s.D;
  for (let i = 0; i < split; i++) assert.equal(after[i], before[i], `output ${i} (t < 6) changed`);
  let moved = 0;
  for (let i = split; i < before.length; i++) {
    moved = Math.max(moved, Math.abs(after[i] - before[i]));
  }
  assert.ok(moved > 1e-3, `outputs at t ≥ 6 did not change (max change ${moved})`);
});

Deno.test("attention split over bindings", async () => {
  const s = { B: 3, T: 9, Hq: 2, Hkv: 1, D: 8 };
  const x = inputs(s, 21);
  const g = gpu();
  const saved = g.bindingLimit;
  // Room for one sequence of q (T · Hq · D f32) per binding, so each batch
  // entry gets its own dispatch at an unaligned offset.
  g.bindingLimit = g.limits.minStorageBufferOffsetAlignment + 4 + 4 * s.T * s.Hq * s.D;
  const dO = seededArray(s.B * s.T * s.Hq * s.D, 22);
  let got: Float32Array;
  let grads: Float32Array[];
  const dispatches = g.dispatchCount;
  try {
    got = await runForward(s, x);
    assert.equal(g.dispatchCount - dispatches, s.B, "one forward dispatch per batch entry");
    grads = await runBackward(s, x, dO);
  } finally {
    g.bindingLimit = saved;
  }

  const scale = 1 / Math.sqrt(s.D);
  const err = maxError(got, referenceForward(x.q, x.k, x.v, s, scale));
  assert.ok(err < 2e-5, `forward: max error ${err}`);
  const want = referenceBackward(x.q, x.k, x.v, dO, s, scale);
  for (const [j, input] of ["q", "k", "v"].entries()) {
    const gradErr = maxError(grads[j], Object.values(want)[j]);
    assert.ok(gradErr < 1e-4, `d${input}: max error ${gradErr}`);
  }
});

Deno.test("attention gradients by finite differences", async () => {
  const cases: [Dims, boolean[]][] = [
    [{ B: 1, T: 5, Hq: 2, Hkv: 2, D: 4 }, [true, true, true]],
    [{ B: 2, T: 6, Hq: 4, Hkv: 2, D: 6 }, [true, true, true]],
    [{ B: 1, T: 7, Hq: 3, Hkv: 1, D: 8 }, [true, true, false]],
  ];
  for (const [s, grads] of cases) {
    const x = inputs(s, 40);
    const rep = await checkGradients(([q, k, v]) => attention(q, k, v), [
      { data: x.q, shape: [s.B, s.T, s.Hq, s.D], requiresGrad: grads[0] },
      { data: x.k, shape: [s.B, s.T, s.Hkv, s.D], requiresGrad: grads[1] },
      { data: x.v, shape: [s.B, s.T, s.Hkv, s.D], requiresGrad: grads[2] },
    ]);
    for (const [i, input] of ["q", "k", "v"].entries()) {
      assert.ok(rep.maxRelError[i] < 1e-3, `${name(s)} d${input}: ${rep.maxRelError[i]}`);
      assert.equal(rep.checked[i] > 0, grads[i], `${name(s)} d${input} checked ${rep.checked[i]}`);
    }
  }
});

async function runBackward(s: Dims, x: ReturnType<typeof inputs>, dO: Float32Array) {
  beginScope();
  try {
    const q = fromArray(x.q, [s.B, s.T, s.Hq, s.D], { requiresGrad: true });
    const k = fromArray(x.k, [s.B, s.T, s.Hkv, s.D], { requiresGrad: true });
    const v = fromArray(x.v, [s.B, s.T, s.Hkv, s.D], { requiresGrad: true });
    const out = attention(q, k, v);
    backward(out, fromArray(dO, [...out.shape]));
    const result = [
      await q.grad!.toArray(),
      await k.grad!.toArray(),
      await v.grad!.toArray(),
    ];
    for (const t of [q, k, v]) (t.grad as Tensor).dispose();
    return result;
  } finally {
    endScope();
  }
}

Deno.test("attention gradients match reference", async () => {
  const cases: Dims[] = [
    { B: 2, T: 40, Hq: 4, Hkv: 2, D: 32 },
    { B: 1, T: 33, Hq: 6, Hkv: 1, D: 16 },
    { B: 1, T: 18, Hq: 2, Hkv: 1, D: 128 },
  ];
  for (const [i, s] of cases.entries()) {
    const x = inputs(s, 100 + 10 * i);
    const dO = seededArray(s.B * s.T * s.Hq * s.D, 200 + i);
    const got = await runBackward(s, x, dO);
    const want = referenceBackward(x.q, x.k, x.v, dO, s, 1 / Math.sqrt(s.D));
    for (const [j, input] of ["q", "k", "v"].entries()) {
      const err = maxError(got[j], Object.values(want)[j]);
      assert.ok(err < 1e-4, `${name(s)} d${input}: max error ${err}`);
    }

    // No atomics, so a second run gives the same bits.
    const again = await runBackward(s, x, dO);
    for (let j = 0; j < 3; j++) assert.deepEqual(again[j], got[j], `${name(s)} run 2 differs`);
  }
});

Deno.test("attention shape errors", () => {
  beginScope();
  try {
    const t = (shape: number[]) =>
      fromArray(new Float32Array(shape.reduce((a, b) => a * b)), shape);
    const cases: [number[], number[], number[], RegExp][] = [
      [[1, 4, 6, 8], [1, 4, 4, 8], [1, 4, 4, 8], /Hq=6 must be a multiple of KV heads Hkv=4/],
      [[2, 4, 2, 8], [1, 4, 2, 8], [1, 4, 2, 8], /agree in B, T and D.*q 2x4x2x8, k 1x4x2x8/],
      [[1, 5, 2, 8], [1, 4, 2, 8], [1, 4, 2, 8], /agree in B, T and D/],
      [[1, 4, 2, 16], [1, 4, 2, 8], [1, 4, 2, 8], /agree in B, T and D/],
      [[1, 4, 2, 8], [1, 4, 2, 8], [1, 4, 1, 8], /k and v must have the same shape/],
      [[4, 2, 8], [1, 4, 2, 8], [1, 4, 2, 8], /expected q \[B, T, Hq, D\].*got q 4x2x8/],
    ];
    for (const [qs, ks, vs, message] of cases) {
      assert.throws(() => attention(t(qs), t(ks), t(vs)), (e: unknown) => {
        assert.ok(e instanceof ShapeError, `${qs} ${ks} ${vs}: ${e}`);
        assert.match(e.message, message);
        assert.ok(!e.message.includes("\n"), "message spans lines");
        return true;
      });
    }
  } finally {
    endScope();
  }
});

Deno.test("attention with 16 KiB workgroup memory", async () => {
  // WebGPU guarantees only 16 KiB of workgroup memory; shadow the device's
  // limit so that the smaller tiles are chosen and checked here too.
  const g = gpu();
  const limits: Record<string, number> = {};
  for (const key in g.limits) limits[key] = (g.limits as unknown as Record<string, number>)[key];
  assert.ok(limits.maxBufferSize > 0, "limits copied");
  limits.maxComputeWorkgroupStorageSize = 16384;
  Object.defineProperty(g, "limits", { value: limits, configurable: true });
  try {
    for (
      const [i, s] of [
        { B: 1, T: 21, Hq: 2, Hkv: 1, D: 128 },
        { B: 2, T: 19, Hq: 4, Hkv: 2, D: 64 },
      ].entries()
    ) {
      const x = inputs(s, 300 + 10 * i);
      const scale = 1 / Math.sqrt(s.D);
      const out = await runForward(s, x);
      const outErr = maxError(out, referenceForward(x.q, x.k, x.v, s, scale));
      assert.ok(outErr < 2e-5, `${name(s)} forward: max error ${outErr}`);

      const dO = seededArray(s.B * s.T * s.Hq * s.D, 400 + i);
      const got = await runBackward(s, x, dO);
      const want = referenceBackward(x.q, x.k, x.v, dO, s, scale);
      for (const [j, input] of ["q", "k", "v"].entries()) {
        const err = maxError(got[j], Object.values(want)[j]);
        assert.ok(err < 1e-4, `${name(s)} d${input}: max error ${err}`);
      }
    }
  } finally {
    delete (g as unknown as { limits?: unknown }).limits;
  }
  assert.ok(g.limits.maxComputeWorkgroupStorageSize >= 16384);
});
