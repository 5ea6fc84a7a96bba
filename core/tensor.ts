// GPU-resident tensors, the buffer pool, and the memory ledger.
//
// Storage layouts: f32 is one value per 4 bytes. bf16 and f16 are packed two
// values per u32 word, element i in the low half of word i/2 when i is even.
// Kernels convert with the helpers in wgsl.ts, so bf16 needs no device feature.

import { getGpu, type Gpu, GpuError } from "./gpu.ts";

/** Element type of a tensor's storage. */
export type DType = "f32" | "bf16" | "f16";

/** Use of a buffer, as tracked by the memory ledger. */
export type MemoryClass = "parameters" | "gradients" | "optimizer" | "activations" | "scratch";

export const MEMORY_CLASSES: readonly MemoryClass[] = [
  "parameters",
  "gradients",
  "optimizer",
  "activations",
  "scratch",
];

/** Raised for a shape or dtype that an op cannot take; names the op and the shapes. */
export class ShapeError extends Error {
  override name = "ShapeError";
}

let current: Gpu | null = null;
let defaultClass: MemoryClass = "activations";

/** Sets the ledger class of tensors created without one (autograd uses "scratch" for backward temporaries); returns the previous. */
export function setDefaultMemoryClass(cls: MemoryClass): MemoryClass {
  const prev = defaultClass;
  defaultClass = cls;
  return prev;
}

/** Acquires the GPU once; every tensor function after this uses it. */
export async function initGpu(): Promise<Gpu> {
  current = await getGpu();
  return current;
}

/** Returns the GPU acquired by `initGpu()`. */
export function gpu(): Gpu {
  if (!current) throw new Error("GPU not initialised: call `await initGpu()` first");
  return current;
}

/** Bytes of storage for `numel` elements of `dtype` (16-bit types packed in u32 words). */
export function storageBytes(numel: number, dtype: DType): number {
  return dtype === "f32" ? numel * 4 : Math.ceil(numel / 2) * 4;
}

/** Bytes per element, for the ledger and bandwidth figures. */
export function bytesPerElement(dtype: DType): number {
  return dtype === "f32" ? 4 : 2;
}

/** Live and peak bytes per memory class, readable from code. */
export class Ledger {
  live: Record<MemoryClass, number> = zeroCounts();
  peak: Record<MemoryClass, number> = zeroCounts();
  /** Peak of the sum over classes (not the sum of per-class peaks). */
  peakTotal = 0;

  get liveTotal(): number {
    return MEMORY_CLASSES.reduce((s, c) => s + this.live[c], 0);
  }

  add(cls: MemoryClass, bytes: number) {
    this.live[cls] += bytes;
    if (this.live[cls] > this.peak[cls]) this.peak[cls] = this.live[cls];
    const total = this.liveTotal;
    if (total > this.peakTotal) this.peakTotal = total;
  }

  remove(cls: MemoryClass, bytes: number) {
    this.live[cls] -= bytes;
  }

  /** Starts a new peak window at the current live bytes. */
  resetPeak() {
    this.peak = { ...this.live };
    this.peakTotal = this.liveTotal;
  }
}

function zeroCounts(): Record<MemoryClass, number> {
  return { parameters: 0, gradients: 0, optimizer: 0, activations: 0, scratch: 0 };
}

/** Ledger of all tensors allocated through this module. */
export const ledger = new Ledger();

// Buffers are kept by exact (16-byte aligned) size: a training step allocates
// the same sizes every time, so after the first step nothing is created.
const pool = new Map<number, GPUBuffer[]>();
let pooledBytes = 0;

/** Bytes held by the pool for reuse (not counted by the ledger). */
export function poolBytes(): number {
  return pooledBytes;
}

/** Destroys every pooled buffer. */
export function drainPool() {
  for (const list of pool.values()) for (const b of list) b.destroy();
  pool.clear();
  pooledBytes = 0;
}

function acquire(bytes: number, label: string): GPUBuffer {
  const g = gpu();
  const size = Math.max(16, Math.ceil(bytes / 16) * 16);
  if (size > g.limits.maxBufferSize) {
    throw new GpuError(
      `cannot allocate ${label}: ${size} bytes exceeds the device's maxBufferSize ${g.limits.maxBufferSize}; use a smaller model, batch or sequence length, or a bf16 dtype`,
    );
  }
  const list = pool.get(size);
  if (list && list.length > 0) {
    pooledBytes -= size;
    return list.pop()!;
  }
  return g.device.createBuffer({
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    label,
  });
}

