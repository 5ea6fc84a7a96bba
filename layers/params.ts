// Which parameters each training method trains, and how many, computed from the config
// alone without allocating a model.
//
// A block linear W (n × m, out × in) is replaced per method by:
//   full        W trainable                                        n·m
//   bpt         W frozen, diagonals a ∈ ℝⁿ, b ∈ ℝᵐ, U (n × r), V (r × m)   n + m + r(n + m)
//   lora/relora W frozen, B (n × r), A (r × m)                    r(n + m)
//   hyperadapt  W frozen, diagonals a ∈ ℝⁿ, b ∈ ℝᵐ                n + m
// A block linear is wrapped only when the method trains fewer parameters than n·m, otherwise
// it stays Full. Biases, norms, the token embedding and the LM head always train.

import type { ModelConfig } from "./config.ts";

export type Method = "full" | "bpt" | "lora" | "relora" | "hyperadapt";

export const METHODS: readonly Method[] = ["full", "bpt", "lora", "relora", "hyperadapt"];

/** Error for an invalid method name or rank; the message is one line. */
export class ParamsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ParamsError";
  }
}

/** Returns `name` as a Method, or throws ParamsError listing the allowed names. */
export function parseMethod(name: string): Method {
  if (!(METHODS as readonly string[]).includes(name)) {
    throw new ParamsError(`unknown method "${name}": use one of ${METHODS.join(", ")}`);
  }
  return name as Method;
}

/** True for the methods whose adapters have a rank. */
export function usesRank(method: Method): boolean {
  return method === "bpt" || method === "lora" || method === "relora";
}

export type LinearName =
  | "q_proj"
  | "k_proj"
  | "v_proj"
  | "o_proj"
  | "gate_proj"
  | "up_proj"
  | "down_proj";

/** One linear of a transformer block; n is the output size and m the input size. */
export interface LinearShape {
  name: LinearName;
  n: number;
  m: number;
  hasBias: boolean;
}

/** Returns the linears of one transformer block, named as in transformers' Qwen2/OLMo-2. */
export function linearShapes(cfg: ModelConfig): LinearShape[] {
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const h = cfg.hiddenSize;
  const f = cfg.intermediateSize;
  return [
    { name: "q_proj", n: qDim, m: h, hasBias: cfg.qkvBias },
    { name: "k_proj", n: kvDim, m: h, hasBias: cfg.qkvBias },
    { name: "v_proj", n: kvDim, m: h, hasBias: cfg.qkvBias },
    { name: "o_proj", n: h, m: qDim, hasBias: false },
    { name: "gate_proj", n: f, m: h, hasBias: false },
    { name: "up_proj", n: f, m: h, hasBias: false },
    { name: "down_proj", n: h, m: f, hasBias: false },
  ];
}

/** One RMSNorm weight vector; size in elements. */
export interface NormShape {
  name: string;
  size: number;
}

/** Returns the RMSNorm weights of one transformer block. */
export function normShapes(cfg: ModelConfig): NormShape[] {
  const h = cfg.hiddenSize;
  if (cfg.arch === "olmo2") {
    // OLMo-2 normalizes the whole q and k projections, before splitting into heads.
    return [
      { name: "post_attention_layernorm", size: h },
      { name: "post_feedforward_layernorm", size: h },
      { name: "q_norm", size: cfg.numHeads * cfg.headDim },
      { name: "k_norm", size: cfg.numKvHeads * cfg.headDim },
    ];
  }
  return [
    { name: "input_layernorm", size: h },
    { name: "post_attention_layernorm", size: h },
  ];
}

/** Returns the parameters `method` trains in place of an n × m weight once wrapped. */
export function adapterParamCount(method: Method, n: number, m: number, rank: number): number {
  switch (method) {
    case "full":
      return n * m;
    case "bpt":
      return n + m + rank * (n + m);
    case "lora":
    case "relora":
      return rank * (n + m);
    case "hyperadapt":
      return n + m;
  }
}

/** True when `method` wraps an n × m block linear, i.e. trains fewer than n·m for it. */
export function wrapsLinear(method: Method, n: number, m: number, rank: number): boolean {
  return method !== "full" && adapterParamCount(method, n, m, rank) < n * m;
}

// Largest rank r with adapterParamCount(r) < n·m, from c + r(n + m) < n·m where c is the
// rank-free part (n + m for BPT, 0 for LoRA). It is 0 when no rank wraps the linear.
function maxWrappingRank(method: Method, n: number, m: number): number {
  const fixed = method === "bpt" ? n + m : 0;
  return Math.max(0, Math.floor((n * m - fixed - 1) / (n + m)));
}

/**
 * Returns the largest rank at which `method` wraps at least one block linear of `cfg`.
 * Every rank above min(n, m) leaves a linear Full, because r(n + m) > min(n, m)·(n + m) ≥ n·m,
 * so this bound is always below the largest min(n, m).
 */
