import assert from "node:assert/strict";
import { gemm, type GemmConfig, gemmSum, linear, matmul, setGemmConfig } from "./matmul.ts";
import { backward } from "../autograd.ts";
import { add } from "./elementwise.ts";
import {
  bf16ToF32,
  type DType,
  empty,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromArray,
  gpu,
  initGpu,
  ShapeError,
  type Tensor,
} from "../tensor.ts";
import { checkGradients, dispatchLabels, seededArray } from "../testing.ts";

await initGpu();

// The configuration a GPU adapter gets, forced here so that both kernel
// configurations run on whatever adapter the tests use.
const GPU_CONFIG: GemmConfig = { workgroupX: 16, workgroupY: 16, tileM: 4, tileN: 4 };

// (m, n, k): single elements, shapes that are no multiple of 4 (scalar
// kernel), and multiples of 4 that are no multiple of a tile (vec4 kernel).
const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [7, 13, 5],
  [65, 33, 17],
  [130, 70, 260],
  [36, 20, 12],
  [132, 68, 260],
];

/** C = op(A) op(B) in f64 for row-major A ([m, k] or [k, m]) and B ([k, n] or [n, k]). */
function reference(
  a: Float32Array,
  b: Float32Array,
  m: number,
  n: number,
  k: number,
  transA = false,
  transB = false,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) {
        const x = transA ? a[q * m + i] : a[i * k + q];
        const y = transB ? b[j * k + q] : b[q * n + j];
        s += x * y;
      }
      c[i * n + j] = s;
    }
  }
  return c;
}

/** Largest |got − want| / (1 + |want|). */
function maxError(got: Float32Array, want: Float64Array): number {
  assert.equal(got.length, want.length);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const e = Math.abs(got[i] - want[i]) / (1 + Math.abs(want[i]));
    if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
  }
  return worst;
}

/** Values as the GPU reads them after storing in `dtype`. */
function rounded(x: Float32Array, dtype: DType): Float32Array {
  if (dtype === "bf16") return x.map((v) => bf16ToF32(f32ToBf16(v)));
  if (dtype === "f16") return x.map((v) => f16ToF32(f32ToF16(v)));
  return x;
}

async function withConfig<T>(config: GemmConfig | null, fn: () => Promise<T>): Promise<T> {
  setGemmConfig(config);
  try {
    return await fn();
  } finally {
    setGemmConfig(null);
  }
}

async function withBindingLimit<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
  const g = gpu();
  const saved = g.bindingLimit;
  g.bindingLimit = bytes;
  try {
    return await fn();
  } finally {
    g.bindingLimit = saved;
  }
}

Deno.test("matmul matches CPU for all transposes", async () => {
  for (const config of [null, GPU_CONFIG]) {
    await withConfig(config, async () => {
      for (const [m, n, k] of SHAPES) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const a = seededArray(m * k, 1);
            const b = seededArray(k * n, 2);
            const out = matmul(
              fromArray(a, transA ? [k, m] : [m, k]),
              fromArray(b, transB ? [n, k] : [k, n]),
              { transA, transB },
            );
            assert.deepEqual(out.shape, [m, n]);
            const err = maxError(await out.toArray(), reference(a, b, m, n, k, transA, transB));
            const name = `${
              config ? "gpu" : "auto"
            } config ${m}x${n}x${k} transA=${transA} transB=${transB}`;
            assert.ok(err < 1e-5, `${name}: error ${err}`);
          }
        }
      }
    });
  }
});

Deno.test("matmul batched with shared and batched B", async () => {
  const [m, n, k] = [9, 12, 8];
  const batch = [2, 3];
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      for (const batchedB of [false, true]) {
        const a = seededArray(6 * m * k, 3);
        const b = seededArray((batchedB ? 6 : 1) * k * n, 4);
        const bShape = transB ? [n, k] : [k, n];
        const out = matmul(
          fromArray(a, [...batch, ...(transA ? [k, m] : [m, k])]),
          fromArray(b, batchedB ? [...batch, ...bShape] : bShape),
          { transA, transB },
        );
        assert.deepEqual(out.shape, [...batch, m, n]);
        const got = await out.toArray();
        for (let z = 0; z < 6; z++) {
          const az = a.subarray(z * m * k, (z + 1) * m * k);
          const bz = batchedB ? b.subarray(z * k * n, (z + 1) * k * n) : b;
          const err = maxError(
            got.subarray(z * m * n, (z + 1) * m * n),
            reference(az, bz, m, n, k, transA, transB),
          );
          assert.ok(
            err < 1e-5,
            `batch ${z} transA=${transA} transB=${transB} batchedB=${batchedB}: ${err}`,
          );
        }
      }
    }
  }
});

Deno.test("matmul with 2-D A and batched B", async () => {
  const [m, n, k] = [5, 7, 6];
  const a = seededArray(m * k, 5);
  const b = seededArray(3 * k * n, 6);
  const out = matmul(fromArray(a, [m, k]), fromArray(b, [3, k, n]));
  assert.deepEqual(out.shape, [3, m, n]);
  const got = await out.toArray();
  for (let z = 0; z < 3; z++) {
    const want = reference(a, b.subarray(z * k * n, (z + 1) * k * n), m, n, k);
    assert.ok(maxError(got.subarray(z * m * n, (z + 1) * m * n), want) < 1e-5);
  }
});

