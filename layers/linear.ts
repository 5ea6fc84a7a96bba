// The five ways of training a linear layer y = W x (+ bias), W n×m (out × in),
// behind one interface so a model switches method by name.
//
//   full        W trainable
//   bpt         y = a ⊙ (W (b ⊙ x) + U (V (b ⊙ x))), W frozen; a ∈ ℝⁿ, b ∈ ℝᵐ (f32, init 1),
//               U n×r (orthonormal columns), V r×m (init 0). merge(): W ← W + U V, new U, V ← 0.
//   lora        y = W x + (α/r) B_l (A_l x), W frozen; A_l r×m Kaiming-uniform, B_l n×r zero
//   relora      lora plus merge(): W ← W + (α/r) B_l A_l, new A_l, B_l ← 0
//   hyperadapt  y = a ⊙ (W (b ⊙ x)), W frozen; only a and b train
//
// BPT's forward never materialises W + U V: the dense update would cost an
// n×m buffer and an n×m×r matmul per step.

import { noGrad } from "../core/autograd.ts";
import { cast } from "../core/ops/cast.ts";
import { add, mul, scale } from "../core/ops/elementwise.ts";
import { linear as linearOp, matmul } from "../core/ops/matmul.ts";
import { rand, randn } from "../core/random.ts";
import { type DType, fromArray, gpu, scoped, type Tensor, zeros } from "../core/tensor.ts";
import { bptLinear } from "./bpt_linear.ts";
import { adapterParamCount, type Method, ParamsError, wrapsLinear } from "./params.ts";

/** A parameter with the name it has in checkpoints and whether AdamW decays it. */
export interface NamedParam {
  name: string;
  tensor: Tensor;
  /** False for diagonals and biases (no weight decay). */
  decay: boolean;
}

/** Options of one linear layer. */
export interface LinearOptions {
  /** Prefix of parameter names, e.g. `model.layers.0.mlp.up_proj`. */
  name: string;
  /** Output features n. */
  outFeatures: number;
  /** Input features m. */
  inFeatures: number;
  method: Method;
  /** Rank r of BPT's U V or LoRA's B_l A_l; ignored by full and hyperadapt. */
  rank: number;
  /** LoRA scaling numerator α (PEFT's lora_alpha); the update is scaled by α / r. Default r. */
  alpha?: number;
  bias?: boolean;
  /** Storage dtype of W, U, V and the LoRA factors; diagonals are always f32. */
  dtype?: DType;
  seed: number;
  /** Standard deviation of W's normal init; default Kaiming-uniform like torch.nn.Linear. */
  initStd?: number;
  /**
   * Inside a model the rank is validated for the whole model, and a linear too
   * small for it stays full instead of raising. Default false.
   */
  fallbackToFull?: boolean;
}

/** A linear layer under one training method. */
export interface Linear {
  readonly name: string;
  /** The method actually used: a method that would not cut the trainable count falls back to full. */
  readonly method: Method;
  readonly outFeatures: number;
  readonly inFeatures: number;
  readonly rank: number;
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  /** y [.., n] from x [.., m]. */
  forward(x: Tensor): Tensor;
  /** Every parameter, trainable or frozen, under its checkpoint name. */
  parameters(): NamedParam[];
  /** Parameters that receive gradients. */
  trainable(): NamedParam[];
  /**
   * Folds the low-rank factors into W and restarts them (BPT and ReLoRA).
   * Returns the parameters whose optimizer state must be reset.
   */
  merge(): Tensor[];
  /** Merges done so far; seeds the re-drawn factors, so checkpoints keep it. */
  merges: number;
  /** The dense weight n×m the layer applies (row-major f32), for export and rank tracking. */
  effectiveWeight(): Promise<Float32Array>;
}

/** Validates the rank for one n×m linear; one-line error with the allowed range. */
export function checkRank(method: Method, rank: number, n: number, m: number, name = "linear") {
  if (method === "full" || method === "hyperadapt") return;
  const max = Math.min(n, m);
  if (!Number.isInteger(rank) || rank < 1 || rank > max) {
    throw new ParamsError(
      `invalid rank ${rank} for ${name} (${n}x${m}) with method ${method}: use an integer in 1..${max}`,
    );
  }
}

/** Creates the layer; a method that would not train fewer than n·m parameters stays full. */
export function createLinear(opts: LinearOptions): Linear {
  const n = opts.outFeatures;
  const m = opts.inFeatures;
  const tooSmall = opts.fallbackToFull && Number.isInteger(opts.rank) &&
    opts.rank > Math.min(n, m);
  if (!tooSmall) checkRank(opts.method, opts.rank, n, m, opts.name);
  const method = opts.method === "full" || wrapsLinear(opts.method, n, m, opts.rank)
    ? opts.method
    : "full";
  return new LinearLayer({ ...opts, method });
}

