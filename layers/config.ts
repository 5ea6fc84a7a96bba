// Model shape: the decoder-only transformer presets this project trains, and conversion
// to and from a Hugging Face config.json so a saved checkpoint loads in transformers.

export type Arch = "qwen2" | "olmo2";

export const ARCHS: readonly Arch[] = ["qwen2", "olmo2"];

export interface ModelConfig {
  // qwen2: pre-norm blocks, q/k/v biases. olmo2: post-norm blocks (norm after attention and
  // after the MLP, inside the residual), RMSNorm on the full q and k projections, no biases.
  arch: Arch;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  tieEmbeddings: boolean;
  // Bias on the q, k and v projections. o_proj and the MLP have none in either architecture.
  qkvBias: boolean;
  // Maximum sequence length in tokens (max_position_embeddings).
  maxSeqLen: number;
  // Standard deviation of the normal init of linear and embedding weights
  // (initializer_range in transformers).
  initStd: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
}

/** Error for an invalid model config or preset name; the message is one line. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

// Values shared by the Qwen2.5 base models' config.json files. 151643 is <|endoftext|>,
// the base models' bos and eos (the Instruct models end turns with 151645 instead).
const QWEN25_COMMON = {
  arch: "qwen2",
  vocabSize: 151936,
  headDim: 64,
  ropeTheta: 1e6,
  rmsNormEps: 1e-6,
  tieEmbeddings: true,
  qkvBias: true,
  maxSeqLen: 32768,
  initStd: 0.02,
  bosTokenId: 151643,
  eosTokenId: 151643,
  padTokenId: null,
} as const;

// OLMo-2 token ids are the dolma2 tokenizer's: no bos, eos 100257, pad 100277.
const OLMO2_COMMON = {
  arch: "olmo2",
  ropeTheta: 500000,
  rmsNormEps: 1e-6,
  tieEmbeddings: false,
  qkvBias: false,
  initStd: 0.02,
  bosTokenId: null,
  eosTokenId: 100257,
  padTokenId: 100277,
} as const;

// The small presets use the GPT-2 tokenizer: 50,257 ids padded to 50,304, a multiple of 64,
// and 50256 (<|endoftext|>) as bos and eos.
const TINY_SHAPE = {
  vocabSize: 50304,
  hiddenSize: 128,
  intermediateSize: 512,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 32,
  rmsNormEps: 1e-6,
  maxSeqLen: 1024,
  initStd: 0.02,
  bosTokenId: 50256,
  eosTokenId: 50256,
  padTokenId: null,
} as const;

export const PRESETS: Record<string, ModelConfig> = {
  // A Qwen2.5-shaped model of about 108M parameters, 78M of them in the tied embedding.
  "qwen2.5-100m": {
    ...QWEN25_COMMON,
    hiddenSize: 512,
    intermediateSize: 2048,
    numLayers: 8,
    numHeads: 8,
    numKvHeads: 2,
  },
  "qwen2.5-0.5b": {
    ...QWEN25_COMMON,
    hiddenSize: 896,
    intermediateSize: 4864,
    numLayers: 24,
    numHeads: 14,
    numKvHeads: 2,
  },
  // The BPT paper's architecture table lists 36 layers, hidden 2048 and intermediate 11008
  // for its "1.5B" model. That is Qwen2.5-3B's shape, and the table gives no parameter
  // counts of its own, so this preset uses Qwen2.5-1.5B's real shape.
  "qwen2.5-1.5b": {
    ...QWEN25_COMMON,
    hiddenSize: 1536,
    intermediateSize: 8960,
    numLayers: 28,
    numHeads: 12,
    numKvHeads: 2,
    headDim: 128,
  },
  // Shape of allenai/OLMo-2-0425-1B.
  "olmo2-1b": {
    ...OLMO2_COMMON,
    vocabSize: 100352,
    hiddenSize: 2048,
    intermediateSize: 8192,
    numLayers: 16,
    numHeads: 16,
    numKvHeads: 16,
    headDim: 128,
    maxSeqLen: 4096,
  },
  // For CPU runs and quick experiments, not a released model.
  "qwen2.5-tiny": {
    ...TINY_SHAPE,
    arch: "qwen2",
    ropeTheta: 1e6,
    tieEmbeddings: true,
    qkvBias: true,
  },
  // The same small shape with the OLMo-2 block, for CPU runs and quick experiments.
  "olmo2-tiny": {
    ...TINY_SHAPE,
    arch: "olmo2",
    ropeTheta: 500000,
    tieEmbeddings: false,
    qkvBias: false,
  },
  // For unit tests only: small enough to check every value by hand. There is no tokenizer
  // for it, so bos and eos are placeholders.
  "qwen2.5-micro": {
    ...QWEN25_COMMON,
    vocabSize: 97,
    hiddenSize: 32,
    intermediateSize: 64,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    maxSeqLen: 64,
    bosTokenId: null,
    eosTokenId: 0,
  },
};

const INT_FIELDS = [
  "vocabSize",
  "hiddenSize",
  "intermediateSize",
  "numLayers",
  "numHeads",
  "numKvHeads",
  "headDim",
  "maxSeqLen",
] as const;

/** Checks a config built in code or parsed from JSON; throws ConfigError naming the field. */
export function validateConfig(cfg: ModelConfig): void {
  if (!ARCHS.includes(cfg.arch)) {
    throw new ConfigError(
      `unknown arch ${JSON.stringify(cfg.arch)}: use one of ${ARCHS.join(", ")}`,
    );
  }
  for (const key of INT_FIELDS) {
    const value = cfg[key];
    if (!Number.isInteger(value) || value <= 0) {
      throw new ConfigError(`${key} is ${value}: it must be a positive integer`);
    }
  }
  for (const key of ["ropeTheta", "rmsNormEps", "initStd"] as const) {
    const value = cfg[key];
    if (!Number.isFinite(value) || value <= 0) {
      throw new ConfigError(`${key} is ${value}: it must be a positive number`);
    }
  }
  if (cfg.numHeads % cfg.numKvHeads !== 0) {
    throw new ConfigError(
      `numHeads ${cfg.numHeads} is not divisible by numKvHeads ${cfg.numKvHeads}: ` +
        `use a divisor of ${cfg.numHeads}`,
    );
  }
  for (const key of ["bosTokenId", "eosTokenId", "padTokenId"] as const) {
    const id = cfg[key];
    if (id !== null && (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize)) {
      throw new ConfigError(`${key} is ${id}: it must be null or an id in 0..${cfg.vocabSize - 1}`);
    }
  }
}