Deno.test("matmul with bf16 and f16 operands", async () => {
  const dtypes: DType[] = gpu().hasF16 ? ["bf16", "f16"] : ["bf16"];
  for (const dtype of dtypes) {
    for (const [m, n, k] of [[7, 13, 5], [36, 20, 12], [64, 48, 32]] as const) {
      for (const transB of [false, true]) {
        const a = seededArray(m * k, 7);
        const b = seededArray(k * n, 8);
        const out = matmul(
          fromArray(a, [m, k]),
          fromArray(b, transB ? [n, k] : [k, n], { dtype }),
          { transB },
        );
        const want = reference(a, rounded(b, dtype), m, n, k, false, transB);
        const err = maxError(await out.toArray(), want);
        assert.ok(err < 1e-5, `${dtype} B ${m}x${n}x${k} transB=${transB}: ${err}`);
      }
      // A 16-bit A operand, transposed, on the vec4 and scalar paths.
      const a = seededArray(m * k, 9);
      const b = seededArray(k * n, 10);
      const out = matmul(fromArray(a, [k, m], { dtype }), fromArray(b, [k, n]), { transA: true });
      const err = maxError(await out.toArray(), reference(rounded(a, dtype), b, m, n, k, true));
      assert.ok(err < 1e-5, `${dtype} A ${m}x${n}x${k}: ${err}`);
    }
  }
});

Deno.test("gemm scales and accumulates into C", async () => {
  for (const [m, n, k] of [[7, 13, 5], [36, 20, 12]] as const) {
    const a = seededArray(m * k, 11);
    const b = seededArray(k * n, 12);
    const c0 = seededArray(m * n, 13);
    const c = fromArray(c0, [m, n]);
    gemm(c, fromArray(a, [m, k]), fromArray(b, [k, n]), { alpha: 0.5, beta: 2 });
    const ab = reference(a, b, m, n, k);
    const want = ab.map((v, i) => 0.5 * v + 2 * c0[i]);
    const err = maxError(await c.toArray(), want);
    assert.ok(err < 1e-5, `${m}x${n}x${k}: ${err}`);
  }
});

// C = alpha (op(A1) op(B1) + op(A2) op(B2)) + beta C0 + bias and its scaled
// copy Y = C ⊙ scale + bias2 through gemmSum, against the CPU; returns the
// larger error of C and Y and the number of dispatches.
async function gemmSumCase(
  m: number,
  n: number,
  k1: number,
  k2: number,
  transA: boolean,
  transB: boolean,
  dtypeB: DType,
) {
  const a1 = seededArray(m * k1, 40);
  const b1 = rounded(seededArray(k1 * n, 41), dtypeB);
  const a2 = seededArray(m * k2, 42);
  const b2 = rounded(seededArray(k2 * n, 43), dtypeB);
  const c0 = seededArray(m * n, 44);
  const bias = seededArray(n, 45);
  const c = fromArray(c0, [m, n]);

  const scale = seededArray(n, 50);
  const bias2 = seededArray(n, 51);
  const y = empty([m, n]);

  const shapeA = (k: number) => (transA ? [k, m] : [m, k]);
  const shapeB = (k: number) => (transB ? [n, k] : [k, n]);
  const g = gpu();
  const before = g.dispatchCount;
  gemmSum(
    c,
    fromArray(a1, shapeA(k1)),
    fromArray(b1, shapeB(k1), { dtype: dtypeB }),
    fromArray(a2, shapeA(k2)),
    fromArray(b2, shapeB(k2), { dtype: dtypeB }),
    {
      transA,
      transB,
      alpha: 0.5,
      beta: 2,
      bias: fromArray(bias, [n]),
      scaledCopy: { out: y, scale: fromArray(scale, [n]), bias: fromArray(bias2, [n]) },
    },
  );
  const dispatches = g.dispatchCount - before;

  const p1 = reference(a1, b1, m, n, k1, transA, transB);
  const p2 = reference(a2, b2, m, n, k2, transA, transB);
  const want = p1.map((v, i) => 0.5 * (v + p2[i]) + 2 * c0[i] + bias[i % n]);
  const wantY = want.map((v, i) => v * scale[i % n] + bias2[i % n]);
  const err = Math.max(
    maxError(await c.toArray(), want),
    maxError(await y.toArray(), wantY),
  );
  return { err, dispatches };
}

Deno.test("gemmSum adds two products with different K and a scaled copy in one dispatch", async () => {
  for (const config of [null, GPU_CONFIG]) {
    await withConfig(config, async () => {
      // Multiples of 4 take the vec4 kernel, the others the scalar one.
      for (const [m, n, k1, k2] of [[36, 20, 12, 8], [7, 13, 5, 3], [64, 32, 128, 32]]) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            for (const dtype of ["f32", "bf16"] as const) {
              const name = `${config ? "gpu" : "auto"} ${m}x${n} K ${k1}+${k2} ` +
                `transA=${transA} transB=${transB} ${dtype}`;
              const r = await gemmSumCase(m, n, k1, k2, transA, transB, dtype);
              assert.ok(r.err < 1e-5, `${name}: error ${r.err}`);
              assert.equal(r.dispatches, 1, `${name}: ${r.dispatches} dispatches`);
            }
          }
        }
      }
    });
  }
});

