// The WebGPU device: adapter selection, limits, pipeline cache, and one open
// command encoder that every op records into.
//
// A training step records all of its dispatches into a single encoder and
// submits once, because each submit-and-wait costs ~11 ms on Mesa llvmpipe and
// each dispatch ~25-35 µs. Uniforms of all dispatches in a submission go into
// one staging array that is uploaded by a single writeBuffer at flush time.

/** Raised when WebGPU is missing or no adapter exists. The message names what to install. */
export class NoGpuError extends Error {
  override name = "NoGpuError";
}

/** Raised for a GPU validation error, out-of-memory or device loss; names the op and sizes. */
export class GpuError extends Error {
  override name = "GpuError";
}

/** One dispatch: the kernel source, its buffers and uniforms, and its grid. */
export interface Dispatch {
  /** Op name and sizes, for example `matmul(64x128 @ 128x96)`; shown in GPU errors. */
  label: string;
  /** WGSL with `@group(0) @binding(0)` a uniform struct (when `uniforms` is set) and buffers from binding 1 on. */
  code: string;
  /** Storage buffers (or windows of them) for bindings 1..n. */
  buffers: (GPUBuffer | GPUBufferBinding)[];
  /** Raw uniform bytes: u32 and f32 fields as 4-byte words. */
  uniforms?: ArrayBuffer | ArrayBufferView;
  /** Workgroup counts; each must be at most `maxComputeWorkgroupsPerDimension`. */
  workgroups: [number, number?, number?];
}

const UNIFORM_ALIGN = 256;
const UNIFORM_RING_BYTES = 1 << 20;

/** The device plus the encoder that ops record into until `flush()`. */
export class Gpu {
  readonly device: GPUDevice;
  readonly adapterInfo: GPUAdapterInfo;
  readonly hasF16: boolean;

  /**
   * Largest storage-buffer window one binding may cover, in bytes. Starts at the
   * device limit; tests lower it to exercise the split path on small tensors.
   */
  bindingLimit: number;

  /** Dispatches recorded since creation, for benchmarks. */
  dispatchCount = 0;
  /** `queue.submit` calls since creation, for benchmarks. */
  submitCount = 0;

  #pipelines = new Map<string, GPUComputePipeline>();
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #labels: string[] = [];
  #uniformStaging = new Uint8Array(UNIFORM_RING_BYTES);
  #uniformUsed = 0;
  #uniformBuffers: GPUBuffer[] = [];
  #lost: string | null = null;
  #recording: string | null = null;

  constructor(device: GPUDevice, info: GPUAdapterInfo) {
    this.device = device;
    this.adapterInfo = info;
    this.hasF16 = device.features.has("shader-f16");
    this.bindingLimit = device.limits.maxStorageBufferBindingSize;
    device.lost.then((info) => {
      this.#lost = `${info.reason}: ${info.message}`;
    });
    // Errors raised while encoding (pipeline or bind-group creation) bypass the
    // per-submission error scopes; name the dispatch being recorded.
    (device as unknown as EventTarget).addEventListener("uncapturederror", (e) => {
      const op = this.#recording ?? "no dispatch";
      const message = (e as GPUUncapturedErrorEvent).error.message.split("\n")[0];
      this.#errors.push(`GPU error while recording ${op}: ${message}`);
    });
  }

  get limits(): GPUSupportedLimits {
    return this.device.limits;
  }

  /** One-line adapter description, for logs and benchmark file names. */
  get description(): string {
    const i = this.adapterInfo;
    return i.description || [i.vendor, i.architecture, i.device].filter(Boolean).join(" ") ||
      "unknown adapter";
  }

