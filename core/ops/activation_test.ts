import assert from "node:assert/strict";
import { silu, swiglu } from "./activation.ts";
import { fromArray, gpu, initGpu } from "../tensor.ts";
import { checkGradients, seededArray } from "../testing.ts";

await initGpu();

function siluRef(x: number): number {
  return x / (1 + Math.exp(-x));
}

Deno.test("silu matches CPU reference", async () => {
  const x = seededArray(7 * 13, 1, -8, 8);
  x[0] = -100;
  x[1] = 100;
  x[2] = 0;
  const y = await silu(fromArray(x, [7, 13])).toArray();
  for (let i = 0; i < x.length; i++) {
    const ref = siluRef(x[i]);
    assert.ok(
      Math.abs(y[i] - ref) <= 1e-6 * Math.max(1, Math.abs(ref)),
      `i=${i}: ${y[i]} vs ${ref}`,
    );
  }
});

Deno.test("swiglu matches CPU reference on bf16", async () => {
  const g = seededArray(65 * 33, 2, -6, 6);
  const u = seededArray(65 * 33, 3);
  const gt = fromArray(g, [65, 33], { dtype: "bf16" });
  const ut = fromArray(u, [65, 33], { dtype: "bf16" });
  const gRounded = await gt.toArray();
  const uRounded = await ut.toArray();
  const y = await swiglu(gt, ut).toArray();
  for (let i = 0; i < g.length; i++) {
    const ref = siluRef(gRounded[i]) * uRounded[i];
    assert.ok(
      Math.abs(y[i] - ref) <= 1e-6 * Math.max(1, Math.abs(ref)),
      `i=${i}: ${y[i]} vs ${ref}`,
    );
  }
});

Deno.test("swiglu splits large tensors", async () => {
  const g = seededArray(65 * 33, 4, -4, 4);
  const u = seededArray(65 * 33, 5);
  const whole = await swiglu(fromArray(g, [65, 33]), fromArray(u, [65, 33])).toArray();
  const limit = gpu().bindingLimit;
  gpu().bindingLimit = 1024;
  try {
    const split = await swiglu(fromArray(g, [65, 33]), fromArray(u, [65, 33])).toArray();
    assert.deepEqual(split, whole);
  } finally {
    gpu().bindingLimit = limit;
  }
});

Deno.test("silu and swiglu gradients", async () => {
  for (const shape of [[1, 1], [7, 13], [65, 33]]) {
    const n = shape[0] * shape[1];
    const rs = await checkGradients(([x]) => silu(x), [{ data: seededArray(n, 6, -4, 4), shape }]);
    assert.ok(rs.maxRelError[0] < 1e-3, `silu ${shape}: ${rs.maxRelError}`);

    const rg = await checkGradients(([g, u]) => swiglu(g, u), [
      { data: seededArray(n, 7, -4, 4), shape },
      { data: seededArray(n, 8), shape },
    ]);
    assert.ok(rg.maxRelError[0] < 1e-3, `swiglu gate ${shape}: ${rg.maxRelError}`);
    assert.ok(rg.maxRelError[1] < 1e-3, `swiglu up ${shape}: ${rg.maxRelError}`);
  }
});

Deno.test("swiglu gradient of up alone", async () => {
  const rep = await checkGradients(([g, u]) => swiglu(g, u), [
    { data: seededArray(91, 9, -4, 4), shape: [7, 13], requiresGrad: false },
    { data: seededArray(91, 10), shape: [7, 13] },
  ]);
  assert.equal(rep.checked[0], 0);
  assert.ok(rep.maxRelError[1] < 1e-3, `swiglu up: ${rep.maxRelError}`);
});

Deno.test("swiglu rejects mismatched shapes", () => {
  assert.throws(
    () => swiglu(fromArray(seededArray(6, 1), [2, 3]), fromArray(seededArray(6, 2), [3, 2])),
    /swiglu: gate 2x3 and up 3x2/,
  );
});