Deno.test("gemmSum falls back to two GEMMs when operands need blocks", async () => {
  const g = gpu();
  const saved = g.bindingLimit;
  try {
    // 1024-byte bindings cannot hold a 36 × 12 operand, so the products are split
    // and the scaled copy is a separate kernel.
    g.bindingLimit = 1024;
    const r = await gemmSumCase(36, 20, 12, 8, false, true, "f32");
    assert.ok(r.err < 1e-5, `error ${r.err}`);
    assert.ok(r.dispatches > 2, `${r.dispatches} dispatches`);
  } finally {
    g.bindingLimit = saved;
  }
  assert.throws(
    () =>
      gemmSum(
        empty([4, 4]),
        fromArray(new Float32Array(8), [4, 2]),
        fromArray(new Float32Array(8), [2, 4]),
        fromArray(new Float32Array(12), [4, 3]),
        fromArray(new Float32Array(15), [3, 5]),
      ),
    /gemmSum: products differ in shape/,
  );
});

// The fallback adapter's tiles, computing a C narrower than 8 × 16 columns as Cᵀ.
const NARROW_CONFIG: GemmConfig = {
  workgroupX: 8,
  workgroupY: 1,
  tileM: 16,
  tileN: 16,
  transposeNarrow: true,
};

Deno.test("narrow C computed as Cᵀ matches CPU with bias, alpha and beta", async () => {
  await withConfig(NARROW_CONFIG, async () => {
    // Multiples of 4 (vec4 kernel) and not (scalar kernel); N below the 8 × 16 columns.
    for (const [m, n, k] of [[132, 20, 36], [65, 33, 17]] as const) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          const a = seededArray(m * k, 46);
          const b = seededArray(k * n, 47);
          const c0 = seededArray(m * n, 48);
          const bias = seededArray(n, 49);
          const c = fromArray(c0, [m, n]);
          const labels = await dispatchLabels(() => {
            gemm(
              c,
              fromArray(a, transA ? [k, m] : [m, k]),
              fromArray(b, transB ? [n, k] : [k, n]),
              {
                transA,
                transB,
                alpha: 0.5,
                beta: 2,
                bias: fromArray(bias, [n]),
              },
            );
          });
          const name = `${m}x${n}x${k} transA=${transA} transB=${transB}`;
          assert.ok(
            labels.length > 0 && labels.every((l) => l.includes("as Cᵀ")),
            `${name}: ${labels.join("; ")}`,
          );
          const ab = reference(a, b, m, n, k, transA, transB);
          const want = ab.map((v, i) => 0.5 * v + bias[i % n] + 2 * c0[i]);
          const err = maxError(await c.toArray(), want);
          assert.ok(err < 1e-5, `${name}: error ${err}`);
        }
      }
    }
  });
});

Deno.test("gemm with beta 0 ignores NaN in C", async () => {
  const c = fromArray(new Float32Array(4 * 8).fill(NaN), [4, 8]);
  const a = seededArray(4 * 4, 14);
  const b = seededArray(4 * 8, 15);
  gemm(c, fromArray(a, [4, 4]), fromArray(b, [4, 8]));
  assert.ok(maxError(await c.toArray(), reference(a, b, 4, 8, 4)) < 1e-5);
});

Deno.test("gemm sums over the batch into 2-D C", async () => {
  const [m, n, k] = [6, 8, 4];
  for (const transA of [false, true]) {
    const a = seededArray(3 * m * k, 16);
    const b = seededArray(3 * k * n, 17);
    const c = empty([m, n]);
    gemm(c, fromArray(a, [3, ...(transA ? [k, m] : [m, k])]), fromArray(b, [3, k, n]), { transA });
    const want = new Float64Array(m * n);
    for (let z = 0; z < 3; z++) {
      const part = reference(
        a.subarray(z * m * k, (z + 1) * m * k),
        b.subarray(z * k * n, (z + 1) * k * n),
        m,
        n,
        k,
        transA,
      );
      part.forEach((v, i) => (want[i] += v));
    }
    const err = maxError(await c.toArray(), want);
    assert.ok(err < 1e-5, `transA=${transA}: ${err}`);
  }
});

Deno.test("linear adds bias to x Wᵀ", async () => {
  for (const [rows, inF, outF] of [[7, 5, 13], [12, 16, 20]] as const) {
    const x = seededArray(rows * inF, 18);
    const w = seededArray(outF * inF, 19);
    const bias = seededArray(outF, 20);
    const y = linear(fromArray(x, [rows, inF]), fromArray(w, [outF, inF]), fromArray(bias, [outF]));
    assert.deepEqual(y.shape, [rows, outF]);
    const want = reference(x, w, rows, outF, inF, false, true).map((v, i) => v + bias[i % outF]);
    const err = maxError(await y.toArray(), want);
    assert.ok(err < 1e-5, `${rows}x${inF} -> ${outF}: ${err}`);
  }
});

