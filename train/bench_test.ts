import assert from "node:assert/strict";
import { initGpu, ledger } from "../core/tensor.ts";
import { getPreset } from "../layers/config.ts";
import { CausalLM } from "../layers/model.ts";
import { countParams } from "../layers/params.ts";
import { adapterSlug, parseBenchArgs } from "./bench.ts";

await initGpu();

const SCRIPT = new URL("./bench.ts", import.meta.url).pathname;

// qwen2.5-micro: vocabulary 97, hidden 32, intermediate 64, 2 layers, 4 query heads and 2 KV
// heads of size 8, q/k/v biases, tied embedding. Its linears (out n × in m) per layer:
// q 32×32, k 16×32, v 16×32, o 32×32, gate 64×32, up 64×32, down 32×64.
const EMBED = 97 * 32;
const NORMS_PER_LAYER = 32 + 32;
const WEIGHTS_PER_LAYER = 1024 + 512 + 512 + 1024 + 2048 + 2048 + 2048;
const BIASES_PER_LAYER = 32 + 16 + 16;
const FINAL_NORM = 32;
// Σ (n + m) over the seven linears of a layer.
const SUM_N_PLUS_M = 64 + 48 + 48 + 64 + 96 + 96 + 96;

// Storage bytes as the ledger counts them: 4 per f32 element, 2 per bf16 element packed
// into whole 4-byte words.
function f32Bytes(elements: number): number {
  return 4 * elements;
}
function bf16Bytes(elements: number): number {
  return 4 * Math.ceil(elements / 2);
}

// Every parameter tensor of plain micro, one element count each.
function plainTensors(): number[] {
  const perLayer = [32, 32, 1024, 32, 512, 16, 512, 16, 1024, 2048, 2048, 2048];
  return [EMBED, ...perLayer, ...perLayer, FINAL_NORM];
}

Deno.test("micro tensor list matches countParams", () => {
  const total = plainTensors().reduce((s, n) => s + n, 0);
  assert.equal(total, 21824);
  assert.equal(
    total,
    EMBED + 2 * (NORMS_PER_LAYER + WEIGHTS_PER_LAYER + BIASES_PER_LAYER) + FINAL_NORM,
  );
  assert.equal(countParams(getPreset("qwen2.5-micro"), "full", 1).total, total);
});

Deno.test("ledger parameter bytes of full models", () => {
  const cfg = getPreset("qwen2.5-micro");
  const cases = [
    { dtype: "f32" as const, bytes: plainTensors().reduce((s, n) => s + f32Bytes(n), 0) },
    { dtype: "bf16" as const, bytes: plainTensors().reduce((s, n) => s + bf16Bytes(n), 0) },
  ];
  assert.equal(cases[0].bytes, 87296);
  assert.equal(cases[1].bytes, 43648);
  for (const { dtype, bytes } of cases) {
    const before = ledger.live.parameters;
    const model = new CausalLM(cfg, { method: "full", rank: 1, dtype });
    assert.equal(ledger.live.parameters - before, bytes, dtype);
    model.dispose();
    assert.equal(ledger.live.parameters, before, `${dtype} after dispose`);
  }
});

Deno.test("ledger parameter bytes of bpt bf16", () => {
  // Every linear wraps at rank 4 (n + m + 4(n + m) < n·m), adding U n×4 and V 4×m in bf16
  // and the diagonals a (n) and b (m) in f32.
  const rank = 4;
  const perLayer = [32, 16, 16, 32, 64, 64, 32].flatMap((n, i) => {
    const m = [32, 32, 32, 32, 32, 32, 64][i];
    return [bf16Bytes(n * rank), bf16Bytes(rank * m), f32Bytes(n), f32Bytes(m)];
  });
  const adapters = 2 * perLayer.reduce((s, b) => s + b, 0);
  assert.equal(adapters, 2 * (2 * rank * SUM_N_PLUS_M + 4 * SUM_N_PLUS_M));
  const expected = plainTensors().reduce((s, n) => s + bf16Bytes(n), 0) + adapters;
  assert.equal(expected, 55936);

  const before = ledger.live.parameters;
  const model = new CausalLM(getPreset("qwen2.5-micro"), { method: "bpt", rank, dtype: "bf16" });
  assert.equal(ledger.live.parameters - before, expected);
  model.dispose();
  assert.equal(ledger.live.parameters, before);
});

