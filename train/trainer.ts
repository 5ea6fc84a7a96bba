// One training run: the model, AdamW, clipping, the schedule, the loaders and
// the BPT/ReLoRA merges. A step records every micro-batch's forward and
// backward, the clipping and the optimizer into one command encoder, and waits
// on the GPU once, when it reads the step's loss and gradient norm back.

import { backward, clearTape, noGrad } from "../core/autograd.ts";
import { fillInPlace } from "../core/ops/elementwise.ts";
import { beginScope, empty, endScope, gpu, ledger, scoped, type Tensor } from "../core/tensor.ts";
import type { ModelConfig } from "../layers/config.ts";
import { CausalLM } from "../layers/model.ts";
import { AdamW } from "../optim/adamw.ts";
import { GradNormClip } from "../optim/clip.ts";
import { constant, cosine, jagged, type Schedule, wsd } from "../optim/schedule.ts";
import { DEFAULT_LR } from "../optim/schedule.ts";
import { createLoader, type Loader } from "../data/loader.ts";
import type { LoaderState } from "../data/pipeline.ts";
import type { TrainOptions } from "./options.ts";

/** Figures of one optimizer step. */
export interface StepResult {
  step: number;
  loss: number;
  gradNorm: number;
  lr: number;
  tokens: number;
  seconds: number;
  merged: boolean;
}

/** Builds the run's learning-rate schedule from the options. */
export function buildSchedule(opts: TrainOptions): Schedule {
  const peak = opts.lr ?? DEFAULT_LR[opts.method];
  const total = opts.steps;
  let base: Schedule;
  switch (opts.schedule) {
    case "wsd":
      base = wsd({
        peak,
        total,
        warmup: opts.warmup,
        decay: opts.decaySteps,
        minLrRatio: opts.minLrRatio,
      });
      break;
    case "cosine":
      base = cosine({ peak, total, warmup: opts.warmup, minLrRatio: opts.minLrRatio });
      break;
    case "constant":
      base = constant({ peak, warmup: opts.warmup });
      break;
  }
  // ReLoRA restarts the learning rate from 0 after each merge and optimizer reset.
  if (opts.method === "relora" && opts.mergeEvery > 0) {
    return jagged(base, { resetSteps: { every: opts.mergeEvery }, warmup: opts.reloraWarmup });
  }
  return base;
}

/** A model with its optimizer, schedule and data position. */
export class Trainer {
  readonly opts: TrainOptions;
  readonly config: ModelConfig;
  readonly model: CausalLM;
  readonly optimizer: AdamW;
  readonly clip: GradNormClip | null;
  readonly schedule: Schedule;
  loader: Loader;
  valLoader: Loader | null = null;
  /** Optimizer steps done. */
  step = 0;
  /** Tokens consumed by training so far. */
  tokens = 0;

  private constructor(opts: TrainOptions, config: ModelConfig, model: CausalLM, loader: Loader) {
    this.opts = opts;
    this.config = config;
    this.model = model;
    this.loader = loader;
    this.optimizer = new AdamW(
      model.trainable().map((p) => ({ name: p.name, tensor: p.tensor, decay: p.decay })),
      {
        betas: [opts.beta1, opts.beta2],
        weightDecay: opts.weightDecay,
        bf16Update: opts.bf16Update,
        seed: opts.seed,
      },
    );
    // With clipping off the norm is still measured, for the log.
    this.clip = new GradNormClip(opts.gradClip > 0 ? opts.gradClip : Infinity);
    this.schedule = buildSchedule(opts);
  }

  /** Creates the model and the training loader (`loaderState` resumes the data position). */
  static async create(
    opts: TrainOptions,
    config: ModelConfig,
    loaderState?: LoaderState,
  ): Promise<Trainer> {
    const model = new CausalLM(config, {
      method: opts.method,
      rank: opts.rank,
      alpha: opts.alpha,
      dtype: opts.dtype,
      seed: opts.seed,
    });
    const loader = await createLoader({
      source: opts.data,
      tokenizer: opts.tokenizer,
      batch: opts.batch,
      seqLen: opts.seqLen,
      seed: opts.seed,
      split: "train",
      state: loaderState,
    });
    return new Trainer(opts, config, model, loader);
  }

  /** Tokens per optimizer step. */
  get tokensPerStep(): number {
    return this.opts.batch * this.opts.seqLen * this.opts.gradAccum;
  }