  /** Returns the compute pipeline for `code`, compiling it once. */
  pipeline(code: string, label: string): GPUComputePipeline {
    let p = this.#pipelines.get(code);
    if (!p) {
      const module = this.device.createShaderModule({ code, label });
      p = this.device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label,
      });
      this.#pipelines.set(code, p);
    }
    return p;
  }

  #ensurePass(): GPUComputePassEncoder {
    this.#checkLost();
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    if (!this.#pass) this.#pass = this.#encoder.beginComputePass();
    return this.#pass;
  }

  #ensureEncoder(): GPUCommandEncoder {
    this.#checkLost();
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    return this.#encoder;
  }

  #checkLost() {
    if (this.#lost) throw new GpuError(`GPU device lost (${this.#lost}); restart the process`);
  }

  /** Records one compute dispatch into the open encoder. */
  dispatch(d: Dispatch): void {
    const maxGroups = this.limits.maxComputeWorkgroupsPerDimension;
    const [x, y = 1, z = 1] = d.workgroups;
    if (x > maxGroups || y > maxGroups || z > maxGroups) {
      throw new GpuError(
        `${d.label}: grid ${x}x${y}x${z} exceeds maxComputeWorkgroupsPerDimension ${maxGroups}`,
      );
    }
    if (x === 0 || y === 0 || z === 0) return;

    this.#recording = d.label;
    const pipeline = this.pipeline(d.code, d.label);
    const entries: GPUBindGroupEntry[] = [];
    if (d.uniforms) {
      const bytes = d.uniforms instanceof ArrayBuffer
        ? new Uint8Array(d.uniforms)
        : new Uint8Array(d.uniforms.buffer, d.uniforms.byteOffset, d.uniforms.byteLength);
      if (this.#uniformUsed + bytes.byteLength > UNIFORM_RING_BYTES) this.flush();
      const pass = this.#ensurePass();
      void pass;
      const offset = this.#uniformUsed;
      this.#uniformStaging.set(bytes, offset);
      this.#uniformUsed += Math.ceil(bytes.byteLength / UNIFORM_ALIGN) * UNIFORM_ALIGN;
      entries.push({
        binding: 0,
        resource: { buffer: this.#currentUniformBuffer(), offset, size: bytes.byteLength },
      });
    }
    d.buffers.forEach((b, i) => {
      const resource = b instanceof GPUBuffer ? { buffer: b } : b;
      entries.push({ binding: i + 1, resource });
    });

    const pass = this.#ensurePass();
    const group = this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries,
      label: d.label,
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    this.#labels.push(d.label);
    this.dispatchCount++;
  }

  // One uniform buffer per submission in flight; buffers are recycled after the
  // submission that used them completes (see flush).
  #currentUniformBuffer(): GPUBuffer {
    if (this.#uniformBuffers.length === 0) {
      this.#uniformBuffers.push(this.device.createBuffer({
        size: UNIFORM_RING_BYTES,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        label: "uniforms",
      }));
    }
    return this.#uniformBuffers[this.#uniformBuffers.length - 1];
  }

  /** Records a buffer-to-buffer copy (sizes and offsets multiples of 4). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    this.#ensureEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  /** Records a zero fill of `size` bytes at `offset` (multiples of 4). */
  clear(buffer: GPUBuffer, offset = 0, size?: number): void {
    this.#ensureEncoder().clearBuffer(buffer, offset, size);
  }

  /**
   * Submits everything recorded so far. Errors are reported asynchronously
   * through `sync()`, which names the dispatches of the failing submission.
   */
  flush(): void {
    if (!this.#encoder) return;
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    const uniformBuffer = this.#uniformUsed > 0 ? this.#currentUniformBuffer() : null;
    if (uniformBuffer) {
      this.device.queue.writeBuffer(uniformBuffer, 0, this.#uniformStaging, 0, this.#uniformUsed);
    }
    const labels = this.#labels;
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    this.device.queue.submit([this.#encoder.finish()]);
    this.submitCount++;
    const validation = this.device.popErrorScope();
    const oom = this.device.popErrorScope();
    this.#pending.push(
      Promise.all([validation, oom]).then(([v, o]) => {
        const err = v ?? o;
        if (err) this.#errors.push(describeError(err, labels));
      }),
    );
    this.#encoder = null;
    this.#labels = [];
    this.#uniformUsed = 0;

    // The queue orders writeBuffer before later submits, so the next submission
    // may overwrite this uniform buffer only after this one has run. A fresh
    // buffer per submission avoids the hazard; old ones are released at sync().
    if (uniformBuffer) {
      this.#retiredUniforms.push(uniformBuffer);
      this.#uniformBuffers.pop();
    }
  }

  #pending: Promise<void>[] = [];
  #errors: string[] = [];
  #retiredUniforms: GPUBuffer[] = [];

  /** Submits pending work, waits for the GPU, and throws the first GPU error seen. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await Promise.all(this.#pending);
    this.#pending = [];
    for (const b of this.#retiredUniforms.splice(0)) {
      if (this.#uniformBuffers.length === 0) this.#uniformBuffers.push(b);
      else b.destroy();
    }
    this.#checkLost();
    if (this.#errors.length > 0) {
      const first = this.#errors[0];
      this.#errors = [];
      throw new GpuError(first);
    }
  }

  /** Copies `byteLength` bytes at `byteOffset` of `buffer` back to the CPU. */
  async read(buffer: GPUBuffer, byteOffset: number, byteLength: number): Promise<ArrayBuffer> {
    const aligned = Math.ceil(byteLength / 4) * 4;
    const staging = this.device.createBuffer({
      size: aligned,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: "readback",
    });
    this.copy(buffer, byteOffset, staging, 0, aligned);
    await this.sync();
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange().slice(0, byteLength);
    staging.unmap();
    staging.destroy();
    return out;
  }
}

function describeError(err: GPUError, labels: string[]): string {
  const kind = err instanceof GPUOutOfMemoryError ? "out of memory" : "validation error";
  const ops = labels.length <= 6
    ? labels.join(", ")
    : `${labels.slice(0, 3).join(", ")}, … ${labels.slice(-3).join(", ")}`;
  return `GPU ${kind} in a submission of ${labels.length} dispatches (${ops}): ${
    err.message.split("\n")[0]
  }`;
}

let shared: Promise<Gpu> | null = null;

/**
 * Returns the process-wide GPU, requesting the adapter's maximum limits and
 * `shader-f16` when offered. Throws NoGpuError when WebGPU or an adapter is missing.
 */
export function getGpu(): Promise<Gpu> {
  shared ??= requestGpu();
  return shared;
}

async function requestGpu(): Promise<Gpu> {
  const install =
    "install a GPU driver with Vulkan/Metal support, or Mesa's software adapter (Debian/Ubuntu: apt-get install -y mesa-vulkan-drivers)";
  if (typeof navigator === "undefined" || !navigator.gpu) {
    throw new NoGpuError(
      `WebGPU is not available in this runtime (run Deno with --unstable-webgpu); ${install}`,
    );
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new NoGpuError(`no WebGPU adapter found; ${install}`);

  const limits: Record<string, number> = {};
  for (const key of LIMIT_KEYS) {
    const v = (adapter.limits as unknown as Record<string, number>)[key];
    if (typeof v === "number") limits[key] = v;
  }
  const features: GPUFeatureName[] = [];
  if (adapter.features.has("shader-f16")) features.push("shader-f16");
  if (adapter.features.has("timestamp-query")) features.push("timestamp-query");
  const device = await adapter.requestDevice({
    requiredFeatures: features,
    requiredLimits: limits,
    label: "bpt",
  });
  return new Gpu(device, adapter.info);
}

// Limits raised to the adapter's maximum: large models need big buffers and
// bindings, and tuned GEMM tiles need workgroup memory and invocations.
const LIMIT_KEYS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
  "maxBindGroups",
];