Deno.test("matmul gradients for all transposes", async () => {
  const [m, n, k] = [7, 13, 5];
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      const rep = await checkGradients(([a, b]) => matmul(a, b, { transA, transB }), [
        { data: seededArray(m * k, 21), shape: transA ? [k, m] : [m, k] },
        { data: seededArray(k * n, 22), shape: transB ? [n, k] : [k, n] },
      ]);
      for (const [i, e] of rep.maxRelError.entries()) {
        assert.ok(e < 1e-2, `input ${i} transA=${transA} transB=${transB}: ${e}`);
      }
    }
  }
});

Deno.test("matmul gradients batched with shared operand", async () => {
  const [m, n, k] = [6, 5, 7];
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      // Batched A with a shared B: dB sums over the batch.
      const rep = await checkGradients(([a, b]) => matmul(a, b, { transA, transB }), [
        { data: seededArray(2 * m * k, 23), shape: [2, ...(transA ? [k, m] : [m, k])] },
        { data: seededArray(k * n, 24), shape: transB ? [n, k] : [k, n] },
      ]);
      for (const [i, e] of rep.maxRelError.entries()) {
        assert.ok(e < 1e-2, `input ${i} transA=${transA} transB=${transB}: ${e}`);
      }
    }
  }
  // Shared A with a batched B: dA sums over the batch.
  const rep = await checkGradients(([a, b]) => matmul(a, b), [
    { data: seededArray(m * k, 25), shape: [m, k] },
    { data: seededArray(3 * k * n, 26), shape: [3, k, n] },
  ]);
  for (const [i, e] of rep.maxRelError.entries()) assert.ok(e < 1e-2, `input ${i}: ${e}`);
});

Deno.test("linear gradients of x, weight and bias", async () => {
  const rep = await checkGradients(([x, w, b]) => linear(x, w, b), [
    { data: seededArray(2 * 3 * 5, 27), shape: [2, 3, 5] },
    { data: seededArray(7 * 5, 28), shape: [7, 5] },
    { data: seededArray(7, 29), shape: [7] },
  ]);
  for (const [i, e] of rep.maxRelError.entries()) assert.ok(e < 1e-2, `input ${i}: ${e}`);
});

// Runs forward and backward of x Wᵀ and returns the gemm dispatch labels of backward.
async function backwardGemmLabels(x: Tensor, w: Tensor): Promise<string[]> {
  const y = linear(x, w);
  const labels = await dispatchLabels(() =>
    backward(y, fromArray(seededArray(y.numel, 30), [...y.shape]))
  );
  return labels.filter((l) => l.startsWith("gemm"));
}

Deno.test("frozen weight gets no gradient or dW kernel", async () => {
  const x = fromArray(seededArray(6 * 4, 31), [6, 4], { requiresGrad: true });
  const w = fromArray(seededArray(8 * 4, 32), [8, 4], { requiresGrad: false });
  const before = gpu().dispatchCount;
  const frozen = await backwardGemmLabels(x, w);
  assert.equal(frozen.length, 1, `backward gemm dispatches: ${frozen.join("; ")}`);
  assert.ok(gpu().dispatchCount > before);
  assert.equal(w.grad, null);
  assert.notEqual(x.grad, null);

  // dx = dy W, checked against the CPU.
  const dy = seededArray(6 * 8, 30);
  const want = reference(dy, seededArray(8 * 4, 32), 6, 4, 8);
  assert.ok(maxError(await x.grad!.toArray(), want) < 1e-5);

  const trained = fromArray(seededArray(8 * 4, 32), [8, 4], { requiresGrad: true });
  const both = await backwardGemmLabels(
    fromArray(seededArray(6 * 4, 31), [6, 4], { requiresGrad: true }),
    trained,
  );
  assert.equal(both.length, 2, `backward gemm dispatches: ${both.join("; ")}`);
  assert.notEqual(trained.grad, null);
});

Deno.test("leaf gradients accumulate in place over uses and backward passes", async () => {
  // y = (x Wᵀ + bias) + x Wᵀ, and two backward passes run before the gradients
  // are read: W.grad must sum four dyᵀ x products and x.grad four dy W products.
  const rows = 6, n = 8, m = 4;
  const xv = seededArray(rows * m, 33);
  const wv = seededArray(n * m, 34);
  const x = fromArray(xv, [rows, m], { requiresGrad: true });
  const w = fromArray(wv, [n, m], { requiresGrad: true });
  const bias = fromArray(seededArray(n, 35), [n], { requiresGrad: true });
  const seeds = [seededArray(rows * n, 36), seededArray(rows * n, 37)];
  const labels = await dispatchLabels(() => {
    for (const seed of seeds) {
      const y = add(linear(x, w, bias), linear(x, w));
      backward(y, fromArray(seed, [rows, n]));
    }
  });
  // x, W and bias are leaves: nothing is copied into their gradients afterwards.
  assert.deepEqual(labels.filter((l) => l.startsWith("addInto")), []);

  const dw = new Float64Array(n * m);
  const dx = new Float64Array(rows * m);
  const db = new Float64Array(n);
  for (const seed of seeds) {
    // Per pass: dW += 2 dyᵀ x, dx += 2 dy W, dbias += Σ_rows dy.
    const dyT = new Float32Array(n * rows);
    for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) dyT[j * rows + r] = seed[r * n + j];
    const gw = reference(dyT, xv, n, m, rows);
    const gx = reference(seed, wv, rows, m, n);
    for (let i = 0; i < dw.length; i++) dw[i] += 2 * gw[i];
    for (let i = 0; i < dx.length; i++) dx[i] += 2 * gx[i];
    for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) db[j] += seed[r * n + j];
  }
  assert.ok(maxError(await w.grad!.toArray(), dw) < 1e-4);
  assert.ok(maxError(await x.grad!.toArray(), dx) < 1e-4);
  assert.ok(maxError(await bias.grad!.toArray(), db) < 1e-4);
});

