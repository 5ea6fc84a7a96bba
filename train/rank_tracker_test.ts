import assert from "node:assert/strict";
import { bf16ToF32, f32ToBf16 } from "../core/tensor.ts";
import { getPreset } from "../layers/config.ts";
import { numericalRank, singularValues } from "../layers/rank.ts";
import { Rng } from "../data/prng.ts";
import { OptionsError } from "./options.ts";
import { blockLinearNames, resolveLayerName, UNIT_ROUNDOFF, updateRank } from "./rank_tracker.ts";

// Standard normal samples by Box–Muller from the project's SplitMix32 generator.
function gaussian(rng: Rng, count: number): Float64Array {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const u1 = (rng.nextU32() + 1) / 0x100000001;
    const u2 = rng.nextU32() / 0x100000000;
    out[i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return out;
}

// Σ_{j<k} scale · x_j y_jᵀ for random x_j ∈ ℝⁿ, y_j ∈ ℝᵐ: rank k with probability 1.
function sumOfOuterProducts(rng: Rng, n: number, m: number, k: number, scale: number) {
  const delta = new Float64Array(n * m);
  for (let j = 0; j < k; j++) {
    const x = gaussian(rng, n);
    const y = gaussian(rng, m);
    for (let r = 0; r < n; r++) {
      for (let c = 0; c < m; c++) delta[r * m + c] += scale * x[r] * y[c];
    }
  }
  return delta;
}

function roundBf16(values: ArrayLike<number>): Float32Array {
  return Float32Array.from(values, (v) => bf16ToF32(f32ToBf16(v)));
}

Deno.test("updateRank f32 sum of outer products", () => {
  const rng = new Rng(7);
  const [n, m] = [40, 24];
  for (const k of [1, 3, 7]) {
    const w0 = Float32Array.from(gaussian(rng, n * m), (v) => 0.02 * v);
    const delta = sumOfOuterProducts(rng, n, m, k, 1e-3);
    const w = Float32Array.from(w0, (v, i) => v + delta[i]);
    const rank = updateRank(w0, w, n, m, "f32");
    assert.equal(rank.numericalRank, k);
    assert.ok(rank.effectiveRank >= 1, `k ${k}: effective rank ${rank.effectiveRank}`);
    assert.ok(rank.effectiveRank <= k, `k ${k}: effective rank ${rank.effectiveRank}`);
  }
});

Deno.test("updateRank ignores bf16 rounding", () => {
  const rng = new Rng(11);
  const [n, m, k] = [64, 32, 4];
  const w0 = roundBf16(Float64Array.from(gaussian(rng, n * m), (v) => 0.02 * v));
  // Each outer product's entries have a standard deviation of 2e-3, about 16 bf16 spacings
  // (2^-13) of a weight near 0.02.
  const delta = sumOfOuterProducts(rng, n, m, k, 2e-3);
  const w = roundBf16(w0.map((v, i) => v + delta[i]));

  const rank = updateRank(w0, w, n, m, "bf16");
  assert.equal(rank.numericalRank, k);

  // The rounding error alone is full rank above a fixed tolerance of 1e-6 · σ_max.
  const measured = Float64Array.from(w, (v, i) => v - w0[i]);
  assert.equal(numericalRank(singularValues(measured, n, m)), Math.min(n, m));
});

Deno.test("updateRank threshold formula", () => {
  const [n, m] = [9, 4];
  const w = new Float32Array(n * m).fill(0.5);
  const rank = updateRank(w, w, n, m, "bf16");
  // rms(W) = 0.5, so the floor is 2 · 2^-8 · 0.5 · (3 + 2) = 5 · 2^-8.
  assert.equal(rank.threshold, 5 * 2 ** -8);
  assert.equal(UNIT_ROUNDOFF.f16, 2 ** -11);
});

Deno.test("updateRank zero update", () => {
  const w = Float32Array.from({ length: 12 }, (_, i) => i - 6);
  const rank = updateRank(w, w, 3, 4, "f32");
  assert.equal(rank.numericalRank, 0);
  assert.equal(rank.effectiveRank, 0);
  assert.equal(rank.sigmaMax, 0);
});

Deno.test("updateRank full-rank diagonal update", () => {
  // ΔW = diag(1, 2, 3) next to a zero W0: rank 3, σ = (3, 2, 1).
  const w0 = new Float32Array(9);
  const w = Float32Array.from([1, 0, 0, 0, 2, 0, 0, 0, 3]);
  const rank = updateRank(w0, w, 3, 3, "bf16");
  assert.equal(rank.numericalRank, 3);
  assert.ok(Math.abs(rank.sigmaMax - 3) < 1e-12);
  const p = [3 / 6, 2 / 6, 1 / 6];
  const entropy = -p.reduce((s, x) => s + x * Math.log(x), 0);
  assert.ok(Math.abs(rank.effectiveRank - Math.exp(entropy)) < 1e-9);
});

Deno.test("updateRank rejects wrong lengths", () => {
  assert.throws(
    () => updateRank(new Float32Array(6), new Float32Array(5), 2, 3, "f32"),
    RangeError,
  );
});

Deno.test("blockLinearNames micro preset", () => {
  const names = blockLinearNames(getPreset("qwen2.5-micro"));
  assert.equal(names.length, 2 * 7);
  assert.equal(names[0], "model.layers.0.self_attn.q_proj");
  assert.equal(names[5], "model.layers.0.mlp.up_proj");
  assert.equal(names[13], "model.layers.1.mlp.down_proj");
});

Deno.test("resolveLayerName suffixes", () => {
  const cfg = getPreset("qwen2.5-micro");
  assert.equal(resolveLayerName(cfg, "layers.0.mlp.up_proj"), "model.layers.0.mlp.up_proj");
  assert.equal(resolveLayerName(cfg, "1.self_attn.k_proj"), "model.layers.1.self_attn.k_proj");
  assert.equal(
    resolveLayerName(cfg, "model.layers.1.mlp.gate_proj"),
    "model.layers.1.mlp.gate_proj",
  );
});

Deno.test("resolveLayerName rejects bad names", () => {
  const cfg = getPreset("qwen2.5-micro");
  for (const query of ["layers.2.mlp.up_proj", "mlp.up_proj", "p_proj"]) {
    assert.throws(() => resolveLayerName(cfg, query), OptionsError, query);
  }
  try {
    resolveLayerName(cfg, "layers.2.mlp.up_proj");
    assert.fail("expected OptionsError");
  } catch (e) {
    assert.ok(e instanceof OptionsError);
    assert.ok(!e.message.includes("\n"));
    assert.ok(e.message.includes('--rank-layer "layers.2.mlp.up_proj"'), e.message);
    assert.ok(e.message.includes("layers.0.mlp.up_proj"), e.message);
  }
});