function release(buffer: GPUBuffer) {
  const list = pool.get(buffer.size) ?? [];
  list.push(buffer);
  pool.set(buffer.size, list);
  pooledBytes += buffer.size;
}

// Tensors created while a scope is open are disposed when it closes, unless kept.
const scopes: Set<Tensor>[] = [];

/** Opens a scope: tensors created until `endScope` are disposed then. */
export function beginScope() {
  scopes.push(new Set());
}

/** Closes the innermost scope, disposing its tensors except `keep` (which move to the outer scope). */
export function endScope(keep: Tensor[] = []) {
  const scope = scopes.pop();
  if (!scope) throw new Error("endScope() without beginScope()");
  // A kept view keeps its base buffer alive.
  const kept = new Set(keep.map((t) => t instanceof TensorView ? t.root : t));
  for (const t of scope) {
    if (kept.has(t)) scopes.at(-1)?.add(t);
    else t.dispose();
  }
}

/** Runs `fn` in a scope and keeps only what it returns. */
export function scoped<T extends Tensor | Tensor[] | void>(fn: () => T): T {
  beginScope();
  let out: T | undefined;
  try {
    out = fn();
  } finally {
    const keep = out instanceof Tensor ? [out] : Array.isArray(out) ? out : [];
    endScope(keep);
  }
  return out as T;
}

/** Options for creating a tensor. */
export interface TensorOptions {
  dtype?: DType;
  memoryClass?: MemoryClass;
  /** Parameters that train get a gradient; everything else is a constant to autograd. */
  requiresGrad?: boolean;
  name?: string;
}

/** A dense row-major tensor in one GPU buffer. */
export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly numel: number;
  readonly memoryClass: MemoryClass;
  buffer: GPUBuffer;
  requiresGrad: boolean;
  /** Accumulated gradient (f32), for tensors that require one and are leaves. */
  grad: Tensor | null = null;
  name: string;
  #disposed = false;

  constructor(shape: readonly number[], opts: TensorOptions = {}) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) {
        throw new ShapeError(`invalid shape [${shape.join(", ")}]: sizes must be integers ≥ 0`);
      }
    }
    this.shape = [...shape];
    this.dtype = opts.dtype ?? "f32";
    if (this.dtype === "f16" && !gpu().hasF16) {
      throw new GpuError(
        `dtype f16 needs the shader-f16 feature, which adapter "${gpu().description}" lacks; use bf16 or f32`,
      );
    }
    this.numel = shape.reduce((a, b) => a * b, 1);
    this.memoryClass = opts.memoryClass ?? defaultClass;
    this.requiresGrad = opts.requiresGrad ?? false;
    this.name = opts.name ?? "";
    this.buffer = acquire(this.byteLength, `${this.name || "tensor"}[${shape.join("x")}]`);
    ledger.add(this.memoryClass, this.byteLength);
    scopes.at(-1)?.add(this);
  }

  /** Storage bytes (16-bit types packed two per word). */
  get byteLength(): number {
    return storageBytes(this.numel, this.dtype);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Returns the buffer to the pool; the tensor must not be used afterwards. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    ledger.remove(this.memoryClass, this.byteLength);
    release(this.buffer);
    for (const s of scopes) s.delete(this);
  }

  /** Removes the tensor from every open scope so that no `endScope` disposes it. */
  keep(): this {
    for (const s of scopes) s.delete(this);
    return this;
  }

  /** Shape as `2x3x4`, for messages. */
  get shapeString(): string {
    return this.shape.join("x") || "scalar";
  }

  /** Copies the tensor back to the CPU as f32 values. */
  async toArray(): Promise<Float32Array> {
    const bytes = await gpu().read(this.buffer, 0, this.byteLength);
    if (this.dtype === "f32") return new Float32Array(bytes);
    const words = new Uint16Array(bytes);
    const out = new Float32Array(this.numel);
    for (let i = 0; i < this.numel; i++) {
      out[i] = this.dtype === "bf16" ? bf16ToF32(words[i]) : f16ToF32(words[i]);
    }
    return out;
  }

  /** Copies the raw storage back (packed 16-bit words for bf16/f16). */
  async toBytes(): Promise<Uint8Array> {
    return new Uint8Array(await gpu().read(this.buffer, 0, this.byteLength));
  }

  /** Returns a view with another shape of the same element count, sharing the buffer. */
  reshape(shape: number[]): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== this.numel) {
      throw new ShapeError(
        `reshape: cannot view ${this.shapeString} (${this.numel} elements) as ${shape.join("x")}`,
      );
    }
    return TensorView.of(this, shape);
  }
}