Deno.test("matmul shape mismatch names both shapes", () => {
  const a = empty([4, 5]);
  const b = empty([6, 7]);
  assert.throws(() => matmul(a, b), (e: unknown) => {
    assert.ok(e instanceof ShapeError);
    assert.match(e.message, /matmul: inner dimensions differ: 4x5 @ 6x7/);
    return true;
  });
  assert.throws(() => matmul(empty([2, 4, 5]), empty([3, 5, 7])), ShapeError);
  assert.throws(() => linear(empty([3, 5]), empty([7, 4])), /3x5 @ 7x4/);
  assert.throws(() => gemm(empty([4, 6]), a, empty([5, 7])), /4x6/);
});

// Forward and both gradients of `f`, as CPU arrays.
async function forwardAndGrads(
  f: (a: Tensor, b: Tensor) => Tensor,
  a: { data: Float32Array; shape: number[]; dtype?: DType },
  b: { data: Float32Array; shape: number[]; dtype?: DType },
  seed: number,
) {
  const ta = fromArray(a.data, a.shape, { requiresGrad: true, dtype: a.dtype });
  const tb = fromArray(b.data, b.shape, { requiresGrad: true, dtype: b.dtype });
  const y = f(ta, tb);
  const out = await y.toArray();
  backward(y, fromArray(seededArray(y.numel, seed), [...y.shape]));
  return [out, await ta.grad!.toArray(), await tb.grad!.toArray()];
}

Deno.test("binding split equals unsplit", async () => {
  // Each case is f(A, B) with its gradients. A 4 KiB binding covers 959 f32.
  const cases: [string, (a: Tensor, b: Tensor) => Tensor, number[], number[], DType?][] = [
    ["plain", (a, b) => matmul(a, b), [130, 260], [260, 70]],
    ["aligned", (a, b) => matmul(a, b), [132, 260], [260, 68]],
    ["tied head x Eᵀ", (a, b) => linear(a, b), [24, 64], [300, 64]],
    ["bf16 head", (a, b) => linear(a, b), [24, 64], [300, 64], "bf16"],
    ["transA", (a, b) => matmul(a, b, { transA: true }), [96, 40], [96, 52]],
    ["batched", (a, b) => matmul(a, b), [3, 40, 36], [3, 36, 44]],
    ["batched shared B", (a, b) => matmul(a, b), [3, 40, 36], [36, 44]],
  ];
  for (const [name, f, aShape, bShape, dtypeB] of cases) {
    const a = { data: seededArray(aShape.reduce((p, q) => p * q), 33), shape: aShape };
    const b = {
      data: seededArray(bShape.reduce((p, q) => p * q), 34),
      shape: bShape,
      dtype: dtypeB,
    };
    const whole = await forwardAndGrads(f, a, b, 35);
    const split = await withBindingLimit(4096, () => forwardAndGrads(f, a, b, 35));
    for (const [i, what] of ["output", "dA", "dB"].entries()) {
      let worst = 0;
      for (let j = 0; j < whole[i].length; j++) {
        worst = Math.max(worst, Math.abs(whole[i][j] - split[i][j]) / (1 + Math.abs(whole[i][j])));
      }
      assert.ok(worst < 1e-5, `${name} ${what}: ${worst}`);
    }
  }
});

// Forces split-K on small problems: at most 8 k per slice is far below the
// adapters' defaults, so every shape below is cut into several slices, the
// last one shorter than the others when K is odd.
const SPLIT_CONFIGS: [string, GemmConfig][] = [
  ["fallback", {
    workgroupX: 8,
    workgroupY: 1,
    tileM: 16,
    tileN: 16,
    splitKWorkgroups: 64,
    splitKMinK: 8,
  }],
  ["gpu", { ...GPU_CONFIG, splitKWorkgroups: 64, splitKMinK: 8 }],
];

// Runs `fn` and returns the labels of the gemm dispatches it records.
async function gemmLabels(fn: () => Promise<void>): Promise<string[]> {
  return (await dispatchLabels(fn)).filter((l) => l.startsWith("gemm"));
}

