import assert from "node:assert/strict";
import { crossEntropy } from "./cross_entropy.ts";
import { fromInt32 } from "./int.ts";
import { backward } from "../autograd.ts";
import { fromArray, gpu, initGpu, ShapeError } from "../tensor.ts";
import { assertClose, checkGradients, seededArray } from "../testing.ts";

await initGpu();

// Mean over non-ignored rows of −log softmax(x)[t], and its gradient, in f64.
function crossEntropyRef(x: ArrayLike<number>, targets: Int32Array, cols: number, ignore = -100) {
  const rows = targets.length;
  const grad = new Float64Array(rows * cols);
  let total = 0;
  let count = 0;
  for (let r = 0; r < rows; r++) {
    if (targets[r] === ignore) continue;
    count++;
  }
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === ignore) continue;
    let max = -Infinity;
    for (let c = 0; c < cols; c++) max = Math.max(max, x[r * cols + c]);
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += Math.exp(x[r * cols + c] - max);
    // log p = (x − max) − log Σ: forming max + log Σ first would round away log Σ when max is huge.
    const logSum = Math.log(sum);
    total += max - x[r * cols + t] + logSum;
    for (let c = 0; c < cols; c++) {
      const prob = Math.exp(x[r * cols + c] - max - logSum);
      grad[r * cols + c] = (prob - (c === t ? 1 : 0)) / count;
    }
  }
  return { loss: total / count, grad };
}

function randomTargets(n: number, vocab: number, seed: number): Int32Array {
  return Int32Array.from(seededArray(n, seed, 0, vocab), Math.floor);
}

// Loss and dlogits (with dloss = `seed`) from the GPU.
async function lossAndGrad(
  x: Float32Array,
  shape: number[],
  targets: Int32Array,
  ignore?: number,
  seed = 1,
) {
  const logits = fromArray(x, shape, { requiresGrad: true });
  const loss = crossEntropy(logits, fromInt32(targets, [targets.length]), ignore);
  backward(loss, fromArray([seed], [1]));
  const result = { loss: (await loss.toArray())[0], grad: await logits.grad!.toArray() };
  logits.grad!.dispose();
  return result;
}

Deno.test("cross entropy matches CPU reference", async () => {
  for (const [rows, cols] of [[1, 1], [7, 13], [65, 33], [3, 1000]]) {
    const x = seededArray(rows * cols, rows + cols, -8, 8);
    const targets = randomTargets(rows, cols, rows * cols);
    const ref = crossEntropyRef(x, targets, cols);
    const { loss, grad } = await lossAndGrad(x, [rows, cols], targets, undefined, 1.5);
    assertClose([loss], [ref.loss], 1e-5, `loss ${rows}x${cols}`);
    assertClose(grad, ref.grad.map((g) => 1.5 * g), 1e-5, `grad ${rows}x${cols}`);
  }
});

Deno.test("cross entropy skips ignored targets", async () => {
  const [rows, cols] = [7, 13];
  const x = seededArray(rows * cols, 1, -4, 4);
  const targets = Int32Array.from([3, -100, 0, 12, -100, 5, 5]);
  const ref = crossEntropyRef(x, targets, cols);
  const { loss, grad } = await lossAndGrad(x, [rows, cols], targets);
  assertClose([loss], [ref.loss], 1e-5, "loss");
  assertClose(grad, ref.grad, 1e-5, "grad");
  for (let c = 0; c < cols; c++) assert.equal(grad[1 * cols + c], 0);

  const custom = Int32Array.from([3, 7, 0, 12, 7, 5, 5]);
  const refCustom = crossEntropyRef(x, custom, cols, 7);
  const got = await lossAndGrad(x, [rows, cols], custom, 7);
  assertClose([got.loss], [refCustom.loss], 1e-5, "custom ignore loss");
  assertClose(got.grad, refCustom.grad, 1e-5, "custom ignore grad");
});

