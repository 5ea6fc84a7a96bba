import assert from "node:assert/strict";
import {
  ConfigError,
  configFromHf,
  getPreset,
  PRESETS,
  toHfConfig,
  validateConfig,
} from "./config.ts";

// Qwen/Qwen2.5-0.5B's config.json on the Hugging Face hub, without transformers_version.
const QWEN25_05B_HF = {
  architectures: ["Qwen2ForCausalLM"],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: "silu",
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 24,
  model_type: "qwen2",
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-06,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

function assertConfigError(input: unknown, ...parts: string[]): void {
  assert.throws(() => configFromHf(input), (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
    assert.ok(!e.message.includes("\n"), `message has a newline: ${e.message}`);
    for (const part of parts) {
      assert.ok(e.message.includes(part), `"${e.message}" lacks "${part}"`);
    }
    return true;
  });
}

Deno.test("configFromHf Qwen2.5-0.5B matches preset", () => {
  assert.deepEqual(configFromHf(QWEN25_05B_HF), getPreset("qwen2.5-0.5b"));
});

Deno.test("presets pass validation", () => {
  for (const [name, cfg] of Object.entries(PRESETS)) {
    validateConfig(cfg);
    assert.equal(cfg.headDim * cfg.numHeads, cfg.hiddenSize, name);
  }
});

Deno.test("preset shapes", () => {
  const tiny = getPreset("qwen2.5-tiny");
  assert.equal(tiny.vocabSize % 64, 0);
  assert.ok(tiny.vocabSize >= 50257);
  assert.equal(getPreset("olmo2-tiny").arch, "olmo2");
  const olmo = getPreset("olmo2-1b");
  assert.equal(olmo.numKvHeads, 16);
  assert.equal(olmo.tieEmbeddings, false);
  assert.equal(olmo.maxSeqLen, 4096);
  const big = getPreset("qwen2.5-1.5b");
  assert.equal(big.numLayers, 28);
  assert.equal(big.intermediateSize, 8960);
});

Deno.test("getPreset unknown name", () => {
  assert.throws(
    () => getPreset("qwen3"),
    (e: unknown) =>
      e instanceof ConfigError &&
      e.message.startsWith('unknown model preset "qwen3": use one of ') &&
      e.message.includes("qwen2.5-micro"),
  );
});

Deno.test("getPreset returns a copy", () => {
  getPreset("qwen2.5-micro").numLayers = 99;
  assert.equal(getPreset("qwen2.5-micro").numLayers, 2);
});

Deno.test("toHfConfig round trip every preset", () => {
  for (const name of Object.keys(PRESETS)) {
    const cfg = getPreset(name);
    const json = JSON.parse(JSON.stringify(toHfConfig(cfg)));
    assert.deepEqual(configFromHf(json), cfg, name);
  }
});

Deno.test("toHfConfig qwen2 fields", () => {
  const json = toHfConfig(getPreset("qwen2.5-0.5b"), "bfloat16");
  for (const [key, value] of Object.entries(QWEN25_05B_HF)) {
    assert.deepEqual(json[key], value, key);
  }
  assert.equal(json.attention_bias, undefined);
});

Deno.test("toHfConfig olmo2 fields", () => {
  const json = toHfConfig(getPreset("olmo2-1b"));
  assert.deepEqual(json.architectures, ["Olmo2ForCausalLM"]);
  assert.equal(json.model_type, "olmo2");
  assert.equal(json.attention_bias, false);
  assert.equal(json.use_sliding_window, undefined);
  assert.equal(json.torch_dtype, "float32");
  assert.equal(json.hidden_act, "silu");
  assert.equal(json.eos_token_id, 100257);
  assert.equal(json.pad_token_id, 100277);
  assert.equal(json.bos_token_id, null);
  assert.equal(json.tie_word_embeddings, false);
  assert.equal(json.rope_theta, 500000);
});

Deno.test("configFromHf derives head_dim and kv heads", () => {
  const json: Record<string, unknown> = { ...QWEN25_05B_HF, hidden_size: 1024 };
  delete json.num_key_value_heads;
  const cfg = configFromHf({ ...json, num_attention_heads: 16 });
  assert.equal(cfg.headDim, 64);
  assert.equal(cfg.numKvHeads, 16);
  assert.equal(configFromHf({ ...QWEN25_05B_HF, head_dim: 128 }).headDim, 128);
});

Deno.test("configFromHf reads rope_parameters", () => {
  const json: Record<string, unknown> = { ...QWEN25_05B_HF };
  delete json.rope_theta;
  json.rope_parameters = { rope_type: "default", rope_theta: 250000 };
  assert.equal(configFromHf(json).ropeTheta, 250000);
  json.rope_parameters = { rope_type: "yarn", rope_theta: 250000 };
  assertConfigError(json, "rope_type", "yarn");
});

Deno.test("configFromHf rejects bad input", () => {
  assertConfigError([], "expected a JSON object");
  assertConfigError({ ...QWEN25_05B_HF, architectures: ["LlamaForCausalLM"] }, "LlamaForCausalLM");
  assertConfigError({ ...QWEN25_05B_HF, architectures: undefined }, "architectures");
  assertConfigError({ ...QWEN25_05B_HF, hidden_size: 900 }, "hidden_size 900", "14");
  assertConfigError({ ...QWEN25_05B_HF, num_key_value_heads: 3 }, "num_key_value_heads 3");
  assertConfigError({ ...QWEN25_05B_HF, vocab_size: 0 }, '"vocab_size" is 0');
  assertConfigError({ ...QWEN25_05B_HF, num_hidden_layers: 2.5 }, '"num_hidden_layers" is 2.5');
  assertConfigError({ ...QWEN25_05B_HF, intermediate_size: "4864" }, '"intermediate_size"');
  assertConfigError({ ...QWEN25_05B_HF, rms_norm_eps: -1 }, '"rms_norm_eps" is -1');
  assertConfigError({ ...QWEN25_05B_HF, hidden_act: "gelu" }, "hidden_act", "gelu");
  assertConfigError({ ...QWEN25_05B_HF, use_sliding_window: true }, "use_sliding_window");
  assertConfigError({ ...QWEN25_05B_HF, rope_scaling: { type: "yarn" } }, "rope_scaling");
  assertConfigError({ ...QWEN25_05B_HF, eos_token_id: 200000 }, "eosTokenId is 200000");
  const missing: Record<string, unknown> = { ...QWEN25_05B_HF };
  delete missing.max_position_embeddings;
  assertConfigError(missing, 'missing field "max_position_embeddings"');
  const olmo = toHfConfig(getPreset("olmo2-tiny"));
  assertConfigError({ ...olmo, attention_bias: true }, "attention_bias");
});

Deno.test("toHfConfig rejects qwen2 without biases", () => {
  const cfg = { ...getPreset("qwen2.5-micro"), qkvBias: false };
  assert.throws(() => toHfConfig(cfg), ConfigError);
});