class LinearLayer implements Linear {
  readonly name: string;
  readonly method: Method;
  readonly outFeatures: number;
  readonly inFeatures: number;
  readonly rank: number;
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly dtype: DType;
  readonly alpha: number;

  // BPT/HyperAdapt diagonals (f32), BPT factors, LoRA factors.
  a: Tensor | null = null;
  b: Tensor | null = null;
  u: Tensor | null = null;
  v: Tensor | null = null;
  loraA: Tensor | null = null;
  loraB: Tensor | null = null;

  #seed: number;
  merges = 0;

  constructor(opts: LinearOptions) {
    const n = opts.outFeatures;
    const m = opts.inFeatures;
    this.name = opts.name;
    this.method = opts.method;
    this.outFeatures = n;
    this.inFeatures = m;
    this.rank = opts.method === "full" || opts.method === "hyperadapt" ? 0 : opts.rank;
    this.dtype = opts.dtype ?? "f32";
    this.alpha = opts.alpha ?? opts.rank;
    this.#seed = opts.seed;
    const frozen = this.method !== "full";
    const P = { memoryClass: "parameters" as const, dtype: this.dtype };

    // torch.nn.Linear's default, Kaiming-uniform with a = √5: U(−1/√m, 1/√m).
    const bound = 1 / Math.sqrt(m);
    this.weight =
      (opts.initStd
        ? randn([n, m], { ...P, seed: opts.seed, std: opts.initStd, name: `${this.name}.weight` })
        : rand([n, m], {
          ...P,
          seed: opts.seed,
          low: -bound,
          high: bound,
          name: `${this.name}.weight`,
        }))
        .keep();
    this.weight.requiresGrad = !frozen;
    this.bias = opts.bias
      ? zeros([n], { ...P, requiresGrad: true, name: `${this.name}.bias` }).keep()
      : null;

    const ones = (k: number, suffix: string) =>
      fromArray(new Float32Array(k).fill(1), [k], {
        memoryClass: "parameters",
        requiresGrad: true,
        name: `${this.name}.${suffix}`,
      }).keep();

    if (this.method === "bpt" || this.method === "hyperadapt") {
      this.a = ones(n, "bpt_a");
      this.b = ones(m, "bpt_b");
    }
    if (this.method === "bpt") {
      this.u = fromArray(semiOrthogonal(n, this.rank, this.#factorSeed()), [n, this.rank], {
        ...P,
        requiresGrad: true,
        name: `${this.name}.bpt_u`,
      }).keep();
      this.v = zeros([this.rank, m], { ...P, requiresGrad: true, name: `${this.name}.bpt_v` })
        .keep();
    }
    if (this.method === "lora" || this.method === "relora") {
      this.loraA = fromArray(kaimingA(this.rank, m, this.#factorSeed()), [this.rank, m], {
        ...P,
        requiresGrad: true,
        name: `${this.name}.lora_A.weight`,
      }).keep();
      this.loraB = zeros([n, this.rank], {
        ...P,
        requiresGrad: true,
        name: `${this.name}.lora_B.weight`,
      }).keep();
    }
  }

  // A fresh seed per (layer, merge) so each re-draw differs and is reproducible.
  #factorSeed(): number {
    return (this.#seed * 31 + 0x5bd1e995 + this.merges * 0x27d4eb2d) >>> 0;
  }

  // y [N, n] = x [N, m] Wᵀ, written through the core linear op.
  forward(x: Tensor): Tensor {
    let y: Tensor;
    switch (this.method) {
      case "full":
        return linearOp(x, this.weight, this.bias ?? undefined);
      case "hyperadapt": {
        const xb = mul(x, this.b!);
        y = mul(linearOp(xb, this.weight), this.a!);
        break;
      }
      case "bpt":
        // a ⊙ (W (b ⊙ x) + U (V (b ⊙ x))) + bias as one op: W gets no weight-gradient matmul.
        return bptLinear(
          x,
          this.weight,
          this.u!,
          this.v!,
          this.a!,
          this.b!,
          this.bias ?? undefined,
        );
      case "lora":
      case "relora": {
        const base = linearOp(x, this.weight);
        const low = linearOp(linearOp(x, this.loraA!), this.loraB!);
        y = add(base, scale(low, this.alpha / this.rank));
        break;
      }
    }
    return this.bias ? add(y, this.bias) : y;
  }

  parameters(): NamedParam[] {
    const list: NamedParam[] = [{ name: `${this.name}.weight`, tensor: this.weight, decay: true }];
    if (this.bias) list.push({ name: `${this.name}.bias`, tensor: this.bias, decay: false });
    for (const t of [this.a, this.b]) if (t) list.push({ name: t.name, tensor: t, decay: false });
    for (const t of [this.u, this.v, this.loraA, this.loraB]) {
      if (t) list.push({ name: t.name, tensor: t, decay: true });
    }
    return list;
  }

