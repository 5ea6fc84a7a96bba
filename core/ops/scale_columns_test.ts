import assert from "node:assert/strict";
import { columnSums, scaleColumns, scaleColumnsBackward } from "./scale_columns.ts";
import { scale } from "./elementwise.ts";
import { empty, fromArray, gpu, initGpu, ShapeError } from "../tensor.ts";
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

// Σ_rows g ⊙ x (or Σ_rows g) over [rows, cols] in f64.
function columnSum(g: Float32Array, x: Float32Array | null, cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (let i = 0; i < g.length; i++) out[i % cols] += g[i] * (x ? x[i] : 1);
  return out;
}

Deno.test("columnSums into leaves and tensors", async () => {
  // Widths 12, 8 and 4 take the vec4 kernel, and with a 9 the scalar one. With
  // 1100 rows, each sum adds partial sums in a second pass.
  for (const rows of [150, 1100]) {
    for (const widths of [[12, 8, 4], [12, 9, 4]]) {
      const [n, m] = widths;
      const dy = seededArray(rows * n, 20);
      const z = seededArray(rows * n, 21);
      const dxb = seededArray(rows * m, 22);
      const x = seededArray(rows * m, 23);
      const h = seededArray(rows * widths[2], 24);
      const a = fromArray(seededArray(n, 25), [n], { requiresGrad: true });
      const b = fromArray(seededArray(m, 26), [m], { requiresGrad: true });
      // A gradient that is no leaf's comes back as a new tensor.
      const c = scale(
        fromArray(seededArray(widths[2], 27), [widths[2]], { requiresGrad: true }),
        2,
      );
      const frozen = fromArray(seededArray(n, 28), [n]);
      const dyT = fromArray(dy, [rows, n]);
      for (let pass = 0; pass < 2; pass++) {
        let out: unknown[] = [];
        const labels = await dispatchLabels(() => {
          out = columnSums([
            { g: dyT, x: fromArray(z, [rows, n]), param: a },
            { g: fromArray(dxb, [rows, m]), x: fromArray(x, [rows, m]), param: b },
            { g: dyT, param: frozen },
            { g: fromArray(h, [rows, widths[2]]), param: c },
          ]);
        });
        const name = `${rows} rows, widths ${widths}`;
        assert.equal(out[0], null, name);
        assert.equal(out[1], null, name);
        assert.equal(out[2], null, name);
        assert.ok(out[3], name);
        assertClose(
          await (out[3] as ReturnType<typeof empty>).toArray(),
          columnSum(h, null, widths[2]),
          1e-5,
          `${name} sum without x`,
        );
        // One kernel for all sums, and one sumRows per sum when the rows take several chunks.
        assert.equal(labels.length, rows <= 512 ? 1 : 4, `${name}: ${labels.join("; ")}`);
      }
      const twice = (v: Float64Array) => v.map((e) => 2 * e);
      assertClose(await a.grad!.toArray(), twice(columnSum(dy, z, n)), 1e-5, `${rows} da`);
      assertClose(await b.grad!.toArray(), twice(columnSum(dxb, x, m)), 1e-5, `${rows} db`);
      assert.equal(frozen.grad, null);
    }
  }
});

Deno.test("columnSums binding limit and shapes", async () => {
  const rows = 40, cols = 8;
  const limit = gpu().limits.maxStorageBuffersPerShaderStage;
  // Each sum with x takes 3 bindings, so this many cannot share one kernel.
  const count = Math.floor(limit / 3) + 2;
  const data = Array.from({ length: count }, (_, k) => ({
    g: seededArray(rows * cols, 30 + k),
    x: seededArray(rows * cols, 60 + k),
  }));
  const params = data.map(() => fromArray(new Float32Array(cols), [cols], { requiresGrad: true }));
  const labels = await dispatchLabels(() => {
    columnSums(data.map((d, k) => ({
      g: fromArray(d.g, [rows, cols]),
      x: fromArray(d.x, [rows, cols]),
      param: params[k],
    })));
  });
  assert.equal(labels.length, 2, labels.join("; "));
  for (let k = 0; k < count; k++) {
    assertClose(
      await params[k].grad!.toArray(),
      columnSum(data[k].g, data[k].x, cols),
      1e-5,
      `${k}`,
    );
  }
  assert.throws(
    () =>
      columnSums([{
        g: fromArray(new Float32Array(12), [3, 4]),
        x: fromArray(new Float32Array(12), [4, 3]),
        param: fromArray(new Float32Array(4), [4], { requiresGrad: true }),
      }]),
    ShapeError,
  );
});