Deno.test("split-K matches CPU for all transposes", async () => {
  // (m, n, k): scalar kernel with a short last slice, and vec4 kernel.
  const shapes: [number, number, number][] = [[7, 13, 301], [33, 20, 260], [36, 20, 124]];
  for (const [name, config] of SPLIT_CONFIGS) {
    await withConfig(config, async () => {
      for (const [m, n, k] of shapes) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const a = seededArray(m * k, 40);
            const b = seededArray(k * n, 41);
            const caseName = `${name} ${m}x${n}x${k} transA=${transA} transB=${transB}`;
            let out: Tensor | null = null;
            const labels = await gemmLabels(async () => {
              out = matmul(
                fromArray(a, transA ? [k, m] : [m, k]),
                fromArray(b, transB ? [n, k] : [k, n]),
                { transA, transB },
              );
              await gpu().sync();
            });
            assert.ok(
              labels.some((l) => l.includes("split-K")),
              `${caseName}: ${labels.join("; ")}`,
            );
            assert.ok(
              labels.some((l) => l.startsWith("gemm_splitk_sum")),
              `${caseName}: no sum pass`,
            );
            const err = maxError(await out!.toArray(), reference(a, b, m, n, k, transA, transB));
            assert.ok(err < 1e-5, `${caseName}: error ${err}`);
          }
        }
      }
    });
  }
});

Deno.test("split-K applies alpha, beta and bias", async () => {
  for (const [name, config] of SPLIT_CONFIGS) {
    await withConfig(config, async () => {
      for (const [m, n, k] of [[7, 13, 301], [36, 20, 124]] as const) {
        const a = seededArray(m * k, 42);
        const b = seededArray(k * n, 43);
        const c0 = seededArray(m * n, 44);
        const bias = seededArray(n, 45);
        const c = fromArray(c0, [m, n]);
        const labels = await gemmLabels(async () => {
          gemm(c, fromArray(a, [m, k]), fromArray(b, [n, k]), {
            transB: true,
            alpha: 0.5,
            beta: 2,
            bias: fromArray(bias, [n]),
          });
          await gpu().sync();
        });
        assert.ok(labels.some((l) => l.includes("split-K")), `${name}: ${labels.join("; ")}`);
        const ab = reference(a, b, m, n, k, false, true);
        const want = ab.map((v, i) => 0.5 * v + bias[i % n] + 2 * c0[i]);
        const err = maxError(await c.toArray(), want);
        assert.ok(err < 1e-5, `${name} ${m}x${n}x${k}: ${err}`);
      }
    });
  }
});

Deno.test("split-K with bf16 operand and binding split", async () => {
  // A 4 KiB binding covers 959 f32, so K is also cut into blocks that
  // accumulate with beta = 1, and each block is split again. A is stored
  // [k, m] because a block needs at least 4 of its rows in one binding.
  const [m, n, k] = [6, 8, 600];
  const a = seededArray(m * k, 46);
  const b = seededArray(k * n, 47);
  await withConfig(SPLIT_CONFIGS[0][1], async () => {
    for (const dtype of ["f32", "bf16"] as DType[]) {
      const c = empty([m, n]);
      const labels = await withBindingLimit(4096, () =>
        gemmLabels(async () => {
          gemm(c, fromArray(a, [k, m]), fromArray(b, [k, n], { dtype }), { transA: true });
          await gpu().sync();
        }));
      const blocks = labels.filter((l) => l.includes("split-K"));
      assert.ok(blocks.length > 1, `${dtype}: ${labels.join("; ")}`);
      const err = maxError(await c.toArray(), reference(a, rounded(b, dtype), m, n, k, true));
      assert.ok(err < 1e-5, `${dtype}: ${err}`);
    }
  });
});

Deno.test("default config splits long K correctly", async () => {
  // Few output tiles and K = 4100: the fallback adapter's defaults split it
  // into slices; a GPU adapter may or may not, and the values must match
  // either way.
  const [m, n, k] = [20, 12, 4100];
  for (const transA of [false, true]) {
    const a = seededArray(m * k, 48);
    const b = seededArray(k * n, 49);
    const out = matmul(fromArray(a, transA ? [k, m] : [m, k]), fromArray(b, [k, n]), { transA });
    // f32 rounding error grows with K: 1e-5 holds up to K of a few hundred.
    const err = maxError(await out.toArray(), reference(a, b, m, n, k, transA));
    assert.ok(err < 1e-4, `transA=${transA}: ${err}`);
  }
});

// C = alpha · diag(sm) · op(A) · diag(sk) · op(B) · diag(sn) + bias + addend, and its scaled
// copy Y = C ⊙ scale + bias2, through gemm against the CPU. Returns the larger
// error of C and Y and the gemm dispatch labels.
async function scaledGemmCase(
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  dtype: DType,
  withCopy: boolean,
) {
  const a = seededArray(m * k, 60);
  const b = rounded(seededArray(k * n, 61), dtype);
  const sk = rounded(seededArray(k, 62), dtype);
  const sm = rounded(seededArray(m, 69), dtype);
  const sn = seededArray(n, 63);
  const bias = seededArray(n, 64);
  const addend = rounded(seededArray(m * n, 65), dtype);
  const scale = seededArray(n, 66);
  const bias2 = seededArray(n, 67);
  const c = fromArray(seededArray(m * n, 68), [m, n]);
  const y = empty([m, n]);
  const labels = await gemmLabels(async () => {
    gemm(
      c,
      fromArray(a, transA ? [k, m] : [m, k]),
      fromArray(b, transB ? [n, k] : [k, n], { dtype }),
      {
        transA,
        transB,
        alpha: 0.5,
        bias: fromArray(bias, [n]),
        scaleK: fromArray(sk, [k], { dtype }),
        scaleM: fromArray(sm, [m], { dtype }),
        scaleN: fromArray(sn, [n]),
        addend: fromArray(addend, [m, n], { dtype }),
        scaledCopy: withCopy
          ? { out: y, scale: fromArray(scale, [n]), bias: fromArray(bias2, [n]) }
          : undefined,
      },
    );
    await gpu().sync();
  });

  // Scaling B's rows by sk on the CPU gives op(A) · diag(sk) · op(B).
  const bs = b.map((v, i) => v * sk[transB ? i % k : Math.floor(i / n)]);
  const ab = reference(a, bs, m, n, k, transA, transB);
  const want = ab.map((v, i) =>
    0.5 * sm[Math.floor(i / n)] * v * sn[i % n] + bias[i % n] + addend[i]
  );
  let err = maxError(await c.toArray(), want);
  if (withCopy) {
    const wantY = want.map((v, i) => v * scale[i % n] + bias2[i % n]);
    err = Math.max(err, maxError(await y.toArray(), wantY));
  }
  return { err, labels };
}

