import assert from "node:assert/strict";
import { getPreset, type ModelConfig } from "../layers/config.ts";
import { ParamsError } from "../layers/params.ts";
import { mfu, stepFlops } from "./flops.ts";

// One block small enough to count by hand: hidden C = 8, intermediate F = 16, Hq = 2 heads
// and one kv head of D = 4, vocabulary V = 10. Block linears (n × m):
//   q 8×8 = 64, k 4×8 = 32, v 4×8 = 32, o 8×8 = 64, gate 16×8 = 128, up 16×8 = 128,
//   down 8×16 = 128; sum of n·m = 576.
// A step of B = 2 sequences of T = 3 tokens has N = 6 tokens.
const ONE_LAYER: ModelConfig = {
  arch: "qwen2",
  vocabSize: 10,
  hiddenSize: 8,
  intermediateSize: 16,
  numLayers: 1,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 4,
  ropeTheta: 1e6,
  rmsNormEps: 1e-6,
  tieEmbeddings: true,
  qkvBias: true,
  maxSeqLen: 16,
  initStd: 0.02,
  bosTokenId: null,
  eosTokenId: 0,
  padTokenId: null,
};
const TOKENS = 6;
const SEQ_LEN = 3;

// Parts every method shares.
// attention forward: 2 matmuls · 2 · B · Hq · T² · D = 2 · 2 · 2 · 2 · 9 · 4 = 576, backward 1152.
// LM head forward: 2 · N · C · V = 2 · 6 · 8 · 10 = 960, backward 1920.
// Dense W forward: 2 · N · 576 = 6912, and the same again for the input gradients.
const ATTENTION = { forward: 576, backward: 1152 };
const LM_HEAD = { forward: 960, backward: 1920 };

Deno.test("stepFlops full one layer", () => {
  const f = stepFlops(ONE_LAYER, "full", 0, TOKENS, SEQ_LEN);
  // Every W trains: backward = input gradients 6912 + weight gradients 6912.
  assert.deepEqual(f.byPart.dense, { forward: 6912, backward: 13824 });
  assert.deepEqual(f.byPart.adapters, { forward: 0, backward: 0 });
  assert.deepEqual(f.byPart.diagonals, { forward: 0, backward: 0 });
  assert.deepEqual(f.byPart.attention, ATTENTION);
  assert.deepEqual(f.byPart.lmHead, LM_HEAD);
  assert.equal(f.forward, 6912 + 576 + 960); // 8448
  assert.equal(f.backward, 13824 + 1152 + 1920); // 16896
  assert.equal(f.total, 25344);
});

Deno.test("stepFlops bpt leaves k and v full", () => {
  // Rank 2: BPT trains n + m + 2(n + m) per wrapped linear. k and v: 12 + 24 = 36 ≥ 32,
  // so they stay Full. q and o: 16 + 32 = 48 < 64; gate, up, down: 24 + 48 = 72 < 128.
  const f = stepFlops(ONE_LAYER, "bpt", 2, TOKENS, SEQ_LEN);
  // Backward: input gradients 6912 plus weight gradients of k and v, 2 · 6 · (32 + 32) = 768.
  assert.deepEqual(f.byPart.dense, { forward: 6912, backward: 7680 });
  // Wrapped n + m: q 16, o 16, gate 24, up 24, down 24, sum 104.
  // Factors forward: 2 · N · r · 104 = 2 · 6 · 2 · 104 = 2496, backward twice that.
  assert.deepEqual(f.byPart.adapters, { forward: 2496, backward: 4992 });
  // Diagonals forward: N · 104 = 624, backward twice that.
  assert.deepEqual(f.byPart.diagonals, { forward: 624, backward: 1248 });
  assert.deepEqual(f.byPart.attention, ATTENTION);
  assert.deepEqual(f.byPart.lmHead, LM_HEAD);
  assert.equal(f.forward, 6912 + 2496 + 624 + 576 + 960); // 11568
  assert.equal(f.backward, 7680 + 4992 + 1248 + 1152 + 1920); // 16992
  assert.equal(f.total, 28560);
});

Deno.test("stepFlops bpt with merged W + U V", () => {
  // 48 tokens in 2 passes of 24. 24 · (n + m) ≥ 2 · n · m holds for q, o (384 ≥ 128), gate,
  // up (576 ≥ 256) and down, so each merges once per pass. k and v stay Full at rank 2.
  // Forward per linear: 2 · N · r · m + 2 passes · 2 · n · r · m = 192·m + 8·n·m:
  //   q and o 1536 + 512 = 2048, gate and up 1536 + 1024 = 2560, down 3072 + 1024 = 4096.
  // Backward per linear: 2 · N · r · (2n + m) = 192 · (2n + m):
  //   q and o 4608, gate and up 7680, down 6144.
  const f = stepFlops(ONE_LAYER, "bpt", 2, 48, SEQ_LEN, 24);
  assert.deepEqual(f.byPart.adapters, { forward: 13312, backward: 30720 });
  // With the whole step in one pass of 48 tokens the merges run once.
  const onePass = stepFlops(ONE_LAYER, "bpt", 2, 48, SEQ_LEN);
  assert.equal(onePass.byPart.adapters.forward, 13312 - (512 * 2 + 1024 * 3) / 2);
  assert.throws(() => stepFlops(ONE_LAYER, "bpt", 2, 48, SEQ_LEN, 30), RangeError);
});