/** Returns a copy of the named preset, or throws ConfigError listing the valid names. */
export function getPreset(name: string): ModelConfig {
  if (!Object.hasOwn(PRESETS, name)) {
    const names = Object.keys(PRESETS).join(", ");
    throw new ConfigError(`unknown model preset "${name}": use one of ${names}`);
  }
  return { ...PRESETS[name] };
}

const HF_ARCHITECTURES: Record<string, Arch> = {
  Qwen2ForCausalLM: "qwen2",
  Olmo2ForCausalLM: "olmo2",
};

type Json = Record<string, unknown>;

function positiveInt(json: Json, key: string): number {
  const value = json[key];
  if (value === undefined || value === null) {
    throw new ConfigError(`config.json: missing field "${key}": add a positive integer`);
  }
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new ConfigError(
      `config.json: "${key}" is ${JSON.stringify(value)}: it must be a positive integer`,
    );
  }
  return value;
}

function positiveNumber(key: string, value: unknown): number {
  if (value === undefined || value === null) {
    throw new ConfigError(`config.json: missing field "${key}": add a positive number`);
  }
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new ConfigError(
      `config.json: "${key}" is ${JSON.stringify(value)}: it must be a positive number`,
    );
  }
  return value;
}

function optionalTokenId(json: Json, key: string): number | null {
  const value = json[key];
  if (value === undefined || value === null) return null;
  // transformers allows a list of eos ids, and the first is the one that ends a document.
  const id = Array.isArray(value) ? value[0] : value;
  if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
    throw new ConfigError(
      `config.json: "${key}" is ${JSON.stringify(value)}: it must be a token id (integer >= 0)`,
    );
  }
  return id;
}

