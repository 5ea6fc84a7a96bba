import assert from "node:assert/strict";
import { getPreset } from "./config.ts";
import {
  adapterParamCount,
  countParams,
  linearShapes,
  maxRank,
  METHODS,
  normShapes,
  ParamsError,
  parseMethod,
  wrapsLinear,
} from "./params.ts";

// Expected totals worked out by hand from the shapes (vocab 151,936, tied embeddings,
// q/k/v biases), e.g. qwen2.5-100m: 8 · 3,802,880 per block + 151,936 · 512 + 512.
Deno.test("qwen2.5-100m full counts", () => {
  const c = countParams(getPreset("qwen2.5-100m"), "full", 128);
  assert.equal(c.total, 108_214_784);
  assert.equal(c.trainable, 108_214_784);
  assert.equal(c.reduction, 0);
  assert.equal(c.wrappedLinears, 0);
  assert.equal(c.fullLinears, 56);
});

Deno.test("qwen2.5-100m bpt rank 128", () => {
  const c = countParams(getPreset("qwen2.5-100m"), "bpt", 128);
  assert.equal(c.total, 108_214_784);
  assert.equal(c.trainable, 88_893_952);
  assert.equal(c.nonEmbeddingTotal, 30_423_552);
  assert.equal(c.nonEmbeddingTrainable, 11_102_720);
  assert.equal(c.reduction.toFixed(3), "0.179");
  assert.equal(c.nonEmbeddingReduction.toFixed(3), "0.635");
  // k_proj and v_proj are 128 × 512: BPT would need 82,560 for 65,536, so they stay Full.
  assert.equal(c.wrappedLinears, 8 * 5);
  assert.equal(c.fullLinears, 8 * 2);
});

Deno.test("qwen2.5-0.5b counts per method", () => {
  const cfg = getPreset("qwen2.5-0.5b");
  assert.equal(countParams(cfg, "full", 1).total, 494_032_768);

  const bpt = countParams(cfg, "bpt", 128);
  assert.equal(bpt.total, 494_032_768);
  assert.equal(bpt.trainable, 206_306_176);
  assert.equal(bpt.reduction.toFixed(3), "0.582");
  assert.equal(bpt.nonEmbeddingReduction.toFixed(3), "0.804");

  assert.equal(countParams(cfg, "lora", 128).trainable, 205_805_440);
  assert.equal(countParams(cfg, "relora", 128).trainable, 205_805_440);
  assert.equal(countParams(cfg, "hyperadapt", 128).trainable, 136_756_096);
});

Deno.test("qwen2.5-0.5b k_proj stays full under bpt", () => {
  const c = countParams(getPreset("qwen2.5-0.5b"), "bpt", 128);
  const k = c.perLinear.find((l) => l.name === "k_proj")!;
  assert.equal(k.n, 128);
  assert.equal(k.m, 896);
  assert.equal(k.wrapped, false);
  assert.equal(k.trainableWeight, 114_688);
  assert.equal(adapterParamCount("bpt", 128, 896, 128), 132_096);
  const q = c.perLinear.find((l) => l.name === "q_proj")!;
  assert.equal(q.wrapped, true);
  assert.equal(q.trainableWeight, 1792 + 128 * 1792);
});

Deno.test("qwen2.5-1.5b bpt rank 256", () => {
  const c = countParams(getPreset("qwen2.5-1.5b"), "bpt", 256);
  assert.equal(c.total, 1_543_714_304);
  assert.equal(c.trainable, 526_338_560);
  assert.equal(c.reduction.toFixed(3), "0.659");
});

Deno.test("olmo2-1b full total", () => {
  // 16 · (4 · 2048² + 3 · 8192 · 2048 + 4 · 2048 norms) + 2 · 100,352 · 2048 + 2048.
  const c = countParams(getPreset("olmo2-1b"), "full", 1);
  assert.equal(c.total, 1_484_916_736);
  assert.equal(c.nonEmbeddingTotal, 1_484_916_736 - 2 * 100_352 * 2048);
  assert.equal(c.classes.biases.total, 0);
  assert.equal(c.classes.norms.total, 16 * 4 * 2048 + 2048);
});