export function maxRank(cfg: ModelConfig, method: Method): number {
  let best = 0;
  for (const { n, m } of linearShapes(cfg)) best = Math.max(best, maxWrappingRank(method, n, m));
  return best;
}

/**
 * Checks `rank` for a method with a rank; throws ParamsError with the allowed range.
 * A rank that wraps no block linear is rejected, since that run would be plain full training.
 */
export function validateRank(cfg: ModelConfig, method: Method, rank: number): void {
  if (!usesRank(method)) return;
  const largest = maxRank(cfg, method);
  if (!Number.isInteger(rank) || rank < 1) {
    throw new ParamsError(`rank ${rank} is invalid for ${method}: use an integer in 1..${largest}`);
  }
  if (rank > largest) {
    throw new ParamsError(
      `rank ${rank} is too large for ${method}: every block linear would stay Full ` +
        `(the adapter would need at least n·m parameters), use 1..${largest}`,
    );
  }
}

/** Parameter count of one block linear under a method; weight counts exclude the bias. */
export interface LinearCount extends LinearShape {
  wrapped: boolean;
  // n·m, part of the plain model.
  weight: number;
  // Trainable parameters standing for the weight: n·m when Full, the adapter when wrapped.
  trainableWeight: number;
  bias: number;
}

/** Total and trainable parameters of one class of tensors, summed over the whole model. */
export interface ClassCount {
  total: number;
  trainable: number;
}

export interface ParamCount {
  method: Method;
  rank: number;
  // Parameters of the plain model, without adapter factors.
  total: number;
  // Parameters that receive gradients: frozen weights excluded, adapter factors included.
  trainable: number;
  // Same counts without the token embedding, and without the LM head when it is untied.
  nonEmbeddingTotal: number;
  nonEmbeddingTrainable: number;
  // 1 − trainable / total, as a fraction.
  reduction: number;
  nonEmbeddingReduction: number;
  // Linears of one transformer block, since every block has the same shapes.
  perLinear: LinearCount[];
  // Number of wrapped and of Full block linears over all layers.
  wrappedLinears: number;
  fullLinears: number;
  classes: {
    embeddings: ClassCount;
    norms: ClassCount;
    biases: ClassCount;
    wrappedLinears: ClassCount;
    fullLinears: ClassCount;
  };
}

/**
 * Counts the total and trainable parameters of `cfg` trained with `method`.
 * `rank` is ignored for full and hyperadapt; for the others it is checked by validateRank.
 */
export function countParams(cfg: ModelConfig, method: Method, rank: number): ParamCount {
  validateRank(cfg, method, rank);
  const layers = cfg.numLayers;

  const perLinear: LinearCount[] = linearShapes(cfg).map((shape) => {
    const wrapped = wrapsLinear(method, shape.n, shape.m, rank);
    const weight = shape.n * shape.m;
    return {
      ...shape,
      wrapped,
      weight,
      trainableWeight: wrapped ? adapterParamCount(method, shape.n, shape.m, rank) : weight,
      bias: shape.hasBias ? shape.n : 0,
    };
  });

  const wrapped: ClassCount = { total: 0, trainable: 0 };
  const full: ClassCount = { total: 0, trainable: 0 };
  let biases = 0;
  let wrappedLinears = 0;
  for (const linear of perLinear) {
    const group = linear.wrapped ? wrapped : full;
    group.total += layers * linear.weight;
    group.trainable += layers * linear.trainableWeight;
    biases += layers * linear.bias;
    if (linear.wrapped) wrappedLinears += layers;
  }

  let norms = cfg.hiddenSize; // the final norm before the LM head
  for (const norm of normShapes(cfg)) norms += layers * norm.size;

  const embeddingTensors = cfg.tieEmbeddings ? 1 : 2;
  const embeddings = embeddingTensors * cfg.vocabSize * cfg.hiddenSize;

  const nonEmbeddingTotal = wrapped.total + full.total + biases + norms;
  const nonEmbeddingTrainable = wrapped.trainable + full.trainable + biases + norms;
  const total = nonEmbeddingTotal + embeddings;
  const trainable = nonEmbeddingTrainable + embeddings;
  return {
    method,
    rank,
    total,
    trainable,
    nonEmbeddingTotal,
    nonEmbeddingTrainable,
    reduction: 1 - trainable / total,
    nonEmbeddingReduction: 1 - nonEmbeddingTrainable / nonEmbeddingTotal,
    perLinear,
    wrappedLinears,
    fullLinears: layers * perLinear.length - wrappedLinears,
    classes: {
      embeddings: { total: embeddings, trainable: embeddings },
      norms: { total: norms, trainable: norms },
      biases: { total: biases, trainable: biases },
      wrappedLinears: wrapped,
      fullLinears: full,
    },
  };
}