  trainable(): NamedParam[] {
    return this.parameters().filter((p) => p.tensor.requiresGrad);
  }

  merge(): Tensor[] {
    if (this.method !== "bpt" && this.method !== "relora") return [];
    const [left, right, factor] = this.method === "bpt"
      ? [this.u!, this.v!, 1]
      : [this.loraB!, this.loraA!, this.alpha / this.rank];

    // W ← W + factor · left · right, summed in f32 and rounded once into W's dtype.
    noGrad(() =>
      scoped(() => {
        const update = matmul(left, right);
        const scaled = factor === 1 ? update : scale(update, factor);
        const sum = add(cast(this.weight, "f32"), scaled);
        const merged = this.weight.dtype === "f32" ? sum : cast(sum, this.weight.dtype);
        gpu().copy(merged.buffer, 0, this.weight.buffer, 0, this.weight.byteLength);
      })
    );
    this.merges++;

    if (this.method === "bpt") {
      writeValues(this.u!, semiOrthogonal(this.outFeatures, this.rank, this.#factorSeed()));
      gpu().clear(this.v!.buffer);
      return [this.u!, this.v!];
    }
    writeValues(this.loraA!, kaimingA(this.rank, this.inFeatures, this.#factorSeed()));
    gpu().clear(this.loraB!.buffer);
    return [this.loraA!, this.loraB!];
  }

  async effectiveWeight(): Promise<Float32Array> {
    const dense = noGrad(() =>
      scoped(() => {
        const w = cast(this.weight, "f32");
        switch (this.method) {
          case "full":
          case "hyperadapt":
            return w;
          case "bpt":
            return add(w, matmul(this.u!, this.v!));
          case "lora":
          case "relora":
            return add(w, scale(matmul(this.loraB!, this.loraA!), this.alpha / this.rank));
        }
      })
    );
    const values = await dense.toArray();
    dense.dispose();
    if (this.a && this.b) {
      // diag(a) · W · diag(b), applied on the CPU: export and rank tracking only.
      const [a, b] = await Promise.all([this.a.toArray(), this.b.toArray()]);
      const m = this.inFeatures;
      for (let i = 0; i < this.outFeatures; i++) {
        for (let j = 0; j < m; j++) values[i * m + j] *= a[i] * b[j];
      }
    }
    return values;
  }

  /** Trainable parameters of this layer by the counting rule (bias included). */
  get trainableCount(): number {
    const core = adapterParamCount(this.method, this.outFeatures, this.inFeatures, this.rank);
    return core + (this.bias ? this.outFeatures : 0);
  }
}

function writeValues(t: Tensor, values: Float32Array) {
  const fresh = fromArray(values, [...t.shape], { dtype: t.dtype });
  gpu().copy(fresh.buffer, 0, t.buffer, 0, t.byteLength);
  fresh.dispose();
}

/** n×r matrix with orthonormal columns (modified Gram–Schmidt on a seeded normal matrix), row-major. */
export function semiOrthogonal(n: number, r: number, seed: number): Float32Array {
  if (r > n) throw new ParamsError(`semiOrthogonal: rank ${r} exceeds rows ${n}; use rank ≤ ${n}`);
  // Columns stored contiguously while orthogonalising.
  const cols = new Float64Array(n * r);
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  for (let i = 0; i < n * r; i += 2) {
    const rad = Math.sqrt(-2 * Math.log(next()));
    const ang = 2 * Math.PI * next();
    cols[i] = rad * Math.cos(ang);
    if (i + 1 < n * r) cols[i + 1] = rad * Math.sin(ang);
  }
  for (let j = 0; j < r; j++) {
    const cj = cols.subarray(j * n, (j + 1) * n);
    // Two passes of projection keep orthogonality at f64 rounding for tall matrices.
    for (let pass = 0; pass < 2; pass++) {
      for (let k = 0; k < j; k++) {
        const ck = cols.subarray(k * n, (k + 1) * n);
        let dot = 0;
        for (let i = 0; i < n; i++) dot += ck[i] * cj[i];
        for (let i = 0; i < n; i++) cj[i] -= dot * ck[i];
      }
    }
    let norm = 0;
    for (let i = 0; i < n; i++) norm += cj[i] * cj[i];
    norm = Math.sqrt(norm);
    for (let i = 0; i < n; i++) cj[i] /= norm;
  }
  const out = new Float32Array(n * r);
  for (let i = 0; i < n; i++) for (let j = 0; j < r; j++) out[i * r + j] = cols[j * n + i];
  return out;
}

// LoRA's A (r×m): PEFT initialises it with kaiming_uniform_(a=√5), i.e. U(−1/√m, 1/√m).
function kaimingA(r: number, m: number, seed: number): Float32Array {
  const bound = 1 / Math.sqrt(m);
  const out = new Float32Array(r * m);
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = -bound + 2 * bound * u;
  }
  return out;
}
