import assert from "node:assert/strict";
import { add, mul, scale } from "./elementwise.ts";
import { fromArray, initGpu } from "../tensor.ts";
import { checkGradients, seededArray } from "../testing.ts";

await initGpu();

Deno.test("add broadcasts rows", async () => {
  const a = seededArray(7 * 13, 1);
  const b = seededArray(13, 2);
  const out = await add(fromArray(a, [7, 13]), fromArray(b, [13])).toArray();
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(out[i] - (a[i] + b[i % 13])) < 1e-6);
});

Deno.test("add, mul, scale gradients", async () => {
  for (const [name, f] of [["add", add], ["mul", mul]] as const) {
    for (const bShape of [[7, 13], [13]]) {
      const rep = await checkGradients(([x, y]) => f(x, y), [
        { data: seededArray(91, 3), shape: [7, 13] },
        { data: seededArray(bShape.reduce((p, q) => p * q), 4), shape: bShape },
      ]);
      for (const e of rep.maxRelError) assert.ok(e < 1e-3, `${name} ${bShape}: ${e}`);
    }
  }
  const rep = await checkGradients(([x]) => scale(x, -2.5), [{
    data: seededArray(5, 5),
    shape: [5],
  }]);
  assert.ok(rep.maxRelError[0] < 1e-3);
});

Deno.test("sumRows split matches the unsplit sum", async () => {
  const { gpu } = await import("../tensor.ts");
  const { sumRows } = await import("./elementwise.ts");
  const rows = 37, cols = 11;
  const x = seededArray(rows * cols, 9);
  const whole = await sumRows(fromArray(x, [rows, cols]), cols).toArray();
  // CPU reference in f64.
  for (let c = 0; c < cols; c++) {
    let s = 0;
    for (let r = 0; r < rows; r++) s += x[r * cols + c];
    assert.ok(Math.abs(whole[c] - s) < 1e-5, `column ${c}: ${whole[c]} vs ${s}`);
  }
  const g = gpu();
  const saved = g.bindingLimit;
  try {
    g.bindingLimit = 512;
    const before = g.dispatchCount;
    const split = await sumRows(fromArray(x, [rows, cols]), cols).toArray();
    assert.ok(g.dispatchCount - before > 1, "sumRows was not split");
    for (let c = 0; c < cols; c++) assert.ok(Math.abs(split[c] - whole[c]) < 1e-5);
  } finally {
    g.bindingLimit = saved;
  }
});
