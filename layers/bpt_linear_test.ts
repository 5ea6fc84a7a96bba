import assert from "node:assert/strict";
import { backward, clearTape, noGrad, tapeLength } from "../core/autograd.ts";
import { add, mul } from "../core/ops/elementwise.ts";
import { type GemmConfig, linear, setGemmConfig } from "../core/ops/matmul.ts";
import { fromArray, gpu, initGpu, scoped, type Tensor } from "../core/tensor.ts";
import { assertClose, dispatchLabels, seededArray } from "../core/testing.ts";
import { bptLinear, mergeWeights } from "./bpt_linear.ts";

await initGpu();

// Every GEMM here has a dimension of 7, 9 or 2, so all of them run the scalar (unaligned) kernel.
const ROWS = 7, N = 12, M = 9, R = 2;
const NAMES = ["x", "W", "U", "V", "a", "b", "bias"] as const;

interface Case {
  /** Shape of x; its last dimension is M. */
  xShape: number[];
  bias: boolean;
  xGrad: boolean;
  wGrad: boolean;
  /** Leaves among U, V, a, b and bias that need no gradient. */
  frozen?: string[];
}

// One set of leaves per call, with the same values each time.
function leaves(c: Case): Tensor[] {
  const spec: [number[], boolean][] = [
    [c.xShape, c.xGrad],
    [[N, M], c.wGrad],
    [[N, R], !c.frozen?.includes("U")],
    [[R, M], !c.frozen?.includes("V")],
    [[N], !c.frozen?.includes("a")],
    [[M], !c.frozen?.includes("b")],
  ];
  if (c.bias) spec.push([[N], !c.frozen?.includes("bias")]);
  return spec.map(([shape, requiresGrad], i) => {
    const numel = shape.reduce((p, q) => p * q, 1);
    // Diagonals lie near 1, like trained ones. Everything else lies in [-1, 1].
    const values = i === 4 || i === 5
      ? seededArray(numel, 30 + i, 0.5, 1.5)
      : seededArray(numel, 30 + i);
    return fromArray(values, shape, { requiresGrad });
  });
}

function unfused(t: Tensor[]): Tensor {
  const [x, w, u, v, a, b, bias] = t;
  const xb = mul(x, b);
  const z = add(linear(xb, w), linear(linear(xb, v), u));
  const y = mul(z, a);
  return bias ? add(y, bias) : y;
}

function fused(t: Tensor[]): Tensor {
  const [x, w, u, v, a, b, bias] = t;
  return bptLinear(x, w, u, v, a, b, bias);
}

// Output and the gradient of every leaf (null for leaves without one) under a fixed seed gradient.
async function evaluate(c: Case, f: (t: Tensor[]) => Tensor) {
  const t = leaves(c);
  const outShape = [...c.xShape.slice(0, -1), N];
  const seed = seededArray(outShape.reduce((p, q) => p * q, 1), 99);
  const y = scoped(() => {
    const out = f(t).keep();
    backward(out, fromArray(seed, outShape));
    return out;
  });
  const grads: (Float32Array | null)[] = [];
  for (const leaf of t) grads.push(leaf.grad ? await leaf.grad.toArray() : null);
  const values = await y.toArray();
  y.dispose();
  for (const leaf of t) {
    leaf.grad?.dispose();
    leaf.dispose();
  }
  return { shape: [...y.shape], values, grads };
}

const CASES: Case[] = [
  { xShape: [ROWS, M], bias: true, xGrad: true, wGrad: false },
  { xShape: [ROWS, M], bias: false, xGrad: true, wGrad: false },
  { xShape: [ROWS, M], bias: true, xGrad: false, wGrad: false },
  { xShape: [ROWS, M], bias: false, xGrad: false, wGrad: false },
  { xShape: [1, ROWS, M], bias: true, xGrad: true, wGrad: false },
  { xShape: [ROWS, M], bias: true, xGrad: true, wGrad: true },
  // Enough rows to merge W + U V (see mergeWeights).
  { xShape: [3, 50, M], bias: true, xGrad: true, wGrad: false },
  { xShape: [3, 50, M], bias: false, xGrad: false, wGrad: true },
  // Frozen diagonals: dx = dz W_eff ⊙ b comes from one GEMM, without dxb.
  { xShape: [ROWS, M], bias: true, xGrad: true, wGrad: false, frozen: ["b"] },
  { xShape: [3, 50, M], bias: true, xGrad: true, wGrad: false, frozen: ["a", "b", "bias"] },
  { xShape: [3, 50, M], bias: false, xGrad: true, wGrad: false, frozen: ["U", "V"] },
  // More rows than the diagonal-gradient kernel sums in one pass.
  { xShape: [600, M], bias: true, xGrad: true, wGrad: false },
];

Deno.test("bptLinear output and gradients match the unfused ops", async () => {
  for (const c of CASES) {
    const label = JSON.stringify(c);
    const want = await evaluate(c, unfused);
    const got = await evaluate(c, fused);
    assert.deepEqual(got.shape, want.shape, label);
    assertClose(got.values, want.values, 1e-5, `${label} y`);
    got.grads.forEach((g, i) => {
      const name = `${label} d${NAMES[i]}`;
      assert.equal(g === null, want.grads[i] === null, `${name}: presence differs`);
      // The 600-row sums add f32 terms in another order than the unfused ops.
      const tol = c.xShape[0] === 600 ? 5e-5 : 1e-5;
      if (g && want.grads[i]) assertClose(g, want.grads[i]!, tol, name);
    });
    assert.equal(got.grads[0] !== null, c.xGrad, `${label}: dx present`);
    assert.equal(got.grads[1] !== null, c.wGrad, `${label}: dW present`);
  }
});

