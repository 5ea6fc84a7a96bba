import assert from "node:assert/strict";
import { softmax } from "./softmax.ts";
import { fromArray, gpu, initGpu } from "../tensor.ts";
import { assertClose, checkGradients, seededArray } from "../testing.ts";

await initGpu();

function softmaxRef(x: ArrayLike<number>, cols: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let max = -Infinity;
    for (let c = 0; c < cols; c++) max = Math.max(max, x[r * cols + c]);
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += Math.exp(x[r * cols + c] - max);
    for (let c = 0; c < cols; c++) out[r * cols + c] = Math.exp(x[r * cols + c] - max) / sum;
  }
  return out;
}

Deno.test("softmax matches CPU reference", async () => {
  for (const [rows, cols] of [[1, 1], [7, 13], [65, 33], [3, 700]]) {
    const x = seededArray(rows * cols, rows * 100 + cols, -10, 10);
    const y = await softmax(fromArray(x, [rows, cols])).toArray();
    assertClose(y, softmaxRef(x, cols), 1e-6, `softmax ${rows}x${cols}`);
  }
});

Deno.test("softmax is stable for large and -inf logits", async () => {
  const x = new Float32Array([1000, 999, -1000, 0, 3e38, 3e38, -Infinity, 1]);
  const y = await softmax(fromArray(x, [2, 4])).toArray();
  const ref = softmaxRef([1000, 999, -1000, 0], 4);
  assertClose(y.subarray(0, 4), ref, 1e-6, "large");
  assertClose(y.subarray(4), [0.5, 0.5, 0, 0], 1e-6, "near f32 max with -inf");
});

Deno.test("softmax of a -inf row is NaN", async () => {
  const y = await softmax(fromArray([-Infinity, -Infinity, -Infinity], [1, 3])).toArray();
  for (const v of y) assert.ok(Number.isNaN(v), `${y}`);
});

Deno.test("softmax of bf16 input", async () => {
  const t = fromArray(seededArray(7 * 13, 3, -5, 5), [7, 13], { dtype: "bf16" });
  const rounded = await t.toArray();
  assertClose(await softmax(t).toArray(), softmaxRef(rounded, 13), 1e-6, "bf16");
});

Deno.test("softmax splits large tensors", async () => {
  const x = seededArray(65 * 33, 4, -5, 5);
  const whole = await softmax(fromArray(x, [65, 33])).toArray();
  const limit = gpu().bindingLimit;
  gpu().bindingLimit = 1024;
  try {
    const before = gpu().dispatchCount;
    const split = await softmax(fromArray(x, [65, 33])).toArray();
    assert.equal(gpu().dispatchCount - before, 13);
    assert.deepEqual(split, whole);
    const rep = await checkGradients(([a]) => softmax(a), [{ data: x, shape: [65, 33] }]);
    assert.ok(rep.maxRelError[0] < 1e-3, `split gradient: ${rep.maxRelError}`);
  } finally {
    gpu().bindingLimit = limit;
  }
});

Deno.test("softmax gradients", async () => {
  for (const shape of [[1, 1], [7, 13], [65, 33], [2, 300]]) {
    const n = shape[0] * shape[1];
    const rep = await checkGradients(([a]) => softmax(a), [
      { data: seededArray(n, 5, -3, 3), shape },
    ]);
    assert.ok(rep.maxRelError[0] < 1e-3, `softmax ${shape}: ${rep.maxRelError}`);
  }
});
