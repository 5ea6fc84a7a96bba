// Global gradient-norm clipping computed on the GPU.
//
// The norm never leaves the GPU during a step. Kernels over batches of up to
// 16 small gradients (binding windows), or over one large one, write partial
// sums of squares. One workgroup adds the partials and writes the norm and
// the factor min(1, maxNorm / (norm + 1e-6)), as
// torch.nn.utils.clip_grad_norm_ computes it. AdamW multiplies every
// gradient by that factor as it reads it. Reading the norm for logging costs
// one readback.

import { empty, gpu, type Tensor } from "../core/tensor.ts";
import { batchedJob, storage, uniforms, window, windowElements } from "../core/wgsl.ts";

const WG = 256;
// Elements each workgroup sums before writing one partial.
const CHUNK = WG * 8;

const TREE_REDUCE = `
  sh[lid.x] = s;
  workgroupBarrier();
  for (var stride = ${WG / 2}u; stride > 0u; stride = stride >> 1u) {
    if (lid.x < stride) { sh[lid.x] = sh[lid.x] + sh[lid.x + stride]; }
    workgroupBarrier();
  }`;

// Partial sums of squares over a batch of gradient windows, one binding each.
// Workgroup g of the dispatch belongs to the last job whose `first` is ≤ g.
// The switch on that job's index is uniform across a workgroup, yet llvmpipe
// ran batches of 16 about 3× slower per element than single gradients, as if
// it ran every case. So only windows of up to SMALL elements share a kernel.
function partialCode(dtypes: readonly Tensor["dtype"][]): string {
  const sum = (j: number) => `
      for (var k = 0u; k < ${CHUNK / WG}u; k++) {
        let i = start + k * ${WG}u + lid.x;
        if (i < job.n) {
          let x = ld_G${j}(job.o + i);
          s += x * x;
        }
      }`;
  const cases = dtypes.map((_, j) => `
    case ${j}u: {${sum(j)}
    }`).join("");
  const body = dtypes.length === 1 ? sum(0) : `switch j {${cases}
    default: {}
  }`;
  return `
struct Job { n: u32, o: u32, out: u32, first: u32 }
struct P { count: u32, groups: u32, pad0: u32, pad1: u32, jobs: array<Job, ${dtypes.length}> }
@group(0) @binding(0) var<uniform> p: P;
${dtypes.map((dtype, j) => storage(j + 1, `G${j}`, dtype)).join("\n")}
@group(0) @binding(${dtypes.length + 1}) var<storage, read_write> PART: array<f32>;
var<workgroup> sh: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
${batchedJob("p")}
  let job = p.jobs[j];
  let start = (group - job.first) * ${CHUNK}u;
  var s = 0.0;
  ${body}
  ${TREE_REDUCE}
  if (lid.x == 0u) { PART[job.out + group - job.first] = sh[0]; }
}`;
}

// Gradient windows summed by one partial dispatch: one binding each, plus the
// partial sums. Each dispatch costs tens of microseconds on llvmpipe, and BPT
// has four small tensors per wrapped linear. Windows of more than SMALL
// elements run alone.
const MAX_BATCH = 16;
const SMALL = 4096;

const partialKernels = new Map<string, string>();

const FINAL_CODE = `
struct P { count: u32, maxNorm: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> PART: array<f32>;
@group(0) @binding(2) var<storage, read_write> NORM: array<f32>;
@group(0) @binding(3) var<storage, read_write> SCALE: array<f32>;
var<workgroup> sh: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  var s = 0.0;
  for (var i = lid.x; i < p.count; i += ${WG}u) { s += PART[i]; }
  ${TREE_REDUCE}
  if (lid.x == 0u) {
    let norm = sqrt(sh[0]);
    NORM[0] = norm;
    SCALE[0] = min(1.0, p.maxNorm / (norm + 1e-6));
  }
}`;

/**
 * Global L2 norm of all gradients and the clipping factor derived from it,
 * both kept in GPU buffers.
 *
 * NOTE: a non-finite gradient makes the norm Inf or NaN and the factor 0 or
 * NaN (WGSL leaves min() of a NaN implementation-defined). At least the
 * parameters with non-finite gradients then get NaN updates, as in PyTorch
 * with `error_if_nonfinite=False`. Nothing skips the step, so check the loss
 * or `norm()` to catch it.
 */
export class GradNormClip {
  /** Largest global gradient norm let through unscaled. */
  readonly maxNorm: number;
  /** GPU scalar min(1, maxNorm / (norm + 1e-6)), written by `computeScale`; pass it to `AdamW.step`. */
  readonly scale: Tensor;
  /** GPU scalar with the global norm of the last `computeScale`, before clipping. */
  readonly normTensor: Tensor;
  #partials: Tensor | null = null;