Deno.test("bptLinear split into blocks by the binding limit matches the unfused ops", async () => {
  const c: Case = { xShape: [3, 50, M], bias: true, xGrad: true, wGrad: false };
  const want = await evaluate(c, unfused);
  const g = gpu();
  const saved = g.bindingLimit;
  let got: Awaited<ReturnType<typeof evaluate>>;
  try {
    // 1024-byte bindings hold about 20 rows of 9 f32, so each kernel runs in several blocks.
    g.bindingLimit = 1024;
    got = await evaluate(c, fused);
  } finally {
    g.bindingLimit = saved;
  }
  assertClose(got.values, want.values, 1e-5, "y");
  got.grads.forEach((grad, i) => {
    if (grad && want.grads[i]) assertClose(grad, want.grads[i]!, 1e-5, `d${NAMES[i]}`);
  });
});

Deno.test("bptLinear records one tape node", () => {
  const c: Case = { xShape: [ROWS, M], bias: true, xGrad: true, wGrad: false };
  const t = leaves(c);
  const before = tapeLength();
  scoped(() => {
    fused(t);
  });
  assert.equal(tapeLength() - before, 1);
  clearTape();
  for (const leaf of t) leaf.dispose();
});

Deno.test("bptLinear under noGrad records nothing", () => {
  const c: Case = { xShape: [ROWS, M], bias: false, xGrad: true, wGrad: false };
  const t = leaves(c);
  const before = tapeLength();
  scoped(() => {
    noGrad(() => fused(t));
  });
  assert.equal(tapeLength(), before);
  for (const leaf of t) leaf.dispose();
});

Deno.test("bptLinear rejects mismatched shapes", () => {
  const x = fromArray(new Float32Array(ROWS * M), [ROWS, M]);
  const w = fromArray(new Float32Array(N * M), [N, M]);
  const u = fromArray(new Float32Array(N * R), [N, R]);
  const vWrong = fromArray(new Float32Array(R * (M + 1)), [R, M + 1]);
  const a = fromArray(new Float32Array(N), [N]);
  const b = fromArray(new Float32Array(M), [M]);
  assert.throws(() => bptLinear(x, w, u, vWrong, a, b), /bptLinear: shapes do not match/);
  for (const t of [x, w, u, vWrong, a, b]) t.dispose();
});

Deno.test("bptLinear merges W + U V only for enough rows", async () => {
  // rows · (n + m) against 2 · n · m = 216: 7 rows stay unmerged, 150 merge.
  assert.equal(mergeWeights(ROWS, N, M), false);
  assert.equal(mergeWeights(150, N, M), true);
  assert.equal(mergeWeights(64, 896, 896), false);
  assert.equal(mergeWeights(512, 128, 128), true);
  for (const rows of [ROWS, 150]) {
    const c: Case = { xShape: [rows, M], bias: true, xGrad: true, wGrad: false };
    const t = leaves(c);
    const labels = await dispatchLabels(() => {
      scoped(() => {
        backward(fused(t));
      });
    });
    // The merge is U [N, R] @ V [R, M], in forward only.
    const merges = labels.filter((l) => l.startsWith(`gemm[bpt.merge](${N}x${R} @ ${R}x${M}`));
    assert.equal(merges.length, rows === ROWS ? 0 : 1, labels.join("; "));
    for (const leaf of t) {
      leaf.grad?.dispose();
      leaf.dispose();
    }
  }
});

Deno.test("bptLinear diagonal sums in GEMMs", async () => {
  const c: Case = { xShape: [3, 50, M], bias: true, xGrad: true, wGrad: false };
  const want = await evaluate(c, unfused);
  // With narrow C computed as Cᵀ (the fallback adapter's tiles) dU sums da and
  // dbias and dV sums db. With the GPU tiles dU runs as is and cannot, so one
  // columnSums kernel adds da and dbias.
  const configs: [GemmConfig, number][] = [
    [{ workgroupX: 8, workgroupY: 1, tileM: 16, tileN: 16, transposeNarrow: true }, 0],
    [{ workgroupX: 16, workgroupY: 16, tileM: 4, tileN: 4 }, 1],
  ];
  for (const [config, passes] of configs) {
    setGemmConfig(config);
    try {
      let got: Awaited<ReturnType<typeof evaluate>> | null = null;
      const labels = await dispatchLabels(async () => {
        got = await evaluate(c, fused);
      });
      const name = `transposeNarrow=${config.transposeNarrow ?? false}`;
      assert.equal(labels.filter((l) => l.startsWith("columnSums")).length, passes, name);
      got!.grads.forEach((g, i) => {
        if (g && want.grads[i]) assertClose(g, want.grads[i]!, 1e-5, `${name} d${NAMES[i]}`);
      });
    } finally {
      setGemmConfig(null);
    }
  }
});
