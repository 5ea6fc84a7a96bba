import assert from "node:assert/strict";
import { embedding } from "./embedding.ts";
import { fromInt32 } from "./int.ts";
import { backward } from "../autograd.ts";
import { fromArray, gpu, initGpu, ShapeError } from "../tensor.ts";
import { assertClose, checkGradients, dispatchLabels, seededArray } from "../testing.ts";

await initGpu();

function randomIds(n: number, vocab: number, seed: number): Int32Array {
  return Int32Array.from(seededArray(n, seed, 0, vocab), Math.floor);
}

function lookupRef(
  ids: Int32Array,
  table: ArrayLike<number>,
  vocab: number,
  cols: number,
): Float64Array {
  const out = new Float64Array(ids.length * cols);
  ids.forEach((id, n) => {
    for (let c = 0; c < cols; c++) {
      out[n * cols + c] = id >= 0 && id < vocab ? table[id * cols + c] : NaN;
    }
  });
  return out;
}

function scatterRef(ids: Int32Array, dy: Float32Array, vocab: number, cols: number): Float64Array {
  const out = new Float64Array(vocab * cols);
  ids.forEach((id, n) => {
    if (id < 0 || id >= vocab) return;
    for (let c = 0; c < cols; c++) out[id * cols + c] += dy[n * cols + c];
  });
  return out;
}

// Runs the lookup and its backward with dy = `seed`; returns output and dTable.
async function lookupAndGrad(
  ids: Int32Array,
  shape: number[],
  table: Float32Array,
  vocab: number,
  cols: number,
  seed: Float32Array,
) {
  const t = fromArray(table, [vocab, cols], { requiresGrad: true });
  const out = embedding(fromInt32(ids, shape), t);
  backward(out, fromArray(seed, [...out.shape]));
  const result = { out: await out.toArray(), grad: await t.grad!.toArray() };
  t.grad!.dispose();
  return result;
}

Deno.test("embedding lookup matches CPU reference", async () => {
  const [vocab, cols] = [11, 13];
  const table = seededArray(vocab * cols, 1);
  const ids = Int32Array.from([3, 0, 10, 3, 7, 7, 1]);
  const out = embedding(fromInt32(ids, [1, 7]), fromArray(table, [vocab, cols]));
  assert.deepEqual(out.shape, [1, 7, cols]);
  assertClose(await out.toArray(), lookupRef(ids, table, vocab, cols), 0, "f32 table");

  const bf = fromArray(table, [vocab, cols], { dtype: "bf16" });
  const rounded = await bf.toArray();
  const outBf = await embedding(fromInt32(ids, [7, 1]), bf).toArray();
  assertClose(outBf, lookupRef(ids, rounded, vocab, cols), 0, "bf16 table");
});

Deno.test("embedding of invalid ids is NaN without gradient", async () => {
  const [vocab, cols] = [5, 3];
  const ids = Int32Array.from([-1, 2, 5, 2, -100]);
  const table = seededArray(vocab * cols, 2);
  const dy = seededArray(ids.length * cols, 3);
  const { out, grad } = await lookupAndGrad(ids, [5], table, vocab, cols, dy);
  assertClose(out, lookupRef(ids, table, vocab, cols), 0, "lookup");
  assertClose(grad, scatterRef(ids, dy, vocab, cols), 1e-6, "grad");
});

Deno.test("embedding backward sums repeated ids", async () => {
  // 300 tokens over 50 ids: the sort spans two workgroup tiles, and every id repeats.
  for (const [tokens, vocab, cols] of [[1, 1, 1], [7, 3, 13], [300, 50, 7]]) {
    const ids = randomIds(tokens, vocab, tokens);
    const table = seededArray(vocab * cols, 4);
    const dy = seededArray(tokens * cols, 5);
    const { grad } = await lookupAndGrad(ids, [tokens], table, vocab, cols, dy);
    assertClose(grad, scatterRef(ids, dy, vocab, cols), 1e-5, `grad ${tokens}x${vocab}x${cols}`);
  }
});

Deno.test("embedding backward adds into the table's gradient over two passes", async () => {
  const [tokens, vocab, cols] = [40, 9, 5];
  const ids = randomIds(tokens, vocab, 7);
  const t = fromArray(seededArray(vocab * cols, 6), [vocab, cols], { requiresGrad: true });
  const dy = [seededArray(tokens * cols, 7), seededArray(tokens * cols, 8)];
  const labels = await dispatchLabels(() => {
    for (const seed of dy) {
      const out = embedding(fromInt32(ids, [tokens]), t);
      backward(out, fromArray(seed, [tokens, cols]));
    }
  });
  // The table is a leaf: its gradient is summed in place, never copied in by addInto.
  assert.deepEqual(labels.filter((l) => l.startsWith("addInto")), []);
  const want = scatterRef(ids, dy[0], vocab, cols);
  const second = scatterRef(ids, dy[1], vocab, cols);
  for (let i = 0; i < want.length; i++) want[i] += second[i];
  assertClose(await t.grad!.toArray(), want, 1e-5, "grad after two passes");
});

Deno.test("embedding splits large tables and token blocks", async () => {
  const [tokens, vocab, cols] = [300, 50, 7];
  const ids = randomIds(tokens, vocab, 6);
  const table = seededArray(vocab * cols, 7);
  const dy = seededArray(tokens * cols, 8);
  const whole = await lookupAndGrad(ids, [3, 100], table, vocab, cols, dy);
  const limit = gpu().bindingLimit;
  // 191 f32 elements per window: 27 rows of 7, so 2 table blocks and 12 token blocks.
  gpu().bindingLimit = 1024;
  try {
    const before = gpu().dispatchCount;
    const split = await lookupAndGrad(ids, [3, 100], table, vocab, cols, dy);
    // Forward 12·2; backward 12 sorts and 12·2 scatter-adds; plus autograd's own dispatches.
    assert.ok(gpu().dispatchCount - before >= 12 * 2 + 12 + 12 * 2);
    assert.deepEqual(split.out, whole.out);
    // Token blocks add their partial sums in turn, so the rounding differs from one block.
    assertClose(split.grad, whole.grad, 1e-6, "split vs whole grad");
    assertClose(split.out, lookupRef(ids, table, vocab, cols), 0, "split lookup");
    assertClose(split.grad, scatterRef(ids, dy, vocab, cols), 1e-5, "split grad");
  } finally {
    gpu().bindingLimit = limit;
  }
});

Deno.test("embedding gradient by finite differences", async () => {
  const ids = fromInt32([4, 1, 4, 0, 6, 4, 1], [7]);
  const rep = await checkGradients(([t]) => embedding(ids, t), [
    { data: seededArray(7 * 13, 9), shape: [7, 13] },
  ]);
  assert.ok(rep.maxRelError[0] < 1e-3, `${rep.maxRelError}`);
});

Deno.test("embedding rejects a table that is not 2-D", () => {
  assert.throws(
    () => embedding(fromInt32([0], [1]), fromArray(seededArray(8, 1), [2, 2, 2])),
    (e) => e instanceof ShapeError && /table 2x2x2 must be \[V, C\]/.test(e.message),
  );
});