Deno.test("gemm scales, addend and scaled copy", async () => {
  const configs: [string, GemmConfig | null][] = [
    ["auto", null],
    ["gpu", GPU_CONFIG],
    ["narrow", NARROW_CONFIG],
    ...SPLIT_CONFIGS.map(([n, c]): [string, GemmConfig] => [`split-K ${n}`, c]),
  ];
  for (const [name, config] of configs) {
    await withConfig(config, async () => {
      // Multiples of 4 take the vec4 kernel, the others the scalar one; the
      // long K splits under the split-K configurations.
      for (const [m, n, k] of [[36, 20, 12], [7, 13, 5], [33, 20, 260]]) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            for (const dtype of ["f32", "bf16"] as const) {
              const caseName = `${name} ${m}x${n}x${k} transA=${transA} transB=${transB} ${dtype}`;
              const r = await scaledGemmCase(m, n, k, transA, transB, dtype, true);
              assert.ok(r.err < 1e-5, `${caseName}: error ${r.err}`);
              // The copy is fused unless K is split, which needs a sum pass.
              const split = r.labels.some((l) => l.includes("split-K"));
              if (name.startsWith("split-K") && k > 256) assert.ok(split, caseName);
              assert.equal(r.labels.length, split ? 2 : 1, `${caseName}: ${r.labels.join("; ")}`);
              // The narrow tiles compute a C narrower than it is tall as Cᵀ.
              if (name === "narrow") {
                assert.equal(r.labels[0].includes("as Cᵀ"), m > n, `${caseName}: ${r.labels[0]}`);
              }
            }
          }
        }
      }
    });
  }
});

Deno.test("gemm scaleK on a narrow C computed as Cᵀ", async () => {
  await withConfig(NARROW_CONFIG, async () => {
    for (const [m, n, k] of [[132, 20, 36], [65, 33, 17]] as const) {
      for (const transB of [false, true]) {
        const a = seededArray(m * k, 70);
        const b = seededArray(k * n, 71);
        const sk = seededArray(k, 72);
        const c = empty([m, n]);
        const labels = await gemmLabels(async () => {
          gemm(c, fromArray(a, [m, k]), fromArray(b, transB ? [n, k] : [k, n]), {
            transB,
            scaleK: fromArray(sk, [k]),
          });
          await gpu().sync();
        });
        const name = `${m}x${n}x${k} transB=${transB}`;
        assert.ok(labels.every((l) => l.includes("as Cᵀ")), `${name}: ${labels.join("; ")}`);
        const as = a.map((v, i) => v * sk[i % k]);
        const err = maxError(await c.toArray(), reference(as, b, m, n, k, false, transB));
        assert.ok(err < 1e-5, `${name}: error ${err}`);
      }
    }
  });
});

Deno.test("gemm scaleK, scaleN and addend across binding blocks", async () => {
  // 1024-byte bindings split every operand into blocks along M, N and K; the
  // scaled copy then runs as a second pass.
  const r = await withBindingLimit(
    1024,
    () => scaledGemmCase(36, 20, 44, false, true, "f32", true),
  );
  assert.ok(r.err < 1e-5, `error ${r.err}`);
  assert.ok(r.labels.length > 2, r.labels.join("; "));
});

Deno.test("gemmSum scales the first product's K", async () => {
  const [m, n, k1, k2] = [36, 20, 12, 8];
  for (const config of [null, GPU_CONFIG]) {
    await withConfig(config, async () => {
      const a1 = seededArray(m * k1, 80);
      const b1 = seededArray(n * k1, 81);
      const a2 = seededArray(m * k2, 82);
      const b2 = seededArray(n * k2, 83);
      const sk = seededArray(k1, 84);
      const c = empty([m, n]);
      const labels = await gemmLabels(async () => {
        gemmSum(
          c,
          fromArray(a1, [m, k1]),
          fromArray(b1, [n, k1]),
          fromArray(a2, [m, k2]),
          fromArray(b2, [n, k2]),
          { transB: true, scaleK: fromArray(sk, [k1]) },
        );
        await gpu().sync();
      });
      assert.equal(labels.length, 1, labels.join("; "));
      const p1 = reference(a1.map((v, i) => v * sk[i % k1]), b1, m, n, k1, false, true);
      const p2 = reference(a2, b2, m, n, k2, false, true);
      const err = maxError(await c.toArray(), p1.map((v, i) => v + p2[i]));
      assert.ok(err < 1e-5, `${config ? "gpu" : "auto"}: error ${err}`);
    });
  }
});

