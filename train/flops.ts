// Floating-point operations of one training step (forward and backward) under each method,
// counted per matmul, and model FLOPs utilization (MFU).
//
// Counting rules, for N tokens per step and a block linear W of n × m (out × in):
// - A matmul costs 2 FLOPs per multiply-add: 2·N·n·m for W applied to N tokens.
// - Backward of every linear computes the input gradient, 2·N·n·m, including the first
//   block's, because the token embedding trains and needs it. The weight gradient, another
//   2·N·n·m, is computed only where W trains (full, or a linear the method leaves Full).
// - BPT, y = a ⊙ (W (b ⊙ x) + U (V (b ⊙ x))): the factors add 2·N·r·m (V) and 2·N·n·r (U)
//   forward, and twice that backward (input gradients plus the gradients of U and V). The
//   diagonals cost N·(n + m) forward and 2·N·(n + m) backward (input and diagonal gradient).
//   A linear merges W + U V for each forward pass of M tokens where M·(n + m) ≥ 2·n·m
//   (mergeWeights). The merge costs 2·n·r·m per pass. In exchange, U's forward product and
//   V's input-gradient product, 2·N·r·(n + m) together, are not done.
// - LoRA and ReLoRA: the same factor matmuls without diagonals. The α/r scaling is an
//   elementwise op and is not counted.
// - HyperAdapt: W's forward and input gradient plus the diagonals.
// - Attention: QKᵀ and PV cost 2·B·Hq·T²·D each forward, over the whole T × T score
//   matrix although the causal mask zeroes half of it, as PaLM (arxiv.org/abs/2204.02311,
//   appendix B) and nanoGPT's estimate_mfu count it. Backward is twice the forward: dQ and dK
//   from the scores, dP and dV from PV.
// - LM head: 2·N·C·V forward, input and weight gradient backward; the embedding always
//   trains, tied or not.
// - Not counted: norms, RoPE, SwiGLU, softmax, residual adds, biases, the embedding lookup
//   and its scatter-add gradient, the loss, the AdamW update, and the periodic BPT and ReLoRA merges
//   (2·n·r·m per wrapped linear once per merge interval).

import type { ModelConfig } from "../layers/config.ts";
import { mergeWeights } from "../layers/bpt_linear.ts";
import { linearShapes, type Method, validateRank, wrapsLinear } from "../layers/params.ts";

/** FLOPs of one part of the model in one step. */
export interface PartFlops {
  forward: number;
  backward: number;
}

/** FLOPs of one optimizer step, in total and per part of the model. */
export interface StepFlops {
  forward: number;
  backward: number;
  total: number;
  byPart: {
    // The block linears' own weights W: forward, input gradients, and weight gradients
    // where W trains.
    dense: PartFlops;
    // Low-rank factors of BPT, LoRA and ReLoRA.
    adapters: PartFlops;
    // Diagonal scalings of BPT and HyperAdapt.
    diagonals: PartFlops;
    attention: PartFlops;
    lmHead: PartFlops;
  };
}

/**
 * Counts the FLOPs of one optimizer step of `cfg` trained with `method` over `tokens` tokens
 * in sequences of `seqLen`, so tokens = batch · grad-accum · seqLen, of which each forward
 * pass takes `passTokens` = batch · seqLen (default `tokens`). Throws RangeError for
 * counts that are not positive integers or a `tokens` that is not a multiple of `seqLen`
 * and `passTokens`, and ParamsError for an invalid rank.
 */
export function stepFlops(
  cfg: ModelConfig,
  method: Method,
  rank: number,
  tokens: number,
  seqLen: number,
  passTokens = tokens,
): StepFlops {
  const counts = [["tokens", tokens], ["seqLen", seqLen], ["passTokens", passTokens]] as const;
  for (const [name, value] of counts) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new RangeError(`${name} ${value} is invalid: use a positive integer`);
    }
  }
  if (tokens % seqLen !== 0 || tokens % passTokens !== 0) {
    throw new RangeError(
      `tokens ${tokens} is not a multiple of seqLen ${seqLen} and passTokens ${passTokens}: pass whole sequences and passes`,
    );
  }
  const passes = tokens / passTokens;
  validateRank(cfg, method, rank);

  const N = tokens;
  const dense: PartFlops = { forward: 0, backward: 0 };
  const adapters: PartFlops = { forward: 0, backward: 0 };
  const diagonals: PartFlops = { forward: 0, backward: 0 };

  for (const { n, m } of linearShapes(cfg)) {
    const matmul = 2 * N * n * m;
    const wrapped = wrapsLinear(method, n, m, rank);
    dense.forward += matmul;
    dense.backward += wrapped ? matmul : 2 * matmul;
    if (!wrapped) continue;

    const factors = 2 * N * rank * (n + m);
    if (method === "bpt" && mergeWeights(passTokens, n, m)) {
      adapters.forward += 2 * N * rank * m + passes * 2 * n * rank * m;
      adapters.backward += 2 * N * rank * (2 * n + m);
    } else if (method === "bpt" || method === "lora" || method === "relora") {
      adapters.forward += factors;
      adapters.backward += 2 * factors;
    }
    if (method === "bpt" || method === "hyperadapt") {
      diagonals.forward += N * (n + m);
      diagonals.backward += 2 * N * (n + m);
    }
  }
  for (const part of [dense, adapters, diagonals]) {
    part.forward *= cfg.numLayers;
    part.backward *= cfg.numLayers;
  }

  // Per layer and sequence, QKᵀ and PV are 2·Hq·T²·D each, and there are N / T sequences.
  const attentionForward = cfg.numLayers * 2 * 2 * cfg.numHeads * N * seqLen * cfg.headDim;
  const attention = { forward: attentionForward, backward: 2 * attentionForward };

  const headForward = 2 * N * cfg.hiddenSize * cfg.vocabSize;
  const lmHead = { forward: headForward, backward: 2 * headForward };

  const parts = [dense, adapters, diagonals, attention, lmHead];
  const forward = parts.reduce((sum, part) => sum + part.forward, 0);
  const backward = parts.reduce((sum, part) => sum + part.backward, 0);
  return {
    forward,
    backward,
    total: forward + backward,
    byPart: { dense, adapters, diagonals, attention, lmHead },
  };
}

/**
 * Returns model FLOPs utilization: the fraction of `ceilingFlopsPerSecond` (the device's peak
 * for the dtype in use) that `flopsPerStep` FLOPs in `stepSeconds` seconds reach. With
 * `stepFlops` counts it rates the matmuls a method executes, so BPT and Full runs at the
 * same MFU differ in step time by their FLOPs ratio.
 */
export function mfu(
  flopsPerStep: number,
  stepSeconds: number,
  ceilingFlopsPerSecond: number,
): number {
  const checks = [
    ["flopsPerStep", flopsPerStep],
    ["stepSeconds", stepSeconds],
    ["ceilingFlopsPerSecond", ceilingFlopsPerSecond],
  ] as const;
  for (const [name, value] of checks) {
    if (!Number.isFinite(value) || value <= 0) {
      throw new RangeError(`${name} ${value} is invalid: use a positive number`);
    }
  }
  return flopsPerStep / stepSeconds / ceilingFlopsPerSecond;
}
