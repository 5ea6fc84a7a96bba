import assert from "node:assert/strict";
import { mean, sum } from "./reduce.ts";
import { fromArray, gpu, initGpu, type Tensor, zeros } from "../tensor.ts";
import { assertClose, checkGradients, seededArray } from "../testing.ts";

await initGpu();

function rowSums(x: Float32Array, cols: number): Float64Array {
  const out = new Float64Array(x.length / cols);
  for (let r = 0; r < out.length; r++) {
    for (let c = 0; c < cols; c++) out[r] += x[r * cols + c];
  }
  return out;
}

Deno.test("sum and mean over last axis", async () => {
  for (const [rows, cols] of [[1, 1], [7, 13], [65, 33], [3, 700]]) {
    const x = seededArray(rows * cols, rows + cols);
    const t = fromArray(x, [rows, cols]);
    const s = sum(t, -1);
    assert.deepEqual(s.shape, [rows]);
    const ref = rowSums(x, cols);
    assertClose(await s.toArray(), ref, 1e-5, `sum ${rows}x${cols}`);
    assertClose(
      await mean(t, -1).toArray(),
      ref.map((v) => v / cols),
      1e-5,
      `mean ${rows}x${cols}`,
    );
  }
});

Deno.test("sum over all elements in several passes", async () => {
  // 3·4096 + 5 elements: two passes, the last chunk short.
  const n = 3 * 4096 + 5;
  const x = seededArray(n, 11);
  const t = fromArray(x, [n]);
  const ref = rowSums(x, n)[0];
  const s = sum(t);
  assert.deepEqual(s.shape, [1]);
  assertClose(await s.toArray(), [ref], 1e-5, "sum");
  assertClose(await mean(t).toArray(), [ref / n], 1e-5, "mean");
});

Deno.test("sum of bf16 input", async () => {
  const x = seededArray(7 * 13, 12);
  const t = fromArray(x, [7, 13], { dtype: "bf16" });
  const rounded = await t.toArray();
  assertClose(await sum(t, -1).toArray(), rowSums(rounded, 13), 1e-5, "sum bf16");
});

Deno.test("sum splits large tensors", async () => {
  const x = seededArray(65 * 33, 13);
  const wholeRows = await sum(fromArray(x, [65, 33]), -1).toArray();
  const wholeAll = await sum(fromArray(x, [65, 33])).toArray();
  const limit = gpu().bindingLimit;
  // 191 f32 elements per window: 5 rows of 33 per block.
  gpu().bindingLimit = 1024;
  try {
    const before = gpu().dispatchCount;
    const splitRows = await sum(fromArray(x, [65, 33]), -1).toArray();
    assert.equal(gpu().dispatchCount - before, 13);
    assert.deepEqual(splitRows, wholeRows);
    const rep = await checkGradients(([a]) => mean(a, -1), [{ data: x, shape: [65, 33] }]);
    assert.ok(rep.maxRelError[0] < 1e-3, `mean split gradient: ${rep.maxRelError}`);
  } finally {
    gpu().bindingLimit = limit;
  }
  assertClose(wholeAll, rowSums(x, x.length), 1e-5, "sum all");
});

Deno.test("empty input sums to zero, mean is NaN", async () => {
  const t = zeros([0, 4]);
  assert.deepEqual(await sum(t).toArray(), new Float32Array([0]));
  assert.ok(Number.isNaN((await mean(t).toArray())[0]));
});

Deno.test("sum and mean gradients", async () => {
  for (const shape of [[1, 1], [7, 13], [65, 33]]) {
    const n = shape[0] * shape[1];
    for (
      const [name, f] of [
        ["sum last", (a: Tensor) => sum(a, -1)],
        ["mean last", (a: Tensor) => mean(a, -1)],
        ["sum all", (a: Tensor) => sum(a)],
        ["mean all", (a: Tensor) => mean(a)],
      ] as const
    ) {
      const rep = await checkGradients(([a]) => f(a), [{ data: seededArray(n, 15), shape }], {
        samples: 6,
      });
      assert.ok(rep.maxRelError[0] < 1e-3, `${name} ${shape}: ${rep.maxRelError}`);
    }
  }
});