/** A tensor that shares another tensor's buffer (reshape). Disposing it frees nothing. */
export class TensorView extends Tensor {
  base!: Tensor;

  static of(base: Tensor, shape: number[]): TensorView {
    const v = Object.create(TensorView.prototype) as TensorView;
    Object.assign(v, {
      shape: [...shape],
      dtype: base.dtype,
      numel: base.numel,
      memoryClass: base.memoryClass,
      buffer: base.buffer,
      requiresGrad: base.requiresGrad,
      grad: null,
      name: base.name,
      base,
    });
    return v;
  }

  override get disposed(): boolean {
    return this.base.disposed;
  }

  /** The tensor that owns the buffer, past any chain of views. */
  get root(): Tensor {
    return this.base instanceof TensorView ? this.base.root : this.base;
  }

  override dispose() {}
}

/** Creates a tensor whose contents are undefined until written. */
export function empty(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return new Tensor(shape, opts);
}

/** Creates a zero-filled tensor. */
export function zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  const t = new Tensor(shape, opts);
  gpu().clear(t.buffer, 0, t.buffer.size);
  return t;
}

/**
 * Uploads `data` (f32 values, or raw 16-bit words when `opts.dtype` is bf16/f16
 * and `data` is a Uint16Array).
 */
export function fromArray(
  data: Float32Array | Uint16Array | number[],
  shape: readonly number[],
  opts: TensorOptions = {},
): Tensor {
  const t = new Tensor(shape, opts);
  if (data.length !== t.numel) {
    throw new ShapeError(
      `fromArray: ${data.length} values do not fill shape ${t.shapeString} (${t.numel} elements)`,
    );
  }
  let bytes: Uint8Array<ArrayBuffer>;
  if (t.dtype === "f32") {
    const f = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
    bytes = new Uint8Array(f.buffer as ArrayBuffer, f.byteOffset, f.byteLength);
  } else {
    const words = new Uint16Array(Math.ceil(t.numel / 2) * 2);
    if (data instanceof Uint16Array) words.set(data);
    else {
      const conv = t.dtype === "bf16" ? f32ToBf16 : f32ToF16;
      for (let i = 0; i < t.numel; i++) words[i] = conv(data[i]);
    }
    bytes = new Uint8Array(words.buffer);
  }
  writeBytes(t.buffer, 0, bytes);
  return t;
}

/** Writes bytes into a buffer through the queue, padding the tail to 4 bytes. */
export function writeBytes(buffer: GPUBuffer, offset: number, bytes: Uint8Array<ArrayBuffer>) {
  // Deno 2.9.6 aborts the process on a zero-byte writeBuffer.
  if (bytes.byteLength === 0) return;
  const g = gpu();
  // Queue writes are ordered against submissions, so pending recorded work must
  // be submitted first or it would see the new contents.
  g.flush();
  if (bytes.byteLength % 4 !== 0) {
    const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
    padded.set(bytes);
    bytes = padded;
  }
  g.device.queue.writeBuffer(buffer, offset, bytes);
}

// ---- CPU conversions, the reference for the WGSL ones ----

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** f32 → bf16 bits with round-to-nearest-even; NaN stays a quiet NaN, ±Inf stays ±Inf. */
export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0];
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) {
    return ((u >>> 16) | 0x0040) & 0xffff;
  }
  const rounded = u + 0x7fff + ((u >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** bf16 bits → f32 (exact). */
export function bf16ToF32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0];
}

/** f32 → IEEE half bits with round-to-nearest-even. */
export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** IEEE half bits → f32 (exact). */
export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}
