import assert from "node:assert/strict";
import { rope } from "./rope.ts";
import { fromArray, gpu, initGpu, ShapeError } from "../tensor.ts";
import { checkGradients, seededArray } from "../testing.ts";

await initGpu();

// transformers' rotate-half RoPE: inv_freq_i = θ^(−2i/D) in f32, angle = f32(pos · inv_freq_i),
// then cos and sin, here in f64.
function ropeRef(
  x: ArrayLike<number>,
  shape: number[],
  theta: number,
  offset: number,
): Float64Array {
  const [batch, seq, heads, dim] = shape;
  const half = dim / 2;
  const out = new Float64Array(x.length);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seq; t++) {
      for (let h = 0; h < heads; h++) {
        const base = ((b * seq + t) * heads + h) * dim;
        for (let i = 0; i < half; i++) {
          const invFreq = Math.fround(theta ** (-(2 * i) / dim));
          const angle = Math.fround((offset + t) * invFreq);
          const [c, s] = [Math.cos(angle), Math.sin(angle)];
          const [x1, x2] = [x[base + i], x[base + i + half]];
          out[base + i] = x1 * c - x2 * s;
          out[base + i + half] = x2 * c + x1 * s;
        }
      }
    }
  }
  return out;
}

function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  label: string,
) {
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tol,
      `${label}[${i}]: ${actual[i]} vs ${expected[i]}`,
    );
  }
}

Deno.test("rope matches CPU reference", async () => {
  const cases: [number[], number, number][] = [
    [[1, 1, 1, 2], 10000, 0],
    [[2, 7, 3, 10], 1e6, 0],
    [[1, 13, 2, 8], 5e5, 37],
    // Angles near 9e4 rad at the highest frequency exercise the range reduction.
    [[1, 5, 1, 64], 1e6, 90000],
  ];
  for (const [shape, theta, offset] of cases) {
    const x = seededArray(shape.reduce((a, b) => a * b), shape[3] + offset);
    const y = await rope(fromArray(x, shape), theta, offset).toArray();
    assertClose(y, ropeRef(x, shape, theta, offset), 2e-6, `rope ${shape} θ=${theta} +${offset}`);
  }
});

Deno.test("rope of bf16 input", async () => {
  const shape = [1, 3, 2, 6];
  const t = fromArray(seededArray(36, 1), shape, { dtype: "bf16" });
  const rounded = await t.toArray();
  assertClose(await rope(t, 1e4, 5).toArray(), ropeRef(rounded, shape, 1e4, 5), 2e-6, "bf16");
});

Deno.test("rope splits large tensors", async () => {
  const shape = [2, 9, 5, 14];
  const x = seededArray(2 * 9 * 5 * 14, 2);
  const whole = await rope(fromArray(x, shape), 1e4, 3).toArray();
  const limit = gpu().bindingLimit;
  gpu().bindingLimit = 1024;
  try {
    // 191 f32 elements per window: 13 rows of 14 per block, 90 rows.
    const before = gpu().dispatchCount;
    const split = await rope(fromArray(x, shape), 1e4, 3).toArray();
    assert.equal(gpu().dispatchCount - before, 7);
    assert.deepEqual(split, whole);
    const rep = await checkGradients(([a]) => rope(a, 1e4, 3), [{ data: x, shape }]);
    assert.ok(rep.maxRelError[0] < 1e-3, `split gradient: ${rep.maxRelError}`);
  } finally {
    gpu().bindingLimit = limit;
  }
});

Deno.test("rope gradients", async () => {
  for (const shape of [[1, 1, 1, 2], [1, 7, 1, 26], [2, 5, 3, 22]]) {
    const rep = await checkGradients(([a]) => rope(a, 1e4, 11), [
      { data: seededArray(shape.reduce((a, b) => a * b), 3), shape },
    ]);
    assert.ok(rep.maxRelError[0] < 1e-3, `rope ${shape}: ${rep.maxRelError}`);
  }
});

Deno.test("rope rejects odd head dimension", () => {
  assert.throws(
    () => rope(fromArray(seededArray(6, 1), [1, 2, 1, 3]), 1e4),
    (e) => e instanceof ShapeError && /1x2x1x3/.test(e.message),
  );
  assert.throws(() => rope(fromArray(seededArray(8, 1), [1, 2, 1, 4]), 1e4, -1), RangeError);
});