Deno.test("cross entropy edge cases give NaN or zero gradient", async () => {
  const x = seededArray(2 * 5, 2);
  const allIgnored = await lossAndGrad(x, [2, 5], Int32Array.from([-100, -100]));
  assert.ok(Number.isNaN(allIgnored.loss));
  assert.deepEqual(allIgnored.grad, new Float32Array(10));

  const outOfRange = crossEntropy(fromArray(x, [2, 5]), fromInt32([1, 5], [2]));
  assert.ok(Number.isNaN((await outOfRange.toArray())[0]));
});

Deno.test("cross entropy is stable for large logits", async () => {
  const x = new Float32Array([1000, 990, -1000, 3e38, 3e38, 0]);
  const targets = Int32Array.from([1, 2]);
  const ref = crossEntropyRef(x, targets, 3);
  const { loss, grad } = await lossAndGrad(x, [2, 3], targets);
  // Row 2: the two largest logits tie, and the target's logit sits 3e38 below them.
  assert.ok(Number.isFinite(loss), `${loss}`);
  assertClose([loss], [ref.loss], 1e-5, "loss");
  assertClose(grad, ref.grad, 1e-6, "grad");
});

Deno.test("cross entropy of bf16 logits, 3-D", async () => {
  const t = fromArray(seededArray(2 * 3 * 17, 3, -5, 5), [2, 3, 17], { dtype: "bf16" });
  const rounded = await t.toArray();
  const targets = randomTargets(6, 17, 4);
  const loss = await crossEntropy(t, fromInt32(targets, [2, 3])).toArray();
  assertClose(loss, [crossEntropyRef(rounded, targets, 17).loss], 1e-5, "bf16");
});

Deno.test("cross entropy splits large logits", async () => {
  const [rows, cols] = [65, 33];
  const x = seededArray(rows * cols, 5, -6, 6);
  const targets = randomTargets(rows, cols, 6);
  targets[10] = -100;
  const whole = await lossAndGrad(x, [rows, cols], targets);
  const limit = gpu().bindingLimit;
  gpu().bindingLimit = 1024;
  try {
    const before = gpu().dispatchCount;
    crossEntropy(fromArray(x, [rows, cols]), fromInt32(targets, [rows]));
    // 13 row blocks of 5 rows, then one mean.
    assert.equal(gpu().dispatchCount - before, 14);
    const split = await lossAndGrad(x, [rows, cols], targets);
    assert.equal(split.loss, whole.loss);
    assert.deepEqual(split.grad, whole.grad);
    const ref = crossEntropyRef(x, targets, cols);
    assertClose([split.loss], [ref.loss], 1e-5, "split loss");
    assertClose(split.grad, ref.grad, 1e-5, "split grad");
  } finally {
    gpu().bindingLimit = limit;
  }
});

Deno.test("cross entropy gradient by finite differences", async () => {
  // The loss is a mean of O(1) values, so its f32 rounding (~1.2e-7) divided by 2h
  // swamps gradients of O(1/N) at h = 0.01. h = 0.05 brings that noise to about 2.4e-6.
  for (const [rows, cols] of [[1, 1], [7, 13], [65, 33]]) {
    const targets = randomTargets(rows, cols, 7);
    if (rows > 1) targets[rows - 1] = -100;
    const t = fromInt32(targets, [rows]);
    const rep = await checkGradients(([x]) => crossEntropy(x, t), [
      { data: seededArray(rows * cols, 8, -3, 3), shape: [rows, cols] },
    ], { h: 0.05 });
    assert.ok(rep.maxRelError[0] < 1e-3, `${rows}x${cols}: ${rep.maxRelError}`);
  }
});

Deno.test("cross entropy rejects mismatched targets", () => {
  assert.throws(
    () => crossEntropy(fromArray(seededArray(6, 1), [2, 3]), fromInt32([0, 1, 2], [3])),
    (e) => e instanceof ShapeError && /logits 2x3 .* targets 3/.test(e.message),
  );
});
