// Rank of one block linear's accumulated update ΔW = W_eff(step) − W_eff(0) during a run,
// for `deno task compare`. BPT's update can be high-rank at every step, LoRA's stays at rank
// ≤ r, and ReLoRA's grows by at most r per merge. The tracker measures which one happens.

import type { DType } from "../core/tensor.ts";
import type { ModelConfig } from "../layers/config.ts";
import { linearShapes } from "../layers/params.ts";
import { effectiveRank, numericalRank, singularValues } from "../layers/rank.ts";
import { OptionsError } from "./options.ts";
import type { EvalPoint } from "./run.ts";
import type { Trainer } from "./trainer.ts";

/**
 * Unit roundoff 2^-p of each storage dtype, p being the significand bits including the
 * implicit one: 8 for bf16, 11 for f16, 24 for f32.
 */
export const UNIT_ROUNDOFF: Readonly<Record<DType, number>> = {
  bf16: 2 ** -8,
  f16: 2 ** -11,
  f32: 2 ** -24,
};

/** Rank figures of ΔW at one evaluation. */
export interface RankPoint {
  step: number;
  tokens: number;
  /** Singular values of ΔW above `threshold`. */
  numericalRank: number;
  /** exp(entropy) of the singular values above `threshold`, normalised to sum to 1. */
  effectiveRank: number;
  /** Largest singular value of ΔW. */
  sigmaMax: number;
  /** Absolute noise floor 2·u·rms(W_eff(step))·(√n + √m), u the unit roundoff of the dtype. */
  threshold: number;
}

/**
 * Measures the rank of ΔW = w − w0 for n×m row-major weights stored in `dtype`.
 *
 * Rounding W to the storage dtype adds an error E with |E_ij| ≤ u·|W_ij|. Taken as
 * independent and uniform, the entries of E have a standard deviation of about
 * u·rms(W)/√3, and the largest singular value of such an n×m matrix is about
 * std·(√n + √m) (Bai–Yin). The threshold 2·u·rms(W)·(√n + √m) sits 2√3 ≈ 3.5 times above that
 * estimate, which leaves room for the errors of up to about a dozen rounding merges adding up.
 * The rigorous bound ‖E‖₂ ≤ u·‖W‖_F would be several times higher and hide the real
 * directions of a small high-rank update. A fixed relative tolerance would instead count bf16
 * rounding of W (relative size 2^-8) as full rank whenever ΔW is small next to W.
 */
export function updateRank(
  w0: ArrayLike<number>,
  w: ArrayLike<number>,
  n: number,
  m: number,
  dtype: DType,
): Omit<RankPoint, "step" | "tokens"> {
  if (w0.length !== n * m || w.length !== n * m) {
    throw new RangeError(
      `updateRank: expected ${n}×${m} = ${n * m} values, got ${w0.length} and ${w.length}`,
    );
  }
  const delta = new Float64Array(n * m);
  let squares = 0;
  for (let i = 0; i < n * m; i++) {
    delta[i] = w[i] - w0[i];
    squares += w[i] * w[i];
  }
  const rms = Math.sqrt(squares / (n * m));
  const threshold = 2 * UNIT_ROUNDOFF[dtype] * rms * (Math.sqrt(n) + Math.sqrt(m));
  const sv = singularValues(delta, n, m);
  const sigmaMax = sv.length > 0 ? sv[0] : 0;
  if (sigmaMax <= threshold) {
    return { numericalRank: 0, effectiveRank: 0, sigmaMax, threshold };
  }
  // The f64 Jacobi SVD is accurate to about 1e-15 · σ_max, so 1e-12 bounds the tolerance
  // from below for f32 weights whose update dwarfs them.
  const relTol = Math.max(threshold / sigmaMax, 1e-12);
  const rank = numericalRank(sv, relTol);
  return {
    numericalRank: rank,
    effectiveRank: effectiveRank(sv.subarray(0, rank)),
    sigmaMax,
    threshold,
  };
}

const MLP_LINEARS = new Set(["gate_proj", "up_proj", "down_proj"]);

/** Returns the full names of the block linears of `cfg`, e.g. `model.layers.0.mlp.up_proj`. */
export function blockLinearNames(cfg: ModelConfig): string[] {
  const names: string[] = [];
  for (let layer = 0; layer < cfg.numLayers; layer++) {
    for (const { name } of linearShapes(cfg)) {
      const module = MLP_LINEARS.has(name) ? "mlp" : "self_attn";
      names.push(`model.layers.${layer}.${module}.${name}`);
    }
  }
  return names;
}

/**
 * Resolves `query` to one block linear of `cfg`: the full name, or a suffix of it that starts
 * after a dot, such as `layers.0.mlp.up_proj` or `0.mlp.up_proj`. Throws OptionsError.
 */
export function resolveLayerName(cfg: ModelConfig, query: string): string {
  const names = blockLinearNames(cfg);
  const matches = names.filter((name) => name === query || name.endsWith(`.${query}`));
  if (matches.length === 1) return matches[0];
  const last = cfg.numLayers - 1;
  const hint = `use a name such as layers.0.mlp.up_proj or layers.${last}.self_attn.q_proj`;
  if (matches.length === 0) {
    throw new OptionsError(
      `--rank-layer "${query}" matches no block linear of a ${cfg.numLayers}-layer model: ${hint}`,
    );
  }
  throw new OptionsError(
    `--rank-layer "${query}" matches ${matches.length} linears (${matches[0]}, …): ${hint}`,
  );
}

/** Records the rank of one linear's update at each evaluation of a run, via `RunHooks.onEval`. */
export class RankTracker {
  readonly layer: string;
  readonly dtype: DType;
  readonly points: RankPoint[] = [];
  outFeatures = 0;
  inFeatures = 0;
  #w0: Float32Array | null = null;

  /** `layer` is a full linear name from `resolveLayerName`; `dtype` the parameter dtype. */
  constructor(layer: string, dtype: DType) {
    this.layer = layer;
    this.dtype = dtype;
  }

  /** Takes W_eff(0) at the step-0 evaluation and measures ΔW at every later one. */
  onEval = async (trainer: Trainer, point: EvalPoint): Promise<void> => {
    const linear = trainer.model.linears().find((l) => l.name === this.layer);
    if (!linear) throw new Error(`RankTracker: the model has no linear ${this.layer}`);
    const weight = await linear.effectiveWeight();
    if (this.#w0 === null) {
      if (point.step !== 0) {
        throw new Error(
          `RankTracker: first evaluation is at step ${point.step}, but W_eff(0) needs step 0`,
        );
      }
      this.#w0 = weight;
      this.outFeatures = linear.outFeatures;
      this.inFeatures = linear.inFeatures;
    }
    const rank = updateRank(this.#w0, weight, linear.outFeatures, linear.inFeatures, this.dtype);
    this.points.push({ step: point.step, tokens: point.tokens, ...rank });
  };
}
