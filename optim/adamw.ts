// AdamW on the GPU: no readback and no submit, so a whole training step stays
// one submission. Small parameters share dispatches, up to as many as the
// device's storage bindings allow, and large ones get a dispatch per binding
// window.
//
// Decoupled weight decay as in Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization" (ICLR 2019), in the form of torch.optim.AdamW (PyTorch 2.x):
// p ← p·(1 − lr·wd) before the bias-corrected Adam step. Step counts are kept
// per parameter, so bias correction restarts for a parameter whose state is
// reset, as it does for a fresh PyTorch optimizer state.

import { type DType, fromArray, gpu, type Tensor, writeBytes, zeros } from "../core/tensor.ts";
import { grid1d, uniforms, window, windowElements } from "../core/wgsl.ts";
import {
  bindingsPerJob,
  masterLoadCode,
  updateCode,
  type UpdateUniforms,
  updateUniforms,
  updateWorkgroups,
  type WriteMode,
} from "./adamw_kernel.ts";
import { defaultDecay } from "./decay.ts";
import { pruneByMagnitude } from "./prune.ts";
import { streamKey } from "./rounding.ts";

/**
 * Update rule for 16-bit (bf16 or f16) parameters. It matters for updates far
 * smaller than the rounding step: at 1.0 a bf16 ulp is 2^-7, so an update of
 * lr·1 = 1e-3 vanishes under round-to-nearest.
 * - `master`: an f32 copy of the parameter (4 bytes per element, memory class
 *   "optimizer") takes the update, and the parameter gets its nearest 16-bit
 *   value. Exact, and costs 2× the parameter's bf16 size in extra memory.
 * - `stochastic`: the f32 result is rounded up or down at random with
 *   probability proportional to the distance, so updates are kept in
 *   expectation. No extra memory. Reproducible: the random bits come from a
 *   hash of (seed, parameter index, step count, element index).
 * - `nearest`: round-to-nearest-even, which stalls small updates. Only for
 *   comparison.
 */
export type Bf16Update = "master" | "stochastic" | "nearest";

/** One parameter handed to AdamW. */
export interface AdamWParam {
  /** Unique name, used by `resetState` and the state dict. */
  name: string;
  tensor: Tensor;
  /** Whether weight decay applies. Default `defaultDecay(name, tensor.shape)`. */
  decay?: boolean;
  /**
   * Dtype of m and v. Default f32. bf16 halves the state memory at the cost of 8-bit mantissas.
   * NOTE: bf16 state is rounded to nearest, so a change below half an ulp (2^-9 relative) is
   * lost. With β2 close to 1 (0.999) v can stop following slow changes of g².
   */
  stateDtype?: "f32" | "bf16";
}

/** Hyperparameters of AdamW. */
export interface AdamWOptions {
  /** (β1, β2). Default (0.9, 0.95). */
  betas?: [number, number];
  /** Added to √v̂. Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay coefficient wd (p ← p·(1 − lr·wd)). Default 0.1. */
  weightDecay?: number;
  /** Update rule for 16-bit parameters. Default "master". */
  bf16Update?: Bf16Update;
  /** Seed of the stochastic-rounding streams. Default 0. */
  seed?: number;
}

/** Saved state of one parameter: raw storage bytes as `Tensor.toBytes` returns them. */
export interface AdamWParamState {
  name: string;
  /** Optimizer steps taken by this parameter since its state was created or last fully reset. */
  step: number;
  stateDtype: "f32" | "bf16";
  m: Uint8Array;
  v: Uint8Array;
  /** f32 master copy, or null when the parameter has none or it must be reloaded from the parameter. */
  master: Uint8Array | null;
}

/** Saved state of an AdamW optimizer, for checkpoints. */
export interface AdamWState {
  params: AdamWParamState[];
}

interface Slot {
  name: string;
  tensor: Tensor;
  decay: boolean;
  stateDtype: "f32" | "bf16";
  mode: WriteMode;
  m: Tensor;
  v: Tensor;
  master: Tensor | null;
  /** The master copy must be reloaded from the parameter before the next update. */
  masterStale: boolean;
  step: number;
  /** Position in the constructor's list, which keys the random stream. */
  index: number;
}

