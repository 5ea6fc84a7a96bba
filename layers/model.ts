// Decoder-only transformers: Qwen2.5 (pre-norm, q/k/v biases, tied LM head)
// and OLMo-2 (norms after the sublayers, QK-norm, untied LM head), built from
// the core ops and the linear methods. Parameter names follow Hugging Face's
// state dicts so checkpoints load in transformers.
//
// Shapes: B batch, T sequence, C hidden, Hq/Hkv heads, D head dim, V vocabulary.

import { attention } from "../core/ops/attention.ts";
import { crossEntropy } from "../core/ops/cross_entropy.ts";
import { add } from "../core/ops/elementwise.ts";
import { embedding } from "../core/ops/embedding.ts";
import { swiglu } from "../core/ops/activation.ts";
import { fromInt32 } from "../core/ops/int.ts";
import { linear as linearOp } from "../core/ops/matmul.ts";
import { rmsnorm } from "../core/ops/rmsnorm.ts";
import { rope } from "../core/ops/rope.ts";
import { randn } from "../core/random.ts";
import { type DType, fromArray, ShapeError, type Tensor } from "../core/tensor.ts";
import type { ModelConfig } from "./config.ts";
import { createLinear, type Linear, type NamedParam } from "./linear.ts";
import { type Method, validateRank } from "./params.ts";

/** Training method of the block linears, and the storage dtype of parameters. */
export interface ModelOptions {
  method: Method;
  /** Rank of BPT/LoRA/ReLoRA factors; ignored by full and hyperadapt. */
  rank: number;
  /** LoRA α; default equal to the rank (scaling 1). */
  alpha?: number;
  /** Storage dtype of weights, embeddings, norms and low-rank factors; BPT diagonals stay f32. */
  dtype?: DType;
  seed?: number;
}

interface Block {
  inputNorm: Tensor | null;
  postAttnNorm: Tensor;
  postFfnNorm: Tensor | null;
  qNorm: Tensor | null;
  kNorm: Tensor | null;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  gate: Linear;
  up: Linear;
  down: Linear;
}

/** A Qwen2 or OLMo-2 causal language model on the GPU. */
export class CausalLM {
  readonly config: ModelConfig;
  readonly options: Required<ModelOptions>;
  readonly embed: Tensor;
  readonly lmHead: Tensor | null;
  readonly norm: Tensor;
  readonly blocks: Block[] = [];

  constructor(config: ModelConfig, options: ModelOptions) {
    const cfg = config;
    this.config = cfg;
    this.options = {
      method: options.method,
      rank: options.rank,
      alpha: options.alpha ?? options.rank,
      dtype: options.dtype ?? "f32",
      seed: options.seed ?? 1,
    };
    validateRank(cfg, options.method, options.rank);
    const { dtype, seed } = this.options;
    const C = cfg.hiddenSize;
    const P = { memoryClass: "parameters" as const, dtype, requiresGrad: true };

    // Embeddings ~ N(0, initializer_range²) as transformers initialises them (0.02 for both families).
    this.embed = randn([cfg.vocabSize, C], {
      ...P,
      seed: seed * 1000 + 1,
      std: cfg.initStd,
      name: "model.embed_tokens.weight",
    }).keep();
    this.lmHead = cfg.tieEmbeddings ? null : randn([cfg.vocabSize, C], {
      ...P,
      seed: seed * 1000 + 2,
      std: cfg.initStd,
      name: "lm_head.weight",
    }).keep();
    const ones = (k: number, name: string) =>
      fromArray(new Float32Array(k).fill(1), [k], { ...P, name }).keep();
    this.norm = ones(C, "model.norm.weight");

    const hq = cfg.numHeads * cfg.headDim;
    const hkv = cfg.numKvHeads * cfg.headDim;
    const olmo = cfg.arch === "olmo2";
    for (let i = 0; i < cfg.numLayers; i++) {
      const prefix = `model.layers.${i}`;
      let k = 0;
      const lin = (name: string, n: number, m: number, bias: boolean) =>
        createLinear({
          name: `${prefix}.${name}`,
          outFeatures: n,
          inFeatures: m,
          method: this.options.method,
          rank: this.options.rank,
          alpha: this.options.alpha,
          bias,
          dtype,
          seed: seed * 1_000_003 + i * 16 + k++,
          fallbackToFull: true,
        });
      this.blocks.push({
        inputNorm: olmo ? null : ones(C, `${prefix}.input_layernorm.weight`),
        postAttnNorm: ones(C, `${prefix}.post_attention_layernorm.weight`),
        postFfnNorm: olmo ? ones(C, `${prefix}.post_feedforward_layernorm.weight`) : null,
        qNorm: olmo ? ones(hq, `${prefix}.self_attn.q_norm.weight`) : null,
        kNorm: olmo ? ones(hkv, `${prefix}.self_attn.k_norm.weight`) : null,
        q: lin("self_attn.q_proj", hq, C, cfg.qkvBias),
        k: lin("self_attn.k_proj", hkv, C, cfg.qkvBias),
        v: lin("self_attn.v_proj", hkv, C, cfg.qkvBias),
        o: lin("self_attn.o_proj", C, hq, false),
        gate: lin("mlp.gate_proj", cfg.intermediateSize, C, false),
        up: lin("mlp.up_proj", cfg.intermediateSize, C, false),
        down: lin("mlp.down_proj", C, cfg.intermediateSize, false),
      });
    }
  }

