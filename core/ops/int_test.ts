import assert from "node:assert/strict";
import { fromInt32, toInt32 } from "./int.ts";
import { initGpu } from "../tensor.ts";

await initGpu();

Deno.test("fromInt32 round-trips signed values", async () => {
  const values = [0, -1, -100, 151935, 2 ** 31 - 1, -(2 ** 31), 7];
  const t = fromInt32(values, [7]);
  assert.deepEqual(t.shape, [7]);
  assert.deepEqual(await toInt32(t), Int32Array.from(values));
  assert.deepEqual(
    await toInt32(fromInt32(Int32Array.from([3, -4]), [1, 2])),
    Int32Array.from([3, -4]),
  );
  assert.deepEqual(await toInt32(fromInt32([], [0, 5])), new Int32Array(0));
});

Deno.test("fromInt32 rejects invalid input", () => {
  assert.throws(() => fromInt32([1, 2, 3], [2, 2]), /3 values do not fill shape 2x2/);
  assert.throws(() => fromInt32([1.5], [1]), /value 1.5 at index 0/);
  assert.throws(() => fromInt32([2 ** 31], [1]), /not a 32-bit signed integer/);
});
