import assert from "node:assert/strict";
import { scaleColumns, scaleColumnsBackward } from "./scale_columns.ts";
import { scale } from "./elementwise.ts";
import { empty, fromArray, initGpu } from "../tensor.ts";
import { assertClose, dispatchLabels, seededArray } from "../testing.ts";

await initGpu();

// 12 columns take the vec4 kernels, 9 the scalar ones. Up to 512 rows are summed in one
// pass; 1100 rows make three partial sums and a second pass.
const SHAPES: [number, number][] = [[150, 12], [150, 9], [3, 4], [1100, 12], [1100, 9]];

Deno.test("scaleColumns matches a CPU reference with and without bias", async () => {
  for (const [rows, cols] of SHAPES) {
    const x = seededArray(rows * cols, 1);
    const s = seededArray(cols, 2);
    const bias = seededArray(cols, 3);
    for (const withBias of [false, true]) {
      const out = empty([rows, cols]);
      scaleColumns(
        out,
        fromArray(x, [rows, cols]),
        fromArray(s, [cols]),
        withBias ? fromArray(bias, [cols]) : undefined,
      );
      const want = x.map((v, i) => v * s[i % cols] + (withBias ? bias[i % cols] : 0));
      assertClose(await out.toArray(), want, 1e-6, `${rows}x${cols} bias=${withBias}`);
    }
  }
});

Deno.test("scaleColumnsBackward gives dx = g ⊙ s and adds Σ_rows g ⊙ x into s.grad", async () => {
  for (const [rows, cols] of SHAPES) {
    const g = seededArray(rows * cols, 4);
    const x = seededArray(rows * cols, 5);
    const s = fromArray(seededArray(cols, 6), [cols], { requiresGrad: true });
    const sv = await s.toArray();
    const dx = empty([rows, cols]);
    for (let pass = 0; pass < 2; pass++) {
      const gt = fromArray(g, [rows, cols]);
      const xt = fromArray(x, [rows, cols]);
      let ds: unknown;
      const labels = await dispatchLabels(() => {
        ds = scaleColumnsBackward(gt, xt, s, dx);
      });
      // s is a leaf, so its gradient went into s.grad.
      assert.equal(ds, null);
      assert.equal(labels.length, rows <= 512 ? 1 : 2, labels.join("; "));
    }
    assertClose(await dx.toArray(), g.map((v, i) => v * sv[i % cols]), 1e-6, `${rows}x${cols} dx`);
    const want = new Float32Array(cols);
    for (let i = 0; i < g.length; i++) want[i % cols] += 2 * g[i] * x[i];
    assertClose(await s.grad!.toArray(), want, 1e-5, `${rows}x${cols} ds after two passes`);
  }
});

Deno.test("scaleColumnsBackward without dx or a trainable s", async () => {
  const rows = 5, cols = 8;
  const g = fromArray(seededArray(rows * cols, 7), [rows, cols]);
  const x = fromArray(seededArray(rows * cols, 8), [rows, cols]);
  const frozen = fromArray(seededArray(cols, 9), [cols]);
  assert.equal(scaleColumnsBackward(g, x, frozen, null), null);
  const dx = empty([rows, cols]);
  assert.equal(scaleColumnsBackward(g, x, frozen, dx), null);
  const want = (await g.toArray()).map((v, i) => v * (seededArray(cols, 9)[i % cols]));
  assertClose(await dx.toArray(), want, 1e-6, "dx with frozen s");
});

Deno.test("scaleColumnsBackward returns ds for an s that is not a leaf", async () => {
  for (const [rows, cols] of SHAPES) {
    const g = seededArray(rows * cols, 10);
    const x = seededArray(rows * cols, 11);
    // The result of an op on a parameter needs a gradient but is no leaf.
    const s = scale(fromArray(seededArray(cols, 12), [cols], { requiresGrad: true }), 2);
    const ds = scaleColumnsBackward(
      fromArray(g, [rows, cols]),
      fromArray(x, [rows, cols]),
      s,
      null,
    );
    assert.ok(ds);
    const want = new Float32Array(cols);
    for (let i = 0; i < g.length; i++) want[i % cols] += g[i] * x[i];
    assertClose(await ds.toArray(), want, 1e-5, `${rows}x${cols} ds`);
    assert.equal(s.grad, null);
  }
});