function parseArch(json: Json): Arch {
  const architectures = json.architectures;
  const names = Object.keys(HF_ARCHITECTURES).join(", ");
  if (!Array.isArray(architectures) || architectures.length === 0) {
    throw new ConfigError(
      `config.json: "architectures" is ${JSON.stringify(architectures)}: ` +
        `it must be a list with one of ${names}`,
    );
  }
  const name = architectures[0];
  if (typeof name !== "string" || !Object.hasOwn(HF_ARCHITECTURES, name)) {
    throw new ConfigError(
      `config.json: unknown architecture ${JSON.stringify(name)}: supported are ${names}`,
    );
  }
  return HF_ARCHITECTURES[name];
}

// Rejects settings that change the forward pass in ways this project does not implement,
// so a model never trains silently with a different architecture than its config states.
function rejectUnsupported(json: Json, arch: Arch): void {
  const act = json.hidden_act;
  if (act !== undefined && act !== "silu") {
    throw new ConfigError(
      `config.json: "hidden_act" is ${JSON.stringify(act)}: only "silu" is supported`,
    );
  }
  if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
    throw new ConfigError(
      `config.json: "rope_scaling" is ${JSON.stringify(json.rope_scaling)}: ` +
        "only plain RoPE is supported, set it to null",
    );
  }
  if (arch === "qwen2" && json.use_sliding_window === true) {
    throw new ConfigError(
      'config.json: "use_sliding_window" is true: only full attention is supported, set it to false',
    );
  }
  if (arch === "olmo2" && json.attention_bias === true) {
    throw new ConfigError(
      'config.json: "attention_bias" is true: OLMo-2 models here have no attention biases, set it to false',
    );
  }
}

// transformers 5 moved rope_theta into rope_parameters, and older files have it at the top level.
function readRopeTheta(json: Json): number {
  if (json.rope_theta !== undefined) return positiveNumber("rope_theta", json.rope_theta);
  const params = json.rope_parameters;
  if (params && typeof params === "object" && "rope_theta" in params) {
    const ropeType = (params as Json).rope_type;
    if (ropeType !== undefined && ropeType !== "default") {
      throw new ConfigError(
        `config.json: "rope_parameters.rope_type" is ${JSON.stringify(ropeType)}: ` +
          'only "default" is supported',
      );
    }
    return positiveNumber("rope_parameters.rope_theta", (params as Json).rope_theta);
  }
  return positiveNumber("rope_theta", undefined);
}

