import assert from "node:assert/strict";
import { backward, noGrad } from "../core/autograd.ts";
import { fromArray, gpu, initGpu, scoped, type Tensor } from "../core/tensor.ts";
import { seededArray } from "../core/testing.ts";
import { checkRank, createLinear, type Linear, semiOrthogonal } from "./linear.ts";
import { type Method, parseMethod } from "./params.ts";
import { effectiveRank, numericalRank, singularValues } from "./rank.ts";

await initGpu();

const N = 12, M = 9, R = 2, ROWS = 5;

function make(method: Method, seed = 4, rank = R, bias = true): Linear {
  return createLinear({
    name: "l",
    outFeatures: N,
    inFeatures: M,
    method,
    rank,
    bias,
    seed,
  });
}

async function setValues(t: Tensor, values: Float32Array) {
  const tmp = fromArray(values, [...t.shape], { dtype: t.dtype });
  gpu().copy(tmp.buffer, 0, t.buffer, 0, t.byteLength);
  tmp.dispose();
  await gpu().sync();
}

async function run(l: Linear, x: Float32Array): Promise<Float32Array> {
  return await scoped(() => noGrad(() => l.forward(fromArray(x, [ROWS, M])))).toArray();
}

// Moves every trainable tensor of the layer away from its init.
async function perturb(l: Linear, seed: number) {
  for (const p of l.trainable()) {
    const v = await p.tensor.toArray();
    const noise = seededArray(v.length, seed++, -0.3, 0.3);
    await setValues(p.tensor, v.map((x, i) => x + noise[i]));
  }
}

Deno.test("methods at init give the base linear's output", async () => {
  const x = seededArray(ROWS * M, 1);
  const base = await run(make("full"), x);
  for (const method of ["bpt", "lora", "relora", "hyperadapt"] as const) {
    const l = make(method);
    assert.equal(l.method, method);
    assert.deepEqual(await run(l, x), base, method);
  }
});

Deno.test("merge keeps the output", async () => {
  const x = seededArray(ROWS * M, 2);
  for (const method of ["bpt", "relora"] as const) {
    const l = make(method, 6);
    await perturb(l, 100);
    const before = await run(l, x);
    const reset = l.merge();
    assert.equal(reset.length, 2);
    const after = await run(l, x);
    let scale = 0;
    for (const v of before) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < before.length; i++) {
      assert.ok(
        Math.abs(after[i] - before[i]) <= 1e-5 * scale,
        `${method}[${i}]: ${before[i]} vs ${after[i]}`,
      );
    }
  }
});

Deno.test("BPT merge resets U orthonormal and V to zero", async () => {
  const l = make("bpt", 8);
  await perturb(l, 7);
  const [u, v] = l.merge();
  const uv = await u.toArray();
  for (let a = 0; a < R; a++) {
    for (let b = 0; b < R; b++) {
      let dot = 0;
      for (let i = 0; i < N; i++) dot += uv[i * R + a] * uv[i * R + b];
      assert.ok(Math.abs(dot - (a === b ? 1 : 0)) < 1e-5, `UᵀU[${a},${b}] = ${dot}`);
    }
  }
  assert.ok((await v.toArray()).every((x) => x === 0));
});

Deno.test("gradients of factors, diagonals and bias match finite differences", async () => {
  const x = seededArray(ROWS * M, 3);
  const r = seededArray(ROWS * N, 4);
  for (const method of ["bpt", "lora", "hyperadapt", "full"] as const) {
    const l = make(method, 10);
    await perturb(l, 200);
    const lossAt = async () => {
      const y = await run(l, x);
      return y.reduce((s, v, i) => s + v * r[i], 0);
    };
    scoped(() => {
      const y = l.forward(fromArray(x, [ROWS, M]));
      backward(y, fromArray(r, [ROWS, N]));
    });
    for (const p of l.trainable()) {
      const g = await p.tensor.grad!.toArray();
      const values = await p.tensor.toArray();
      for (const idx of [0, Math.floor(values.length / 2), values.length - 1]) {
        const x0 = values[idx];
        const h = 1e-2;
        values[idx] = x0 + h;
        await setValues(p.tensor, values);
        const up = await lossAt();
        values[idx] = x0 - h;
        await setValues(p.tensor, values);
        const down = await lossAt();
        values[idx] = x0;
        await setValues(p.tensor, values);
        const numeric = (up - down) / (2 * h);
        const err = Math.abs(g[idx] - numeric) /
          Math.max(Math.abs(g[idx]), Math.abs(numeric), 1e-2);
        assert.ok(err < 1e-3, `${method} ${p.name}[${idx}]: ${g[idx]} vs ${numeric}`);
      }
    }
  }
});

