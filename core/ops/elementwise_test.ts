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

Deno.test("mul and add broadcast over rows split into blocks match a CPU reference", async () => {
  const { gpu } = await import("../tensor.ts");
  const rows = 41, cols = 13;
  const a = seededArray(rows * cols, 21);
  const b = seededArray(cols, 22);
  const g = gpu();
  const saved = g.bindingLimit;
  try {
    // 1024-byte bindings hold a few rows each, so every op runs as several dispatches.
    g.bindingLimit = 1024;
    const before = g.dispatchCount;
    const prod = await mul(fromArray(a, [rows, cols]), fromArray(b, [cols])).toArray();
    const sum = await add(fromArray(a, [rows, cols]), fromArray(b, [cols])).toArray();
    assert.ok(g.dispatchCount - before > 2, "the broadcast ops were not split");
    for (let i = 0; i < a.length; i++) {
      assert.ok(Math.abs(prod[i] - a[i] * b[i % cols]) < 1e-6, `mul element ${i}`);
      assert.ok(Math.abs(sum[i] - (a[i] + b[i % cols])) < 1e-6, `add element ${i}`);
    }
  } finally {
    g.bindingLimit = saved;
  }
});

Deno.test("sumRows adds into a given tensor", async () => {
  const { sumRows } = await import("./elementwise.ts");
  const rows = 5, cols = 3;
  const x = seededArray(rows * cols, 23);
  const start = [10, -20, 30];
  const into = fromArray(new Float32Array(start), [cols]);
  const out = sumRows(fromArray(x, [rows, cols]), cols, into);
  assert.equal(out, into);
  const got = await into.toArray();
  for (let c = 0; c < cols; c++) {
    let s = start[c];
    for (let r = 0; r < rows; r++) s += x[r * cols + c];
    assert.ok(Math.abs(got[c] - s) < 1e-5, `column ${c}: ${got[c]} vs ${s}`);
  }
  assert.throws(() => sumRows(fromArray(x, [rows, cols]), cols, fromArray([0, 0], [2])), /sumRows/);
});