  /** Returns every block linear, in layer order. */
  linears(): Linear[] {
    return this.blocks.flatMap((b) => [b.q, b.k, b.v, b.o, b.gate, b.up, b.down]);
  }

  /** Returns every parameter under its checkpoint name, trainable or frozen. */
  parameters(): NamedParam[] {
    const list: NamedParam[] = [{ name: this.embed.name, tensor: this.embed, decay: true }];
    const norm = (t: Tensor | null) => {
      if (t) list.push({ name: t.name, tensor: t, decay: false });
    };
    for (const b of this.blocks) {
      norm(b.inputNorm);
      for (const l of [b.q, b.k, b.v, b.o]) list.push(...l.parameters());
      norm(b.qNorm);
      norm(b.kNorm);
      norm(b.postAttnNorm);
      for (const l of [b.gate, b.up, b.down]) list.push(...l.parameters());
      norm(b.postFfnNorm);
    }
    norm(this.norm);
    if (this.lmHead) list.push({ name: this.lmHead.name, tensor: this.lmHead, decay: true });
    return list;
  }

  /** Parameters that receive gradients. */
  trainable(): NamedParam[] {
    return this.parameters().filter((p) => p.tensor.requiresGrad);
  }

  /** Frees every parameter and gradient buffer; the model must not be used afterwards. */
  dispose(): void {
    for (const p of this.parameters()) {
      p.tensor.grad?.dispose();
      p.tensor.dispose();
    }
  }

  /** Logits [B·T, V] for token ids [B, T] (an Int32Array, or a tensor from fromInt32). */
  forward(ids: Int32Array | Tensor, batch: number, seqLen: number, positionOffset = 0): Tensor {
    const cfg = this.config;
    if (seqLen + positionOffset > cfg.maxSeqLen) {
      throw new ShapeError(
        `sequence length ${
          seqLen + positionOffset
        } exceeds the model's maximum ${cfg.maxSeqLen}; use --seq-len ≤ ${cfg.maxSeqLen}`,
      );
    }
    const tokens = ids instanceof Int32Array ? fromInt32(ids, [batch, seqLen]) : ids;
    const B = batch, T = seqLen, C = cfg.hiddenSize;
    const D = cfg.headDim, Hq = cfg.numHeads, Hkv = cfg.numKvHeads;
    const eps = cfg.rmsNormEps;
    const theta = cfg.ropeTheta;

    // x [B·T, C]
    let x = embedding(tokens, this.embed).reshape([B * T, C]);
    for (const blk of this.blocks) {
      // Attention sublayer. Qwen2 normalises its input; OLMo-2 normalises its output.
      const a = blk.inputNorm ? rmsnorm(x, blk.inputNorm, eps) : x;
      let q = blk.q.forward(a);
      let k = blk.k.forward(a);
      const v = blk.v.forward(a);
      if (blk.qNorm && blk.kNorm) {
        // OLMo-2's QK-norm runs over the whole projection, before the head split and RoPE.
        q = rmsnorm(q, blk.qNorm, eps);
        k = rmsnorm(k, blk.kNorm, eps);
      }
      const qh = rope(q.reshape([B, T, Hq, D]), theta, positionOffset);
      const kh = rope(k.reshape([B, T, Hkv, D]), theta, positionOffset);
      const att = attention(qh, kh, v.reshape([B, T, Hkv, D])).reshape([B * T, Hq * D]);
      let h = blk.o.forward(att);
      if (blk.postFfnNorm) h = rmsnorm(h, blk.postAttnNorm, eps);
      x = add(x, h);

      // MLP sublayer: down(silu(gate(x)) · up(x)).
      const m = blk.postFfnNorm ? x : rmsnorm(x, blk.postAttnNorm, eps);
      let f = blk.down.forward(swiglu(blk.gate.forward(m), blk.up.forward(m)));
      if (blk.postFfnNorm) f = rmsnorm(f, blk.postFfnNorm, eps);
      x = add(x, f);
    }
    const xf = rmsnorm(x, this.norm, eps);
    return linearOp(xf, this.lmHead ?? this.embed);
  }

  /** Mean cross-entropy (nats per token) of predicting `targets` from `ids`; targets < 0 are ignored. */
  loss(ids: Int32Array, targets: Int32Array, batch: number, seqLen: number): Tensor {
    // Both uploads come before the forward pass: an upload flushes the recorded
    // work, so uploading in between would split the step into two submissions.
    const tokens = fromInt32(ids, [batch, seqLen]);
    const targetIds = fromInt32(targets, [batch * seqLen]);
    const logits = this.forward(tokens, batch, seqLen);
    return crossEntropy(logits, targetIds);
  }
}