// Plain SGD on the CPU: W ← W − lr·g for each trainable tensor, then clear grads.
async function sgdSteps(l: Linear, steps: number, seed: number, lr = 0.05) {
  for (let s = 0; s < steps; s++) {
    const x = seededArray(ROWS * M, seed + s);
    const r = seededArray(ROWS * N, seed + 1000 + s);
    scoped(() => backward(l.forward(fromArray(x, [ROWS, M])), fromArray(r, [ROWS, N])));
    for (const p of l.trainable()) {
      const v = await p.tensor.toArray();
      const g = await p.tensor.grad!.toArray();
      await setValues(p.tensor, v.map((w, i) => w - lr * g[i]));
      p.tensor.grad!.dispose();
      p.tensor.grad = null;
    }
  }
}

async function updateRank(l: Linear, w0: Float32Array): Promise<number> {
  const w = await l.effectiveWeight();
  const delta = w.map((v, i) => v - w0[i]);
  return numericalRank(singularValues(delta, N, M), 1e-4);
}

Deno.test("update ranks: BPT exceeds r, LoRA stays at r, ReLoRA grows with merges", async () => {
  const bpt = make("bpt", 21, R, false);
  const w0 = await bpt.weight.toArray();
  await sgdSteps(bpt, 4, 50);
  const rb = await updateRank(bpt, w0);
  assert.ok(rb > R, `BPT update rank ${rb} ≤ r = ${R}`);
  // rank(W) = min(N, M) here, so the bound min(n, m, 2·rank(W) + r) is min(N, M).
  assert.ok(rb <= Math.min(N, M, 2 * Math.min(N, M) + R));

  const lora = make("lora", 21, R, false);
  await sgdSteps(lora, 4, 50);
  const rl = await updateRank(lora, w0);
  assert.ok(rl <= R, `LoRA update rank ${rl} > r = ${R}`);
  assert.ok(rl > 0, `LoRA update rank ${rl}`);

  const relora = make("relora", 21, R, false);
  for (let k = 0; k < 3; k++) {
    await sgdSteps(relora, 2, 60 + 10 * k);
    relora.merge();
  }
  const rr = await updateRank(relora, w0);
  assert.ok(rr > R, `ReLoRA accumulated update rank ${rr} ≤ r = ${R}`);
});

Deno.test("frozen W is bit-identical after training and has no gradient", async () => {
  for (const method of ["bpt", "lora", "hyperadapt"] as const) {
    const l = make(method, 30);
    const before = await l.weight.toBytes();
    await sgdSteps(l, 2, 70);
    assert.equal(l.weight.grad, null, method);
    assert.equal(l.weight.requiresGrad, false);
    assert.deepEqual(await l.weight.toBytes(), before, method);
  }
});

Deno.test("trainable counts per layer", () => {
  const count = (l: Linear) => l.trainable().reduce((s, p) => s + p.tensor.numel, 0);
  const n = N, m = M, r = R;
  assert.equal(count(make("bpt", 1, r, false)), n + m + r * (n + m));
  assert.equal(count(make("lora", 1, r, false)), r * (n + m));
  assert.equal(count(make("relora", 1, r, false)), r * (n + m));
  assert.equal(count(make("hyperadapt", 1, r, false)), n + m);
  assert.equal(count(make("full", 1, r, false)), n * m);
  assert.equal(count(make("bpt", 1, r, true)), n + m + r * (n + m) + n);
  // Rank 5: BPT would train 12 + 9 + 5·21 = 126 ≥ 108 = n·m, so the layer stays full.
  assert.equal(make("bpt", 1, 5, false).method, "full");
});

Deno.test("bad rank and method are one-line errors with the allowed range", () => {
  assert.throws(() => make("bpt", 1, 0), /invalid rank 0 .* 1\.\.9/);
  assert.throws(() => make("lora", 1, 10), /invalid rank 10 .* 1\.\.9/);
  assert.throws(() => checkRank("bpt", 2.5, 4, 4), /invalid rank 2\.5/);
  assert.throws(() => parseMethod("dora"), /dora/);
});

Deno.test("rank utilities on synthetic matrices", () => {
  // A sum of k outer products of independent vectors has rank k.
  const n = 20, m = 15;
  for (const k of [1, 3, 7]) {
    const a = new Float64Array(n * m);
    for (let t = 0; t < k; t++) {
      const u = seededArray(n, 10 + t), v = seededArray(m, 40 + t);
      for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) a[i * m + j] += u[i] * v[j];
    }
    assert.equal(numericalRank(singularValues(a, n, m)), k);
    assert.equal(numericalRank(singularValues(transpose(a, n, m), m, n)), k);
  }
  // diag(3, 2, 1) has exactly those singular values; equal values give effective rank 3.
  const d = new Float64Array([3, 0, 0, 0, 2, 0, 0, 0, 1]);
  const sv = singularValues(d, 3, 3);
  [3, 2, 1].forEach((s, i) => assert.ok(Math.abs(sv[i] - s) < 1e-12));
  assert.ok(Math.abs(effectiveRank([1, 1, 1]) - 3) < 1e-12);
  const u = semiOrthogonal(6, 3, 1);
  assert.equal(numericalRank(singularValues(u, 6, 3)), 3);
});

function transpose(a: Float64Array, n: number, m: number): Float64Array {
  const t = new Float64Array(n * m);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) t[j * n + i] = a[i * m + j];
  return t;
}