/** Parses and validates a Hugging Face config.json object; throws ConfigError on bad input. */
export function configFromHf(input: unknown): ModelConfig {
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw new ConfigError(
      `config.json: expected a JSON object, got ${JSON.stringify(input)?.slice(0, 40)}`,
    );
  }
  const json = input as Json;
  const arch = parseArch(json);
  rejectUnsupported(json, arch);

  const hiddenSize = positiveInt(json, "hidden_size");
  const numHeads = positiveInt(json, "num_attention_heads");
  // transformers defaults num_key_value_heads to num_attention_heads (plain multi-head).
  const numKvHeads = json.num_key_value_heads === undefined
    ? numHeads
    : positiveInt(json, "num_key_value_heads");
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      `config.json: num_attention_heads ${numHeads} is not divisible by ` +
        `num_key_value_heads ${numKvHeads}: use a divisor of ${numHeads}`,
    );
  }
  let headDim: number;
  if (json.head_dim === undefined || json.head_dim === null) {
    if (hiddenSize % numHeads !== 0) {
      throw new ConfigError(
        `config.json: hidden_size ${hiddenSize} is not divisible by ` +
          `num_attention_heads ${numHeads}: change one or set "head_dim"`,
      );
    }
    headDim = hiddenSize / numHeads;
  } else {
    headDim = positiveInt(json, "head_dim");
  }

  const tie = json.tie_word_embeddings;
  if (tie !== undefined && typeof tie !== "boolean") {
    throw new ConfigError(
      `config.json: "tie_word_embeddings" is ${JSON.stringify(tie)}: it must be true or false`,
    );
  }
  const initStd = json.initializer_range === undefined
    ? 0.02
    : positiveNumber("initializer_range", json.initializer_range);

  const cfg: ModelConfig = {
    arch,
    vocabSize: positiveInt(json, "vocab_size"),
    hiddenSize,
    intermediateSize: positiveInt(json, "intermediate_size"),
    numLayers: positiveInt(json, "num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    ropeTheta: readRopeTheta(json),
    rmsNormEps: positiveNumber("rms_norm_eps", json.rms_norm_eps),
    // Qwen2Config and Olmo2Config in transformers default tie_word_embeddings to false.
    tieEmbeddings: tie ?? false,
    // transformers' Qwen2Attention builds q/k/v with bias whatever the config contains.
    qkvBias: arch === "qwen2",
    maxSeqLen: positiveInt(json, "max_position_embeddings"),
    initStd,
    bosTokenId: optionalTokenId(json, "bos_token_id"),
    eosTokenId: optionalTokenId(json, "eos_token_id"),
    padTokenId: optionalTokenId(json, "pad_token_id"),
  };
  validateConfig(cfg);
  return cfg;
}

export type TorchDtype = "float32" | "bfloat16" | "float16";

/**
 * Builds a Hugging Face config.json object for `cfg`, so that
 * transformers.AutoModelForCausalLM.from_pretrained(dir) builds the same model.
 * `torchDtype` names the dtype of the weights saved beside it.
 */
export function toHfConfig(cfg: ModelConfig, torchDtype: TorchDtype = "float32"): Json {
  if (cfg.arch === "qwen2" && !cfg.qkvBias) {
    throw new ConfigError(
      "qkvBias is false for a qwen2 model: Qwen2 in transformers always has q/k/v biases, set it to true",
    );
  }
  if (cfg.arch === "olmo2" && cfg.qkvBias) {
    throw new ConfigError(
      "qkvBias is true for an olmo2 model: Olmo2 in transformers has no q/k/v-only bias, set it to false",
    );
  }
  const common: Json = {
    architectures: [cfg.arch === "qwen2" ? "Qwen2ForCausalLM" : "Olmo2ForCausalLM"],
    model_type: cfg.arch,
    attention_dropout: 0.0,
    bos_token_id: cfg.bosTokenId,
    eos_token_id: cfg.eosTokenId,
    pad_token_id: cfg.padTokenId,
    hidden_act: "silu",
    hidden_size: cfg.hiddenSize,
    head_dim: cfg.headDim,
    initializer_range: cfg.initStd,
    intermediate_size: cfg.intermediateSize,
    max_position_embeddings: cfg.maxSeqLen,
    num_attention_heads: cfg.numHeads,
    num_hidden_layers: cfg.numLayers,
    num_key_value_heads: cfg.numKvHeads,
    rms_norm_eps: cfg.rmsNormEps,
    rope_scaling: null,
    rope_theta: cfg.ropeTheta,
    tie_word_embeddings: cfg.tieEmbeddings,
    torch_dtype: torchDtype,
    use_cache: true,
    vocab_size: cfg.vocabSize,
  };
  if (cfg.arch === "qwen2") {
    // Same values as the released Qwen2.5 configs: the window settings exist but are off.
    return {
      ...common,
      use_sliding_window: false,
      sliding_window: cfg.maxSeqLen,
      max_window_layers: cfg.numLayers,
    };
  }
  return { ...common, attention_bias: false };
}