  /** Runs one optimizer step over `gradAccum` micro-batches; merges when due. */
  async trainStep(): Promise<StepResult> {
    const { batch, seqLen, gradAccum } = this.opts;
    const start = performance.now();
    const lr = this.schedule(this.step);

    // Micro-batches: the mean loss of each is scaled by 1/gradAccum so the
    // accumulated gradient is the gradient of the mean over the step.
    const losses: Tensor[] = [];
    for (let k = 0; k < gradAccum; k++) {
      const b = await this.loader.next();
      beginScope();
      let loss: Tensor;
      try {
        loss = this.model.loss(b.inputs, b.targets, batch, seqLen);
        const seed = empty([1], { memoryClass: "scratch" });
        fillInPlace(seed, 1 / gradAccum);
        backward(loss, seed);
      } catch (e) {
        clearTape();
        endScope();
        throw e;
      }
      endScope([loss]);
      losses.push(loss);
    }

    const grads = this.optimizer.gradients();
    const scale = this.clip ? this.clip.computeScale(grads) : undefined;
    this.optimizer.step(lr, scale);
    this.optimizer.zeroGrad();

    // stats = [loss of each micro-batch…, grad norm], read back in the step's single wait.
    const stats = empty([gradAccum + 1], { memoryClass: "scratch", name: "step-stats" });
    const g = gpu();
    losses.forEach((l, k) => g.copy(l.buffer, 0, stats.buffer, 4 * k, 4));
    if (this.clip) g.copy(this.clip.normTensor.buffer, 0, stats.buffer, 4 * gradAccum, 4);
    const values = await stats.toArray();
    stats.dispose();
    for (const l of losses) l.dispose();
    let loss = 0;
    for (let k = 0; k < gradAccum; k++) loss += values[k] / gradAccum;

    this.step++;
    this.tokens += this.tokensPerStep;
    let merged = false;
    if (this.opts.mergeEvery > 0 && this.step % this.opts.mergeEvery === 0) {
      merged = await this.merge();
    }
    return {
      step: this.step,
      loss,
      gradNorm: this.clip ? values[gradAccum] : NaN,
      lr,
      tokens: this.tokens,
      seconds: (performance.now() - start) / 1000,
      merged,
    };
  }

  /** BPT/ReLoRA: folds every wrapped linear's factors into W and resets their optimizer state. */
  async merge(): Promise<boolean> {
    const method = this.model.options.method;
    if (method !== "bpt" && method !== "relora") return false;
    const reset: Tensor[] = [];
    for (const l of this.model.linears()) reset.push(...l.merge());
    if (reset.length === 0) return false;
    // BPT resets U and V fully; ReLoRA prunes its factors' state by magnitude.
    const pruneFraction = method === "relora" && this.opts.reloraPrune < 1
      ? this.opts.reloraPrune
      : undefined;
    await this.optimizer.resetState(reset, { pruneFraction });
    await gpu().sync();
    return true;
  }

  /**
   * Returns the mean validation loss (nats per token) over `evalTokens` tokens of
   * the held-out split, or over the batches done when `stop()` turns true.
   */
  async evaluate(stop: () => boolean = () => false): Promise<number> {
    const { batch, seqLen } = this.opts;
    if (!this.valLoader) {
      this.valLoader = await createLoader({
        source: this.opts.data,
        tokenizer: this.opts.tokenizer,
        batch,
        seqLen,
        seed: this.opts.seed,
        split: "val",
      });
    } else {
      this.valLoader.restart();
    }
    const batches = Math.max(1, Math.ceil(this.opts.evalTokens / (batch * seqLen)));
    let sum = 0;
    let done = 0;
    while (done < batches && !(done > 0 && stop())) {
      const b = await this.valLoader.next();
      const loss = scoped(() => noGrad(() => this.model.loss(b.inputs, b.targets, batch, seqLen)));
      sum += (await loss.toArray())[0];
      loss.dispose();
      done++;
    }
    return sum / done;
  }

  /** Peak bytes per ledger class since the last reset. */
  memory() {
    return { ...ledger.peak, total: ledger.peakTotal };
  }

  /** Stops the loaders' prefetching. */
  close() {
    this.loader.close();
    this.valLoader?.close();
  }

  /** Frees the model and optimizer state on the GPU (after `close`). */
  dispose() {
    this.optimizer.dispose();
    this.clip?.dispose();
    this.model.dispose();
  }
}