Deno.test("micro classes sum to totals", () => {
  const cfg = getPreset("qwen2.5-micro");
  const c = countParams(cfg, "lora", 4);
  const k = c.classes;
  assert.equal(
    k.embeddings.total + k.norms.total + k.biases.total + k.wrappedLinears.total +
      k.fullLinears.total,
    c.total,
  );
  assert.equal(
    k.embeddings.trainable + k.norms.trainable + k.biases.trainable +
      k.wrappedLinears.trainable + k.fullLinears.trainable,
    c.trainable,
  );
  // Hand count: q 32×32, k/v 16×32, o 32×32, gate/up 64×32, down 32×64, biases 32+16+16,
  // norms 2·32 per block, then 97·32 tied embedding and the final norm of 32.
  assert.equal(c.total, 2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64 + 64) + 97 * 32 + 32);
});

Deno.test("linearShapes qwen2.5-0.5b", () => {
  assert.deepEqual(linearShapes(getPreset("qwen2.5-0.5b")), [
    { name: "q_proj", n: 896, m: 896, hasBias: true },
    { name: "k_proj", n: 128, m: 896, hasBias: true },
    { name: "v_proj", n: 128, m: 896, hasBias: true },
    { name: "o_proj", n: 896, m: 896, hasBias: false },
    { name: "gate_proj", n: 4864, m: 896, hasBias: false },
    { name: "up_proj", n: 4864, m: 896, hasBias: false },
    { name: "down_proj", n: 896, m: 4864, hasBias: false },
  ]);
});

Deno.test("normShapes olmo2 has q and k norms", () => {
  const names = normShapes(getPreset("olmo2-tiny")).map((n) => `${n.name}:${n.size}`);
  assert.deepEqual(names, [
    "post_attention_layernorm:128",
    "post_feedforward_layernorm:128",
    "q_norm:128",
    "k_norm:64",
  ]);
});

Deno.test("wrapsLinear boundary", () => {
  // 512 × 512: BPT trains 1024 + 1024r, below 262,144 only for r ≤ 254.
  assert.equal(wrapsLinear("bpt", 512, 512, 254), true);
  assert.equal(wrapsLinear("bpt", 512, 512, 255), false);
  // LoRA: 1024r < 262,144 for r ≤ 255. At r = 256 the counts tie and it stays Full.
  assert.equal(wrapsLinear("lora", 512, 512, 255), true);
  assert.equal(wrapsLinear("lora", 512, 512, 256), false);
  assert.equal(wrapsLinear("full", 512, 512, 1), false);
});

Deno.test("maxRank qwen2.5-100m", () => {
  // gate_proj 2048 × 512 allows the most: (1,048,576 − 2,560 − 1) / 2,560 → 408.
  assert.equal(maxRank(getPreset("qwen2.5-100m"), "bpt"), 408);
  // 1,048,575 / 2,560 → 409.
  assert.equal(maxRank(getPreset("qwen2.5-100m"), "lora"), 409);
});

Deno.test("rank validation errors", () => {
  const cfg = getPreset("qwen2.5-100m");
  for (const rank of [0, -1, 1.5, NaN]) {
    assert.throws(
      () => countParams(cfg, "bpt", rank),
      (e: unknown) => e instanceof ParamsError && e.message.includes("use an integer in 1..408"),
    );
  }
  assert.throws(
    () => countParams(cfg, "lora", 410),
    (e: unknown) =>
      e instanceof ParamsError && e.message.includes("rank 410") &&
      e.message.includes("1..409"),
  );
  // Methods without a rank ignore it.
  assert.equal(countParams(cfg, "hyperadapt", 0).wrappedLinears, 56);
});

Deno.test("parseMethod", () => {
  for (const m of METHODS) assert.equal(parseMethod(m), m);
  assert.throws(
    () => parseMethod("dora"),
    (e: unknown) =>
      e instanceof ParamsError &&
      e.message === 'unknown method "dora": use one of full, bpt, lora, relora, hyperadapt',
  );
});
