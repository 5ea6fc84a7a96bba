// Learning-rate schedules as pure functions of the optimizer step.
//
// Steps are 0-based: `schedule(s)` is the learning rate of the (s+1)-th
// optimizer step. Every warm-up of W steps gives its k-th step (k = 0, 1, …)
// the fraction (k + 1)/(W + 1) of the target value, as nanoGPT does, so no step
// is spent at learning rate 0.

/** Learning rate as a function of the 0-based optimizer step. */
export type Schedule = (step: number) => number;

/**
 * Peak learning rates per training method, used when the caller gives none.
 * Full fine-tuning of all weights takes a 10× smaller rate than the
 * low-rank and diagonal methods, which train few parameters from a fresh start.
 */
export const DEFAULT_LR = {
  full: 2e-4,
  bpt: 2e-3,
  relora: 2e-3,
  lora: 2e-3,
  hyperadapt: 2e-3,
} as const;

function checkStep(step: number) {
  if (!Number.isInteger(step) || step < 0) {
    throw new RangeError(`invalid step ${step}: schedules take integer steps ≥ 0`);
  }
}

function checkCount(name: string, value: number, min: number) {
  if (!Number.isInteger(value) || value < min) {
    throw new RangeError(`invalid ${name} ${value}: expected an integer ≥ ${min}`);
  }
}

function checkRatio(ratio: number) {
  if (!(ratio >= 0 && ratio <= 1)) {
    throw new RangeError(`invalid minLrRatio ${ratio}: expected a value in [0, 1]`);
  }
}

// Linear ramp peak·(step + 1)/(warmup + 1), as nanoGPT does: the first step
// already moves the weights, and step `warmup` reaches `peak`.
function warmupValue(step: number, warmup: number, peak: number): number {
  return peak * (step + 1) / (warmup + 1);
}

/** Options of the warm-up, stable, decay schedule. */
export interface WsdOptions {
  /** Learning rate of the stable phase. */
  peak: number;
  /** Steps in the whole run; the last step is `total - 1`. */
  total: number;
  /** Warm-up steps: the rate rises linearly from peak/(warmup + 1) at step 0 to `peak` at step `warmup`. */
  warmup: number;
  /** Decay steps at the end of the run: the rate falls linearly to `minLrRatio · peak` at the last step. */
  decay: number;
  /** Final rate as a fraction of `peak`. Default 0. */
  minLrRatio?: number;
}

/**
 * Creates a warm-up, stable, decay (WSD) schedule. With D = `decay` and
 * s₀ = total − 1 − D, the rate is peak·s/W for s < W, peak for W ≤ s ≤ s₀, and
 * peak·(1 − q·(1 − minLrRatio)) with q = (s − s₀)/D for s > s₀, so the last
 * step gets exactly minLrRatio·peak. Steps past the end keep that value.
 * The BPT paper trains with warm-up 2000 and decay 8000-10000 steps.
 */
export function wsd(opts: WsdOptions): Schedule {
  const { peak, total, warmup, decay } = opts;
  const minRatio = opts.minLrRatio ?? 0;
  checkCount("total", total, 1);
  checkCount("warmup", warmup, 0);
  checkCount("decay", decay, 0);
  checkRatio(minRatio);
  if (warmup + decay > total) {
    throw new RangeError(
      `invalid WSD schedule: warmup ${warmup} + decay ${decay} exceeds total ${total} steps`,
    );
  }
  const decayAnchor = total - 1 - decay;

  return (step) => {
    checkStep(step);
    if (step < warmup) return warmupValue(step, warmup, peak);
    if (step <= decayAnchor) return peak;

    const q = Math.min(1, (step - decayAnchor) / decay);
    return peak * (1 - q * (1 - minRatio));
  };
}

/** Options of the cosine schedule. */
export interface CosineOptions {
  /** Learning rate at the end of the warm-up. */
  peak: number;
  /** Steps in the whole run; the last step is `total - 1`. */
  total: number;
  /** Warm-up steps. Default 0. */
  warmup?: number;
  /** Final rate as a fraction of `peak`. Default 0. */
  minLrRatio?: number;
}

/**
 * Creates a cosine schedule: linear warm-up to `peak` at step W, then
 * min + (peak − min)·(1 + cos(π·q))/2 with q = (s − W)/(total − 1 − W), which
 * reaches min = minLrRatio·peak at the last step. Steps past the end keep min.
 */
export function cosine(opts: CosineOptions): Schedule {
  const { peak, total } = opts;
  const warmup = opts.warmup ?? 0;
  const minRatio = opts.minLrRatio ?? 0;
  checkCount("total", total, 1);
  checkCount("warmup", warmup, 0);
  checkRatio(minRatio);
  if (warmup > total - 1) {
    throw new RangeError(
      `invalid cosine schedule: warmup ${warmup} leaves no step of ${total} to decay`,
    );
  }
  const min = minRatio * peak;
  const span = total - 1 - warmup;

  return (step) => {
    checkStep(step);
    if (step < warmup) return warmupValue(step, warmup, peak);
    if (span === 0) return min;

    const q = Math.min(1, (step - warmup) / span);
    return min + (peak - min) * (1 + Math.cos(Math.PI * q)) / 2;
  };
}

/** Creates a constant schedule at `peak`, after an optional linear warm-up over `warmup` steps. */
export function constant(opts: { peak: number; warmup?: number }): Schedule {
  const warmup = opts.warmup ?? 0;
  checkCount("warmup", warmup, 0);
  return (step) => {
    checkStep(step);
    return step < warmup ? warmupValue(step, warmup, opts.peak) : opts.peak;
  };
}

/** Options of `jagged`. */
export interface JaggedOptions {
  /** Steps at which the optimizer state is reset: a sorted list, or every K steps (K, 2K, …). */
  resetSteps: number[] | { every: number };
  /** Steps of the linear warm-up after each reset. Default 100. */
  warmup?: number;
}

/**
 * Adds ReLoRA-style jagged restarts to `base`. At a reset step r the rate drops
 * and rises linearly over `warmup` steps: s ↦ base(r + warmup)·(s − r + 1)/(warmup + 1)
 * for r ≤ s < r + warmup, and base(s) elsewhere. Ramping to the base value where
 * the warm-up ends keeps the schedule continuous there. ReLoRA's reference code
 * (github.com/Guitaricet/relora, peft_pretraining/training_utils.py) ramps to
 * the cosine value near the reset step instead, which differs by the base's
 * change over `warmup` steps.
 */
export function jagged(base: Schedule, opts: JaggedOptions): Schedule {
  const warmup = opts.warmup ?? 100;
  checkCount("warmup", warmup, 1);
  const resets = opts.resetSteps;
  if (Array.isArray(resets)) {
    resets.forEach((r, k) => {
      checkCount("reset step", r, 1);
      if (k > 0 && r <= resets[k - 1]) {
        throw new RangeError(
          `invalid resetSteps: ${r} follows ${resets[k - 1]}; list them in increasing order`,
        );
      }
    });
  } else {
    checkCount("reset interval", resets.every, 1);
  }

  // The last reset at or before `step`, or -1 when none has happened yet.
  const lastReset = (step: number): number => {
    if (!Array.isArray(resets)) {
      const r = Math.floor(step / resets.every) * resets.every;
      return r > 0 ? r : -1;
    }
    let found = -1;
    for (const r of resets) {
      if (r > step) break;
      found = r;
    }
    return found;
  };

  return (step) => {
    checkStep(step);
    const r = lastReset(step);
    if (r < 0 || step - r >= warmup) return base(step);
    return base(r + warmup) * (step - r + 1) / (warmup + 1);
  };
}
