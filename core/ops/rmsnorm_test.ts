import assert from "node:assert/strict";
import { rmsnorm } from "./rmsnorm.ts";
import { fromArray, gpu, initGpu, ShapeError } from "../tensor.ts";
import { assertClose, checkGradients, seededArray } from "../testing.ts";

await initGpu();

function rmsnormRef(x: ArrayLike<number>, w: ArrayLike<number>, eps: number): Float64Array {
  const cols = w.length;
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let ss = 0;
    for (let c = 0; c < cols; c++) ss += x[r * cols + c] ** 2;
    const rstd = 1 / Math.sqrt(ss / cols + eps);
    for (let c = 0; c < cols; c++) out[r * cols + c] = x[r * cols + c] * rstd * w[c];
  }
  return out;
}

Deno.test("rmsnorm matches CPU reference", async () => {
  for (const [rows, cols] of [[1, 1], [7, 13], [65, 33], [3, 700]]) {
    const x = seededArray(rows * cols, rows + 7 * cols, -3, 3);
    const w = seededArray(cols, cols, 0.5, 1.5);
    const y = await rmsnorm(fromArray(x, [rows, cols]), fromArray(w, [cols]), 1e-6).toArray();
    assertClose(y, rmsnormRef(x, w, 1e-6), 1e-5, `rmsnorm ${rows}x${cols}`);
  }
});

Deno.test("rmsnorm eps dominates a zero row", async () => {
  const x = new Float32Array([0, 0, 0, 1e-3, -1e-3, 2e-3]);
  const w = new Float32Array([1, 2, 3]);
  const y = await rmsnorm(fromArray(x, [2, 3]), fromArray(w, [3]), 1e-2).toArray();
  assertClose(y, rmsnormRef(x, w, 1e-2), 1e-5, "eps");
});

Deno.test("rmsnorm with bf16 weight and 3-D input", async () => {
  const x = seededArray(2 * 3 * 13, 1);
  const wt = fromArray(seededArray(13, 2, 0.5, 1.5), [13], { dtype: "bf16" });
  const w = await wt.toArray();
  const y = rmsnorm(fromArray(x, [2, 3, 13]), wt, 1e-6);
  assert.deepEqual(y.shape, [2, 3, 13]);
  assertClose(await y.toArray(), rmsnormRef(x, w, 1e-6), 1e-5, "bf16 weight");
});

Deno.test("rmsnorm splits large tensors", async () => {
  const x = seededArray(65 * 33, 3);
  const w = seededArray(33, 4, 0.5, 1.5);
  const whole = await rmsnorm(fromArray(x, [65, 33]), fromArray(w, [33]), 1e-6).toArray();
  const limit = gpu().bindingLimit;
  gpu().bindingLimit = 1024;
  try {
    const before = gpu().dispatchCount;
    const split = await rmsnorm(fromArray(x, [65, 33]), fromArray(w, [33]), 1e-6).toArray();
    assert.equal(gpu().dispatchCount - before, 13);
    assert.deepEqual(split, whole);
    const rep = await checkGradients(([a, b]) => rmsnorm(a, b, 1e-6), [
      { data: x, shape: [65, 33] },
      { data: w, shape: [33] },
    ]);
    assert.ok(rep.maxRelError[0] < 1e-3, `split dx: ${rep.maxRelError}`);
    assert.ok(rep.maxRelError[1] < 1e-3, `split dw: ${rep.maxRelError}`);
  } finally {
    gpu().bindingLimit = limit;
  }
});

Deno.test("rmsnorm gradients", async () => {
  // 150 rows: the weight gradient sums three chunks of 64 rows. With one column and a
  // small eps, y ≈ sign(x)·w is too curved for differences with h = 0.01, so eps is large.
  for (const [rows, cols, eps] of [[1, 1, 0.1], [7, 13, 1e-5], [65, 33, 1e-5], [150, 3, 1e-5]]) {
    const rep = await checkGradients(([a, b]) => rmsnorm(a, b, eps), [
      { data: seededArray(rows * cols, 5 + cols), shape: [rows, cols] },
      { data: seededArray(cols, 6, 0.5, 1.5), shape: [cols] },
    ]);
    assert.ok(rep.maxRelError[0] < 1e-3, `dx ${rows}x${cols}: ${rep.maxRelError}`);
    assert.ok(rep.maxRelError[1] < 1e-3, `dw ${rows}x${cols}: ${rep.maxRelError}`);
  }
});

Deno.test("rmsnorm gradient of weight alone", async () => {
  const rep = await checkGradients(([a, b]) => rmsnorm(a, b, 1e-6), [
    { data: seededArray(91, 7), shape: [7, 13], requiresGrad: false },
    { data: seededArray(13, 8, 0.5, 1.5), shape: [13] },
  ]);
  assert.equal(rep.checked[0], 0);
  assert.ok(rep.maxRelError[1] < 1e-3, `dw: ${rep.maxRelError}`);
});

Deno.test("rmsnorm rejects a weight of the wrong size", () => {
  assert.throws(
    () => rmsnorm(fromArray(seededArray(6, 1), [2, 3]), fromArray(seededArray(2, 2), [2]), 1e-6),
    (e) => e instanceof ShapeError && /weight 2 must be \[3\]/.test(e.message),
  );
});