Deno.test("stepFlops lora and relora", () => {
  // Rank 2: LoRA trains 2(n + m) < n·m for all seven linears (k and v: 24 < 32).
  // Sum of n + m: 16 + 12 + 12 + 16 + 24 + 24 + 24 = 128.
  // Factors forward: 2 · N · r · 128 = 2 · 6 · 2 · 128 = 3072, backward 6144.
  for (const method of ["lora", "relora"] as const) {
    const f = stepFlops(ONE_LAYER, method, 2, TOKENS, SEQ_LEN);
    assert.deepEqual(f.byPart.dense, { forward: 6912, backward: 6912 }, method);
    assert.deepEqual(f.byPart.adapters, { forward: 3072, backward: 6144 }, method);
    assert.deepEqual(f.byPart.diagonals, { forward: 0, backward: 0 }, method);
    assert.equal(f.forward, 6912 + 3072 + 576 + 960, method); // 11520
    assert.equal(f.backward, 6912 + 6144 + 1152 + 1920, method); // 16128
    assert.equal(f.total, 27648, method);
  }
});

Deno.test("stepFlops hyperadapt", () => {
  // All seven linears wrap (n + m < n·m). Diagonals forward: N · 128 = 768, backward 1536.
  const f = stepFlops(ONE_LAYER, "hyperadapt", 0, TOKENS, SEQ_LEN);
  assert.deepEqual(f.byPart.dense, { forward: 6912, backward: 6912 });
  assert.deepEqual(f.byPart.adapters, { forward: 0, backward: 0 });
  assert.deepEqual(f.byPart.diagonals, { forward: 768, backward: 1536 });
  assert.equal(f.forward, 6912 + 768 + 576 + 960); // 9216
  assert.equal(f.backward, 6912 + 1536 + 1152 + 1920); // 11520
  assert.equal(f.total, 20736);
});

Deno.test("stepFlops layers scale linearly", () => {
  const one = stepFlops(ONE_LAYER, "bpt", 2, TOKENS, SEQ_LEN);
  const three = stepFlops({ ...ONE_LAYER, numLayers: 3 }, "bpt", 2, TOKENS, SEQ_LEN);
  // Everything but the LM head is per layer.
  assert.equal(three.total - 960 - 1920, 3 * (one.total - 960 - 1920));
});

Deno.test("stepFlops full matches PaLM formula", () => {
  // PaLM's appendix B (and nanoGPT's estimate_mfu) count 6·P + 12·L·H·Q·T FLOPs per token,
  // P the matmul weights. Qwen2.5-0.5B per layer: q 896·896 = 802,816, k and v 128·896 =
  // 114,688 each, o 802,816, gate, up, down 4864·896 = 4,358,144 each; sum 14,909,440.
  // The tied LM head adds V·C = 151,936 · 896 = 136,134,656.
  const cfg = getPreset("qwen2.5-0.5b");
  const tokens = 4096;
  const seqLen = 1024;
  const weights = 24 * 14_909_440 + 136_134_656;
  const expected = tokens * (6 * weights + 12 * 24 * 14 * 64 * seqLen);
  assert.equal(stepFlops(cfg, "full", 0, tokens, seqLen).total, expected);
});

Deno.test("stepFlops rejects bad input", () => {
  assert.throws(() => stepFlops(ONE_LAYER, "full", 0, 7, 3), RangeError);
  assert.throws(() => stepFlops(ONE_LAYER, "full", 0, 0, 3), RangeError);
  assert.throws(() => stepFlops(ONE_LAYER, "full", 0, 6, 1.5), RangeError);
  // The largest rank that wraps gate (16×8) is 4: 24 + 4·24 = 120 < 128, 24 + 5·24 = 144.
  assert.throws(() => stepFlops(ONE_LAYER, "bpt", 5, TOKENS, SEQ_LEN), ParamsError);
  // At rank 4 only gate, up and down wrap (q: 16 + 4·16 = 80 ≥ 64), so the factors cost
  // 2 · N · 4 · (24 + 24 + 24) = 3456 forward.
  assert.equal(stepFlops(ONE_LAYER, "bpt", 4, TOKENS, SEQ_LEN).byPart.adapters.forward, 3456);
});

Deno.test("mfu ratio", () => {
  // 3e12 FLOPs in 2 s is 1.5e12 FLOP/s, a quarter of 6e12.
  assert.equal(mfu(3e12, 2, 6e12), 0.25);
  assert.throws(() => mfu(3e12, 0, 6e12), RangeError);
  assert.throws(() => mfu(3e12, 2, Number.NaN), RangeError);
  assert.throws(() => mfu(-1, 2, 6e12), RangeError);
});