// One binding window of one parameter's update.
interface Job {
  slot: Slot;
  grad: Tensor;
  buffers: GPUBufferBinding[];
  label: string;
  uniforms: UpdateUniforms;
}

// Parameters of up to SMALL elements share update dispatches, MAX_BATCH at
// most. Each job of a shared kernel is one case of a switch, and llvmpipe
// seemed to run every case for the gradient norm (optim/clip.ts), which for
// small tensors still costs less than the dispatches it saves.
const SMALL = 4096;
const MAX_BATCH = 8;

/** AdamW with per-parameter dtypes and step counts, running entirely on the GPU. */
export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  readonly bf16Update: Bf16Update;
  readonly seed: number;
  #slots: Slot[];
  #byName = new Map<string, Slot>();
  #byTensor = new Map<Tensor, Slot>();
  #one: Tensor;

  /** Allocates zeroed m and v (and master copies) for every parameter, in memory class "optimizer". */
  constructor(params: readonly AdamWParam[], opts: AdamWOptions = {}) {
    const [beta1, beta2] = opts.betas ?? [0.9, 0.95];
    for (const [name, b] of [["beta1", beta1], ["beta2", beta2]] as const) {
      if (!(b >= 0 && b < 1)) {
        throw new RangeError(`invalid AdamW ${name} ${b}: expected a value in [0, 1)`);
      }
    }
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.1;
    this.bf16Update = opts.bf16Update ?? "master";
    this.seed = opts.seed ?? 0;
    if (!(this.eps >= 0)) {
      throw new RangeError(`invalid AdamW eps ${this.eps}: expected a value ≥ 0`);
    }
    if (!(this.weightDecay >= 0)) {
      throw new RangeError(`invalid AdamW weightDecay ${this.weightDecay}: expected a value ≥ 0`);
    }
    if (!["master", "stochastic", "nearest"].includes(this.bf16Update)) {
      throw new RangeError(
        `invalid bf16Update "${this.bf16Update}": use "master", "stochastic" or "nearest"`,
      );
    }

    this.#slots = params.map((p, index) => this.#createSlot(p, index));
    this.#one = fromArray([1], [1], { memoryClass: "optimizer", name: "adamw.one" }).keep();
  }

  #createSlot(p: AdamWParam, index: number): Slot {
    if (this.#byName.has(p.name)) {
      throw new Error(`AdamW: parameter name "${p.name}" appears twice`);
    }
    if (this.#byTensor.has(p.tensor)) {
      throw new Error(
        `AdamW: tensor "${p.name}" is also listed as "${this.#byTensor.get(p.tensor)!.name}"`,
      );
    }
    const stateDtype = p.stateDtype ?? "f32";
    if (stateDtype !== "f32" && stateDtype !== "bf16") {
      throw new RangeError(
        `invalid stateDtype "${stateDtype}" for ${p.name}: use f32 or bf16 (f16 underflows v = g² for |g| < 2.4e-4)`,
      );
    }

    const mode: WriteMode = p.tensor.dtype === "f32" ? "f32" : this.bf16Update;
    const opts = { dtype: stateDtype as DType, memoryClass: "optimizer" as const };
    const slot: Slot = {
      name: p.name,
      tensor: p.tensor,
      decay: p.decay ?? defaultDecay(p.name, p.tensor.shape),
      stateDtype,
      mode,
      m: zeros(p.tensor.shape, { ...opts, name: `${p.name}.adam_m` }).keep(),
      v: zeros(p.tensor.shape, { ...opts, name: `${p.name}.adam_v` }).keep(),
      master: mode === "master"
        ? zeros(p.tensor.shape, { memoryClass: "optimizer", name: `${p.name}.master` }).keep()
        : null,
      masterStale: true,
      step: 0,
      index,
    };
    this.#byName.set(p.name, slot);
    this.#byTensor.set(p.tensor, slot);
    return slot;
  }

  /** Parameter names in the order given to the constructor. */
  get names(): string[] {
    return this.#slots.map((s) => s.name);
  }

  /** Bytes of optimizer state: m, v and master copies. */
  get stateBytes(): number {
    let total = 0;
    for (const s of this.#slots) {
      total += s.m.byteLength + s.v.byteLength + (s.master?.byteLength ?? 0);
    }
    return total;
  }

  /** Steps taken by one parameter since its state was created or fully reset. */
  stepCount(param: Tensor | string): number {
    return this.#slot(param).step;
  }

  /** Returns whether weight decay applies to a parameter. */
  decays(param: Tensor | string): boolean {
    return this.#slot(param).decay;
  }

  /** Returns the f32 master copy of a 16-bit parameter in "master" mode, or null. */
  master(param: Tensor | string): Tensor | null {
    return this.#slot(param).master;
  }

  /** Lists the gradients of all parameters that have one, for `GradNormClip.computeScale`. */
  gradients(): Tensor[] {
    const out: Tensor[] = [];
    for (const s of this.#slots) if (s.tensor.grad) out.push(s.tensor.grad);
    return out;
  }

  /**
   * Records one AdamW update of every parameter that has a gradient, with
   * learning rate `lr`. Gradients are multiplied by element 0 of `gradScale`
   * (an f32 GPU scalar such as `GradNormClip.scale`) as they are read.
   * Parameters without a gradient are skipped and keep their step count, as
   * in PyTorch. Nothing is submitted.
   */
  step(lr: number, gradScale?: Tensor): void {
    if (!(lr >= 0 && Number.isFinite(lr))) {
      throw new RangeError(`invalid learning rate ${lr}: expected a finite value ≥ 0`);
    }
    if (gradScale && (gradScale.dtype !== "f32" || gradScale.numel < 1)) {
      throw new RangeError(
        `invalid gradScale ${
          gradScale.name || gradScale.shapeString
        } (${gradScale.dtype}): expected an f32 tensor with at least one element`,
      );
    }
    const scale = gradScale ?? this.#one;

    // Parameters of at most SMALL elements with the same dtypes and write
    // mode share a dispatch. On llvmpipe a dispatch costs tens of
    // microseconds, and BPT trains four small tensors per wrapped linear.
    const limit = gpu().limits.maxStorageBuffersPerShaderStage;
    const batches = new Map<string, Job[]>();
    for (const slot of this.#slots) {
      const grad = slot.tensor.grad;
      if (!grad) continue;
      if (grad.numel !== slot.tensor.numel) {
        throw new RangeError(
          `AdamW: gradient of ${slot.name} has ${grad.numel} elements, parameter ${slot.tensor.shapeString} has ${slot.tensor.numel}`,
        );
      }
      if (slot.masterStale) this.#loadMaster(slot);
      slot.step++;
      const jobs = this.#jobs(slot, grad, lr);
      if (jobs.length > 1 || slot.tensor.numel > SMALL) {
        for (const job of jobs) this.#dispatch([job], scale);
        continue;
      }
      const key = [slot.tensor.dtype, grad.dtype, slot.stateDtype, slot.mode].join();
      const batch = batches.get(key) ?? [];
      batch.push(jobs[0]);
      batches.set(key, batch);
      const size = Math.min(MAX_BATCH, Math.floor((limit - 1) / bindingsPerJob(slot.mode)));
      if (batch.length >= size) {
        this.#dispatch(batch, scale);
        batches.delete(key);
      }
    }
    for (const batch of batches.values()) this.#dispatch(batch, scale);
  }

  // Splits one parameter's update into one job per binding window.
  #jobs(slot: Slot, grad: Tensor, lr: number): Job[] {
    const t = slot.step;
    const values = {
      key: slot.mode === "stochastic" ? streamKey(this.seed, slot.index, t) : 0,
      stepSize: lr / (1 - this.beta1 ** t),
      b1: this.beta1,
      b2: this.beta2,
      eps: this.eps,
      decayMul: slot.decay ? 1 - lr * this.weightDecay : 1,
      bc2Sqrt: Math.sqrt(1 - this.beta2 ** t),
    };
    const p = slot.tensor;

    // f32 windows are the narrowest in elements; an even step keeps every
    // 16-bit window on a word boundary.
    const step = Math.floor(windowElements("f32") / 2) * 2;
    const jobs: Job[] = [];
    for (let start = 0; start < p.numel; start += step) {
      const n = Math.min(step, p.numel - start);
      const wp = window(p, start, n);
      const wg = window(grad, start, n);
      const wm = window(slot.m, start, n);
      const wv = window(slot.v, start, n);
      const ww = slot.master ? window(slot.master, start, n) : null;
      const buffers = [wp.binding, wg.binding, wm.binding, wv.binding];
      if (ww) buffers.push(ww.binding);
      jobs.push({
        slot,
        grad,
        buffers,
        label: `${slot.name}, ${p.dtype} ${p.shapeString}, [${start}, ${start + n})`,
        uniforms: {
          ...values,
          n,
          op: wp.offset,
          og: wg.offset,
          os: wm.offset,
          ow: ww?.offset ?? 0,
          base: start,
        },
      });
    }
    return jobs;
  }

  // Records one dispatch that updates `jobs`, which share dtypes and write mode.
  #dispatch(jobs: Job[], scale: Tensor) {
    const { slot, grad } = jobs[0];
    const code = updateCode(slot.tensor.dtype, grad.dtype, slot.stateDtype, slot.mode, jobs.length);
    const groups = jobs.reduce((sum, j) => sum + updateWorkgroups(j.uniforms.n), 0);
    const maxX = gpu().limits.maxComputeWorkgroupsPerDimension;
    const names = jobs.map((j) => j.label);
    gpu().dispatch({
      label: `adamw(${slot.mode}: ${
        names.length > 2
          ? `${names.slice(0, 2).join("; ")} and ${names.length - 2} more`
          : names.join("; ")
      })`,
      code,
      buffers: [...jobs.flatMap((j) => j.buffers), scale.buffer],
      uniforms: updateUniforms(jobs.map((j) => j.uniforms)),
      workgroups: [Math.min(groups, maxX), Math.ceil(groups / maxX)],
    });
  }

  #loadMaster(slot: Slot) {
    slot.masterStale = false;
    const master = slot.master;
    if (!master) return;
    const p = slot.tensor;
    const step = Math.floor(windowElements("f32") / 2) * 2;
    for (let start = 0; start < p.numel; start += step) {
      const n = Math.min(step, p.numel - start);
      const wp = window(p, start, n);
      const ww = window(master, start, n);
      gpu().dispatch({
        label: `adamw.loadMaster(${slot.name}, ${p.shapeString})`,
        code: masterLoadCode(p.dtype),
        buffers: [wp.binding, ww.binding],
        uniforms: uniforms(n, wp.offset, ww.offset),
        workgroups: grid1d(n),
      });
    }
  }

  /**
   * Marks master copies for reloading from their parameters before the next
   * update. Call it after writing a 16-bit parameter outside the optimizer,
   * for example when loading weights or re-initializing an adapter. Otherwise
   * the next step overwrites the new values with the old master. Without
   * arguments it covers all parameters.
   */
  refreshMasters(params?: readonly (Tensor | string)[]): void {
    const slots = params ? params.map((p) => this.#slot(p)) : this.#slots;
    for (const s of slots) if (s.master) s.masterStale = true;
  }

  /** Zeroes every parameter's gradient in place (the buffers stay allocated for the next backward). */
  zeroGrad(): void {
    for (const s of this.#slots) {
      const g = s.tensor.grad;
      if (g) gpu().clear(g.buffer, 0, g.buffer.size);
    }
  }

  /**
   * Resets the optimizer state of the given parameters, as ReLoRA does after
   * merging and re-initializing its adapters. Master copies are reloaded from
   * the parameters, because a reset usually follows a re-initialization.
   *
   * Without `pruneFraction`, m and v become zero and the step count restarts
   * at 0, so bias correction starts over. With `pruneFraction` f in [0, 1),
   * m and v are each pruned by their own magnitude as in ReLoRA's reference
   * code: entries with |x| at most the f-quantile of |x| become zero, the rest
   * and the step count stay. Pruning reads the state back to the CPU and
   * sorts it (an O(n log n) pass per tensor), which is acceptable every few
   * thousand steps but not every step.
   */
  async resetState(
    params: readonly (Tensor | string)[],
    opts: { pruneFraction?: number } = {},
  ): Promise<void> {
    const slots = params.map((p) => this.#slot(p));
    const fraction = opts.pruneFraction;
    if (fraction !== undefined && !(fraction >= 0 && fraction < 1)) {
      throw new RangeError(
        `invalid pruneFraction ${fraction}: expected a value in [0, 1); omit it to zero the whole state`,
      );
    }

    for (const s of slots) {
      if (s.master) s.masterStale = true;
      if (fraction === undefined) {
        gpu().clear(s.m.buffer, 0, s.m.buffer.size);
        gpu().clear(s.v.buffer, 0, s.v.buffer.size);
        s.step = 0;
        continue;
      }
      for (const t of [s.m, s.v]) {
        const bytes = await t.toBytes();
        pruneByMagnitude(bytes, s.stateDtype, t.numel, fraction);
        writeBytes(t.buffer, 0, bytes as Uint8Array<ArrayBuffer>);
      }
    }
  }

  /** Reads the whole optimizer state back (one readback per tensor), for a checkpoint. */
  async stateDict(): Promise<AdamWState> {
    const params: AdamWParamState[] = [];
    for (const s of this.#slots) {
      params.push({
        name: s.name,
        step: s.step,
        stateDtype: s.stateDtype,
        m: await s.m.toBytes(),
        v: await s.v.toBytes(),
        master: s.master && !s.masterStale ? await s.master.toBytes() : null,
      });
    }
    return { params };
  }

  /**
   * Restores state saved by `stateDict`. Names, dtypes and sizes must match
   * this optimizer's parameters exactly. A parameter saved without a master
   * copy reloads it from the parameter, so load the weights first.
   */
  loadStateDict(state: AdamWState): void {
    const saved = new Map(state.params.map((p) => [p.name, p]));
    const missing = this.#slots.filter((s) => !saved.has(s.name)).map((s) => s.name);
    const unknown = state.params.filter((p) => !this.#byName.has(p.name)).map((p) => p.name);
    if (missing.length > 0 || unknown.length > 0) {
      throw new Error(
        `AdamW state does not match the parameters: missing ${
          missing.join(", ") || "none"
        }; unknown ${unknown.join(", ") || "none"}`,
      );
    }

    for (const s of this.#slots) {
      const p = saved.get(s.name)!;
      if (p.stateDtype !== s.stateDtype) {
        throw new Error(
          `AdamW state of ${s.name} is ${p.stateDtype}, the optimizer keeps ${s.stateDtype}`,
        );
      }
      if (!Number.isInteger(p.step) || p.step < 0) {
        throw new Error(`AdamW state of ${s.name} has invalid step count ${p.step}`);
      }
      checkBytes(s.name, "m", p.m, s.m);
      checkBytes(s.name, "v", p.v, s.v);
      if (p.master && s.master) checkBytes(s.name, "master", p.master, s.master);
    }

    for (const s of this.#slots) {
      const p = saved.get(s.name)!;
      s.step = p.step;
      writeBytes(s.m.buffer, 0, p.m as Uint8Array<ArrayBuffer>);
      writeBytes(s.v.buffer, 0, p.v as Uint8Array<ArrayBuffer>);
      if (s.master && p.master) {
        writeBytes(s.master.buffer, 0, p.master as Uint8Array<ArrayBuffer>);
        s.masterStale = false;
      } else if (s.master) {
        s.masterStale = true;
      }
    }
  }

  /** Frees m, v and master copies; the optimizer must not be used afterwards. */
  dispose(): void {
    for (const s of this.#slots) {
      s.m.dispose();
      s.v.dispose();
      s.master?.dispose();
    }
    this.#one.dispose();
  }

  #slot(param: Tensor | string): Slot {
    const slot = typeof param === "string" ? this.#byName.get(param) : this.#byTensor.get(param);
    if (!slot) {
      const label = typeof param === "string" ? param : param.name || param.shapeString;
      throw new Error(`AdamW: parameter ${label} is not in this optimizer`);
    }
    return slot;
  }
}

function checkBytes(name: string, field: string, bytes: Uint8Array, t: Tensor) {
  if (bytes.byteLength !== t.byteLength) {
    throw new Error(
      `AdamW state of ${name}: ${field} has ${bytes.byteLength} bytes, expected ${t.byteLength} (${t.dtype} ${t.shapeString})`,
    );
  }
}