  /** `maxNorm` defaults to 1.0; `Infinity` measures the norm without clipping. */
  constructor(maxNorm = 1.0) {
    if (!(maxNorm > 0)) {
      throw new RangeError(
        `invalid maxNorm ${maxNorm}: expected a positive number (Infinity disables clipping)`,
      );
    }
    this.maxNorm = maxNorm;
    this.scale = empty([1], { memoryClass: "optimizer", name: "clip.scale" }).keep();
    this.normTensor = empty([1], { memoryClass: "optimizer", name: "clip.norm" }).keep();
  }

  /**
   * Records the kernels that compute the global norm of `grads` and the
   * clipping factor, and returns the factor's GPU scalar (`this.scale`).
   * Null entries (parameters without a gradient) count as zero.
   */
  computeScale(grads: readonly (Tensor | null)[]): Tensor {
    const g = gpu();
    const maxX = g.limits.maxComputeWorkgroupsPerDimension;

    // Partial-sum slots per window, laid out one window after another.
    const jobs: { t: Tensor; start: number; n: number; out: number; groups: number }[] = [];
    let slots = 0;
    for (const t of grads) {
      if (!t) continue;
      const step = Math.floor(windowElements(t.dtype) / 2) * 2;
      for (let start = 0; start < t.numel; start += step) {
        const n = Math.min(step, t.numel - start);
        const groups = Math.ceil(n / CHUNK);
        jobs.push({ t, start, n, out: slots, groups });
        slots += groups;
      }
    }
    const partials = this.#partialBuffer(Math.max(1, slots));

    const batchSize = Math.max(
      1,
      Math.min(MAX_BATCH, g.limits.maxStorageBuffersPerShaderStage - 1),
    );
    const batches: (typeof jobs)[] = [];
    let small: typeof jobs = [];
    for (const job of jobs) {
      if (job.n > SMALL) {
        batches.push([job]);
        continue;
      }
      small.push(job);
      if (small.length === batchSize) {
        batches.push(small);
        small = [];
      }
    }
    if (small.length > 0) batches.push(small);

    for (const list of batches) {
      const fields: number[] = [list.length, 0, 0, 0];
      const buffers: GPUBufferBinding[] = [];
      let groups = 0;
      for (const job of list) {
        const w = window(job.t, job.start, job.n);
        buffers.push(w.binding);
        fields.push(job.n, w.offset, job.out, groups);
        groups += job.groups;
      }
      fields[1] = groups;
      buffers.push({ buffer: partials.buffer });
      const dtypes = list.map((job) => job.t.dtype);
      const key = dtypes.join();
      let code = partialKernels.get(key);
      if (!code) {
        code = partialCode(dtypes);
        partialKernels.set(key, code);
      }
      const x = Math.min(groups, maxX);
      const names = list.map((job) => job.t.name || job.t.shapeString);
      g.dispatch({
        label: `gradNorm.partial(${
          names.length > 3
            ? `${names.slice(0, 3).join(", ")} and ${names.length - 3} more`
            : names.join(", ")
        })`,
        code,
        buffers,
        uniforms: uniforms(...fields),
        workgroups: [x, Math.ceil(groups / x)],
      });
    }

    g.dispatch({
      label: `gradNorm.final(${slots} partials)`,
      code: FINAL_CODE,
      buffers: [partials.buffer, this.normTensor.buffer, this.scale.buffer],
      uniforms: uniforms(slots, { f: this.maxNorm }),
      workgroups: [1],
    });
    return this.scale;
  }

  /** Reads the global norm of the last `computeScale` (one GPU readback; call it only when logging). */
  async norm(): Promise<number> {
    return (await this.normTensor.toArray())[0];
  }

  /** Reads the clipping factor of the last `computeScale` (one GPU readback). */
  async scaleValue(): Promise<number> {
    return (await this.scale.toArray())[0];
  }

  /** Frees the GPU buffers. */
  dispose() {
    this.scale.dispose();
    this.normTensor.dispose();
    this.#partials?.dispose();
    this.#partials = null;
  }

  #partialBuffer(slots: number): Tensor {
    if (this.#partials && this.#partials.numel >= slots) return this.#partials;
    this.#partials?.dispose();
    this.#partials = empty([slots], { memoryClass: "optimizer", name: "clip.partials" }).keep();
    return this.#partials;
  }
}