Deno.test("gemm rejects mismatched scale vectors and an addend with beta", () => {
  const a = fromArray(new Float32Array(12), [4, 3]);
  const b = fromArray(new Float32Array(15), [3, 5]);
  const c = empty([4, 5]);
  assert.throws(
    () => gemm(c, a, b, { scaleK: fromArray(new Float32Array(4), [4]) }),
    /scaleK 4 does not have K = 3 elements/,
  );
  assert.throws(
    () => gemm(c, a, b, { scaleN: fromArray(new Float32Array(4), [4]) }),
    /scaleN 4 does not have N = 5 elements/,
  );
  assert.throws(
    () => gemm(c, a, b, { scaleM: fromArray(new Float32Array(5), [5]) }),
    /scaleM 5 does not have M = 4 elements/,
  );
  assert.throws(
    () => gemm(c, a, b, { addend: empty([4, 5]), beta: 1 }),
    /pass beta 0, got 1/,
  );
});

Deno.test("gemm scaleK and scaled copy summed over the batch", async () => {
  // A [2, k, m] and B [2, k, n] summed into C [m, n]: the path that would fold the batch into K.
  const [batch, m, n, k] = [2, 12, 8, 20];
  const a = seededArray(batch * k * m, 90);
  const b = seededArray(batch * k * n, 91);
  const sk = seededArray(k, 92);
  const scale = seededArray(n, 93);
  const c = empty([m, n]);
  const y = empty([m, n]);
  gemm(c, fromArray(a, [batch, k, m]), fromArray(b, [batch, k, n]), {
    transA: true,
    scaleK: fromArray(sk, [k]),
    scaledCopy: { out: y, scale: fromArray(scale, [n]) },
  });
  const want = new Float64Array(m * n);
  for (let z = 0; z < batch; z++) {
    const az = a.subarray(z * k * m, (z + 1) * k * m);
    const bz = b.subarray(z * k * n, (z + 1) * k * n).map((v, i) => v * sk[Math.floor(i / n)]);
    reference(az, bz, m, n, k, true).forEach((v, i) => (want[i] += v));
  }
  assert.ok(maxError(await c.toArray(), want) < 1e-5, "C");
  const wantY = want.map((v, i) => v * scale[i % n]);
  assert.ok(maxError(await y.toArray(), wantY) < 1e-5, "scaled copy");
});

Deno.test("gemm operand sums in the k loop", async () => {
  const configs: [string, GemmConfig][] = [
    ["gpu", GPU_CONFIG],
    ["narrow", NARROW_CONFIG],
    ["split-K", SPLIT_CONFIGS[0][1]],
  ];
  for (const [name, config] of configs) {
    await withConfig(config, async () => {
      // vec4 and scalar kernels; [36, 20] is narrow enough to run as Cᵀ under "narrow".
      for (const [m, n, k] of [[36, 20, 12], [7, 13, 5], [20, 36, 12], [36, 20, 260]]) {
        for (const  of of["A", "B"] as const) {
          const len = of === "A" ? m : n;
          // The summed operand is stored [K, len]: A with transA, B without transB.
          const a = seededArray(m * k, 120);
          const b = seededArray(k * n, 121);
          const x = seededArray(k * len, 122);
          const dot0 = seededArray(len, 123);
          const plain0 = seededArray(len, 124);
          const dot = fromArray(dot0, [len]);
          const plain = fromArray(plain0, [len]);
          const c = empty([m, n]);
          const transA = of === "A";
          const took = gemm(
            c,
            fromArray(a, transA ? [k, m] : [m, k]),
            fromArray(b, [k, n]),
            { transA, sums: { of, x: fromArray(x, [k, len]), dot, plain } },
          );
          const caseName = `${name} ${m}x${n}x${k} sums over ${of}`;
          const transposed = name === "narrow" && n < 128 && m > n;
          const split = name === "split-K" && k > 16;
          assert.equal(took, (of === "A" ? transposed : !transposed) && !split, caseName);
          assert.ok(maxError(await c.toArray(), reference(a, b, m, n, k, transA)) < 1e-5, caseName);
          const summed = of === "A" ? a : b;
          const wantDot = Float64Array.from(dot0);
          const wantPlain = Float64Array.from(plain0);
          if (took) {
            for (let q = 0; q < k; q++) {
              for (let j = 0; j < len; j++) {
                wantDot[j] += summed[q * len + j] * x[q * len + j];
                wantPlain[j] += summed[q * len + j];
              }
            }
          }
          assert.ok(maxError(await dot.toArray(), wantDot) < 1e-5, `${caseName}: dot`);
          assert.ok(maxError(await plain.toArray(), wantPlain) < 1e-5, `${caseName}: plain`);
        }
      }
    });
  }
  assert.throws(
    () =>
      gemm(
        empty([4, 5]),
        fromArray(new Float32Array(12), [4, 3]),
        fromArray(new Float32Array(15), [3, 5]),
        {
          sums: { of: "B", dot: empty([5]) },
        },
      ),
    /need x/,
  );
});
