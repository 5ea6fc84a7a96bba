import assert from "node:assert/strict";
import { bf16ToF32, f32ToBf16, fromArray, gpu, initGpu } from "../core/tensor.ts";
import { seededArray } from "../core/testing.ts";
import { GradNormClip } from "./clip.ts";

await initGpu();

function cpuNorm(arrays: ArrayLike<number>[]): number {
  let s = 0;
  for (const a of arrays) for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

Deno.test("grad norm over tensors and nulls", async () => {
  // 10000 elements span 5 workgroup chunks of 2048.
  const data = [seededArray(10000, 1), seededArray(17, 2), seededArray(1, 3)];
  const grads = data.map((d) => fromArray(d, [d.length]));
  const clip = new GradNormClip(2.0);
  clip.computeScale([grads[0], null, grads[1], grads[2]]);
  const norm = cpuNorm(data);
  assert.ok(
    Math.abs((await clip.norm()) - norm) <= 1e-5 * norm,
    `norm ${await clip.norm()} vs ${norm}`,
  );
  const scale = 2 / (norm + 1e-6);
  assert.ok(Math.abs((await clip.scaleValue()) - scale) <= 1e-5 * scale);
  clip.dispose();
});

Deno.test("grad norm of no gradients is zero", async () => {
  const clip = new GradNormClip();
  clip.computeScale([null]);
  assert.equal(await clip.norm(), 0);
  assert.equal(await clip.scaleValue(), 1);
  clip.dispose();
});

Deno.test("grad norm without clipping", async () => {
  const d = seededArray(300, 4, 5, 10);
  const clip = new GradNormClip(Infinity);
  clip.computeScale([fromArray(d, [300])]);
  const norm = cpuNorm([d]);
  assert.ok(Math.abs((await clip.norm()) - norm) <= 1e-5 * norm);
  assert.equal(await clip.scaleValue(), 1);
  assert.throws(() => new GradNormClip(0), /invalid maxNorm 0/);
  clip.dispose();
});

Deno.test("grad norm across binding windows", async () => {
  const g = gpu();
  const saved = g.bindingLimit;
  g.bindingLimit = 4096;
  try {
    const f = seededArray(5001, 5);
    const b = Uint16Array.from(seededArray(4001, 6), (x) => f32ToBf16(x));
    const clip = new GradNormClip(1.0);
    const before = g.dispatchCount;
    clip.computeScale([fromArray(f, [5001]), fromArray(b, [4001], { dtype: "bf16" })]);
    // f32: 958 elements per window → 6 windows; bf16: 1918 → 3 windows. The 9 windows
    // take one partial dispatch per batch, then one final reduce.
    const batch = Math.min(16, g.limits.maxStorageBuffersPerShaderStage - 1);
    assert.equal(g.dispatchCount - before, Math.ceil(9 / batch) + 1);
    const norm = cpuNorm([f, Float32Array.from(b, (w) => bf16ToF32(w))]);
    assert.ok(
      Math.abs((await clip.norm()) - norm) <= 1e-5 * norm,
      `norm ${await clip.norm()} vs ${norm}`,
    );
    clip.dispose();
  } finally {
    g.bindingLimit = saved;
  }
});

Deno.test("grad norm over more gradients than one dispatch binds", async () => {
  // 40 gradients of 1 to 4096 elements, every third in bf16: several batches,
  // and jobs of one or two workgroups within each.
  const data: Float32Array[] = [];
  const grads = [];
  for (let i = 0; i < 40; i++) {
    const n = [1, 7, 2048, 2049, 4096][i % 5];
    const values = seededArray(n, 100 + i);
    if (i % 3 === 2) {
      const words = Uint16Array.from(values, (x) => f32ToBf16(x));
      data.push(Float32Array.from(words, (w) => bf16ToF32(w)));
      grads.push(fromArray(words, [n], { dtype: "bf16" }));
    } else {
      data.push(values);
      grads.push(fromArray(values, [n]));
    }
  }
  const g = gpu();
  const clip = new GradNormClip(1.0);
  const before = g.dispatchCount;
  clip.computeScale(grads);
  const batch = Math.min(16, g.limits.maxStorageBuffersPerShaderStage - 1);
  assert.equal(g.dispatchCount - before, Math.ceil(40 / batch) + 1);
  const norm = cpuNorm(data);
  assert.ok(
    Math.abs((await clip.norm()) - norm) <= 1e-5 * norm,
    `norm ${await clip.norm()} vs ${norm}`,
  );
  clip.dispose();
});

Deno.test("grad norm gives a large gradient its own dispatch", async () => {
  // 70,000 elements are above the batching limit of 4096; the three small ones share one.
  const data = [
    seededArray(5, 200),
    seededArray(70000, 201),
    seededArray(9, 202),
    seededArray(3, 203),
  ];
  const g = gpu();
  const clip = new GradNormClip(1.0);
  const before = g.dispatchCount;
  clip.computeScale(data.map((d) => fromArray(d, [d.length])));
  assert.equal(g.dispatchCount - before, 1 + 1 + 1);
  const norm = cpuNorm(data);
  assert.ok(Math.abs((await clip.norm()) - norm) <= 1e-5 * norm, `norm ${await clip.norm()}`);
  clip.dispose();
});