Deno.test("bench args: suites and defaults", () => {
  const all = parseBenchArgs([]);
  assert.deepEqual(all.suites, ["gemm", "step", "memory", "data"]);
  assert.equal(all.steps, 5);
  assert.equal(all.warmup, 2);
  assert.equal(all.memoryModel, "qwen2.5-0.5b");
  assert.equal(all.memoryRank, 128);
  const some = parseBenchArgs(["memory", "gemm", "--memory-model", "qwen2.5-100m"]);
  assert.deepEqual(some.suites, ["gemm", "memory"]);
  assert.equal(some.memoryModel, "qwen2.5-100m");
});

Deno.test("adapter slug", () => {
  assert.equal(adapterSlug("llvmpipe (LLVM 15.0.6, 256 bits)"), "llvmpipe-llvm-15-0-6-256-bits");
  assert.equal(adapterSlug("  "), "unknown-adapter");
});

Deno.test("bench CLI rejects an unknown suite", async () => {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, "gem"],
  }).output();
  const message = new TextDecoder().decode(stderr).trim();
  assert.equal(code, 2);
  assert.equal(new TextDecoder().decode(stdout), "");
  assert.equal(message, 'error: unknown suite "gem": use one of gemm, step, memory, data, profile');
});

Deno.test("bench CLI rejects a bad step count", async () => {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, "--steps", "0"],
  }).output();
  assert.equal(code, 2);
  assert.equal(
    new TextDecoder().decode(stderr).trim(),
    "error: --steps 0 is invalid: use an integer ≥ 1",
  );
});

Deno.test("timestampReplay times each dispatch, or says the feature is missing", async () => {
  const { gpu, fromArray, empty } = await import("../core/tensor.ts");
  const { gemm } = await import("../core/ops/matmul.ts");
  const { seededArray } = await import("../core/testing.ts");
  const { timestampReplay } = await import("./bench.ts");
  const g = gpu();
  const a = fromArray(seededArray(64 * 32, 1), [64, 32]);
  const b = fromArray(seededArray(32 * 48, 2), [32, 48]);
  const c = empty([64, 48]);
  const captured: Parameters<typeof g.dispatch>[0][] = [];
  const original = g.dispatch;
  g.dispatch = (d) => {
    captured.push(d);
    original.call(g, d);
  };
  try {
    gemm(c, a, b);
    gemm(c, a, b, { beta: 1 });
  } finally {
    g.dispatch = original;
  }
  const want = await c.toArray();
  g.clear(c.buffer);
  const ms = await timestampReplay(captured);
  if (!g.device.features.has("timestamp-query")) {
    assert.equal(ms, null);
    return;
  }
  assert.equal(ms!.length, 2);
  for (const t of ms!) assert.ok(Number.isFinite(t) && t >= 0, `dispatch time ${t}`);
  // C was cleared, and the replay ran both dispatches again with their own uniforms and
  // bindings: the first writes AB into C and the second (beta = 1) adds AB, giving 2 · AB.
  const after = await c.toArray();
  for (let i = 0; i < want.length; i++) {
    assert.ok(Math.abs(after[i] - want[i]) < 1e-5 * (1 + Math.abs(want[i])), `element ${i}`);
  }
});

Deno.test("quantile matches NumPy's default", async () => {
  const { quantile } = await import("./bench.ts");
  // numpy.quantile([4, 1, 3, 2], [0, 0.25, 0.5, 0.75, 1]) = [1, 1.75, 2.5, 3.25, 4]
  const xs = [4, 1, 3, 2];
  assert.deepEqual([0, 0.25, 0.5, 0.75, 1].map((q) => quantile(xs, q)), [1, 1.75, 2.5, 3.25, 4]);
  assert.equal(quantile([7], 0.25), 7);
});
