import assert from "node:assert/strict";
import { backward, noGrad } from "../core/autograd.ts";
import { initGpu, scoped } from "../core/tensor.ts";
import { getPreset, type ModelConfig } from "./config.ts";
import { exportModel, loadExportedModel, loadModelState, saveModelState } from "./checkpoint.ts";
import { CausalLM } from "./model.ts";
import { openSafetensors } from "../core/safetensors.ts";
import { gpu } from "../core/tensor.ts";

await initGpu();

const QWEN: ModelConfig = getPreset("qwen2.5-micro");
const OLMO: ModelConfig = {
  ...QWEN,
  arch: "olmo2",
  tieEmbeddings: false,
  qkvBias: false,
  ropeTheta: 500_000,
};

// ---- CPU reference, written from the architectures' definitions in f64 ----

type Params = Map<string, Float64Array>;

async function readParams(model: CausalLM): Promise<Params> {
  const out: Params = new Map();
  for (const p of model.parameters()) out.set(p.name, Float64Array.from(await p.tensor.toArray()));
  return out;
}

function rmsnormRef(x: Float64Array, rows: number, cols: number, w: Float64Array, eps: number) {
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let c = 0; c < cols; c++) ss += x[r * cols + c] ** 2;
    const inv = 1 / Math.sqrt(ss / cols + eps);
    for (let c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] * inv * w[c];
  }
  return y;
}

// y [rows, n] = x [rows, m] Wᵀ + b
function linearRef(
  x: Float64Array,
  rows: number,
  w: Float64Array,
  n: number,
  m: number,
  b?: Float64Array,
) {
  const y = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < n; i++) {
      let s = b ? b[i] : 0;
      for (let j = 0; j < m; j++) s += x[r * m + j] * w[i * m + j];
      y[r * n + i] = s;
    }
  }
  return y;
}

// Rotate-half RoPE on [B, T, H, D] in place: pairs (i, i + D/2) at angle t·θ^(−2i/D).
function ropeRef(x: Float64Array, B: number, T: number, H: number, D: number, theta: number) {
  const half = D / 2;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const o = ((b * T + t) * H + h) * D;
        for (let i = 0; i < half; i++) {
          const ang = t * theta ** (-2 * i / D);
          const x1 = x[o + i];
          const x2 = x[o + i + half];
          x[o + i] = x1 * Math.cos(ang) - x2 * Math.sin(ang);
          x[o + i + half] = x2 * Math.cos(ang) + x1 * Math.sin(ang);
        }
      }
    }
  }
}

function attentionRef(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  B: number,
  T: number,
  Hq: number,
  Hkv: number,
  D: number,
) {
  const out = new Float64Array(B * T * Hq * D);
  const group = Hq / Hkv;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        const s = new Float64Array(t + 1);
        let max = -Infinity;
        for (let u = 0; u <= t; u++) {
          let dot = 0;
          for (let d = 0; d < D; d++) {
            dot += q[((b * T + t) * Hq + h) * D + d] * k[((b * T + u) * Hkv + g) * D + d];
          }
          s[u] = dot / Math.sqrt(D);
          max = Math.max(max, s[u]);
        }
        let z = 0;
        for (let u = 0; u <= t; u++) z += s[u] = Math.exp(s[u] - max);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let u = 0; u <= t; u++) acc += s[u] * v[((b * T + u) * Hkv + g) * D + d];
          out[((b * T + t) * Hq + h) * D + d] = acc / z;
        }
      }
    }
  }
  return out;
}

function forwardRef(cfg: ModelConfig, p: Params, ids: Int32Array, B: number, T: number) {
  const C = cfg.hiddenSize, D = cfg.headDim, Hq = cfg.numHeads, Hkv = cfg.numKvHeads;
  const I = cfg.intermediateSize, N = B * T, eps = cfg.rmsNormEps;
  const get = (name: string) => {
    const v = p.get(name);
    if (!v) throw new Error(`reference: missing ${name}`);
    return v;
  };
  const emb = get("model.embed_tokens.weight");
  let x = new Float64Array(N * C);
  for (let r = 0; r < N; r++) x.set(emb.subarray(ids[r] * C, ids[r] * C + C), r * C);
  const addTo = (a: Float64Array, b: Float64Array) => a.map((v, i) => v + b[i]);

  for (let l = 0; l < cfg.numLayers; l++) {
    const pre = `model.layers.${l}`;
    const olmo = cfg.arch === "olmo2";
    const a = olmo ? x : rmsnormRef(x, N, C, get(`${pre}.input_layernorm.weight`), eps);
    const bias = (n: string) => cfg.qkvBias ? get(`${pre}.self_attn.${n}.bias`) : undefined;
    let q = linearRef(a, N, get(`${pre}.self_attn.q_proj.weight`), Hq * D, C, bias("q_proj"));
    let k = linearRef(a, N, get(`${pre}.self_attn.k_proj.weight`), Hkv * D, C, bias("k_proj"));
    const v = linearRef(a, N, get(`${pre}.self_attn.v_proj.weight`), Hkv * D, C, bias("v_proj"));
    if (olmo) {
      q = rmsnormRef(q, N, Hq * D, get(`${pre}.self_attn.q_norm.weight`), eps);
      k = rmsnormRef(k, N, Hkv * D, get(`${pre}.self_attn.k_norm.weight`), eps);
    }
    ropeRef(q, B, T, Hq, D, cfg.ropeTheta);
    ropeRef(k, B, T, Hkv, D, cfg.ropeTheta);
    const att = attentionRef(q, k, v, B, T, Hq, Hkv, D);
    let h = linearRef(att, N, get(`${pre}.self_attn.o_proj.weight`), C, Hq * D);
    if (olmo) h = rmsnormRef(h, N, C, get(`${pre}.post_attention_layernorm.weight`), eps);
    x = addTo(x, h);

    const m = olmo ? x : rmsnormRef(x, N, C, get(`${pre}.post_attention_layernorm.weight`), eps);
    const g = linearRef(m, N, get(`${pre}.mlp.gate_proj.weight`), I, C);
    const u = linearRef(m, N, get(`${pre}.mlp.up_proj.weight`), I, C);
    const act = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]);
    let f = linearRef(act, N, get(`${pre}.mlp.down_proj.weight`), C, I);
    if (olmo) f = rmsnormRef(f, N, C, get(`${pre}.post_feedforward_layernorm.weight`), eps);
    x = addTo(x, f);
  }
  const xf = rmsnormRef(x, N, C, get("model.norm.weight"), eps);
  const head = cfg.tieEmbeddings ? emb : get("lm_head.weight");
  return linearRef(xf, N, head, cfg.vocabSize, C);
}

function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const ids = new Int32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    ids[i] = s % vocab;
  }
  return ids;
}

function maxRelError(got: Float32Array, want: Float64Array): number {
  let maxAbs = 0;
  for (const w of want) maxAbs = Math.max(maxAbs, Math.abs(w));
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - want[i]) / maxAbs);
  }
  return worst;
}

for (const cfg of [QWEN, OLMO]) {
  Deno.test(`${cfg.arch} forward matches CPU reference`, async () => {
    // Non-default norm weights and biases so every parameter matters.
    const model = new CausalLM(cfg, { method: "full", rank: 0, seed: 3 });
    const B = 2, T = 7;
    const ids = randomIds(B * T, cfg.vocabSize, 11);
    const logits = await scoped(() => noGrad(() => model.forward(ids, B, T))).toArray();
    const want = forwardRef(cfg, await readParams(model), ids, B, T);
    const err = maxRelError(logits, want);
    assert.ok(err <= 1e-4, `max relative error ${err}`);
  });
}

Deno.test("loss gradient matches finite differences", async () => {
  const cfg = { ...QWEN, numLayers: 2 };
  const model = new CausalLM(cfg, { method: "full", rank: 0, seed: 5 });
  const B = 1, T = 5;
  const ids = randomIds(B * T, cfg.vocabSize, 3);
  const targets = randomIds(B * T, cfg.vocabSize, 4);
  const loss = model.loss(ids, targets, B, T);
  backward(loss);
  const lossAt = async () =>
    (await scoped(() => noGrad(() => model.loss(ids, targets, B, T))).toArray())[0];

  const picks: [string, number][] = [
    ["model.layers.1.mlp.down_proj.weight", 7],
    ["model.layers.0.self_attn.q_proj.bias", 3],
    ["model.layers.0.input_layernorm.weight", 5],
    ["model.embed_tokens.weight", ids[2] * cfg.hiddenSize + 4],
  ];
  const byName = new Map(model.parameters().map((p) => [p.name, p.tensor]));
  for (const [name, idx] of picks) {
    const t = byName.get(name)!;
    const analytic = (await t.grad!.toArray())[idx];
    const values = await t.toArray();
    // f32 loss values near 4.6 resolve ~5e-7, so h must move the loss well above that.
    // Embedding entries are ~0.02 in size, so they get a smaller step.
    const h = name.startsWith("model.embed") ? 0.01 : 0.1;
    const set = async (v: number) => {
      values[idx] = v;
      const { fromArray } = await import("../core/tensor.ts");
      const tmp = fromArray(values, [...t.shape]);
      gpu().copy(tmp.buffer, 0, t.buffer, 0, t.byteLength);
      tmp.dispose();
    };
    const x0 = values[idx];
    await set(x0 + h);
    const up = await lossAt();
    await set(x0 - h);
    const down = await lossAt();
    await set(x0);
    const numeric = (up - down) / (2 * h);
    const err = Math.abs(analytic - numeric) /
      Math.max(Math.abs(analytic), Math.abs(numeric), 1e-3);
    assert.ok(err < 2e-2, `${name}[${idx}]: autograd ${analytic}, numeric ${numeric}`);
  }
});

Deno.test("state round trip is bit-exact in f32 and bf16", async () => {
  for (const dtype of ["f32", "bf16"] as const) {
    const a = new CausalLM(QWEN, { method: "bpt", rank: 4, dtype, seed: 1 });
    const b = new CausalLM(QWEN, { method: "bpt", rank: 4, dtype, seed: 2 });
    const dir = await Deno.makeTempDir();
    try {
      await saveModelState(a, `${dir}/state.safetensors`);
      await loadModelState(b, `${dir}/state.safetensors`);
      const pb = new Map(b.parameters().map((p) => [p.name, p.tensor]));
      for (const p of a.parameters()) {
        assert.deepEqual(await pb.get(p.name)!.toBytes(), await p.tensor.toBytes(), p.name);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("export of a BPT model gives the same logits", async () => {
  const model = new CausalLM(QWEN, { method: "bpt", rank: 4, seed: 9 });
  // Move the factors and diagonals off their identity init so the merge matters.
  for (const p of model.parameters()) {
    if (!/bpt_[abv]$/.test(p.name)) continue;
    const v = await p.tensor.toArray();
    for (let i = 0; i < v.length; i++) v[i] += 0.05 * Math.sin(i + 1);
    const { fromArray } = await import("../core/tensor.ts");
    const tmp = fromArray(v, [...p.tensor.shape]);
    gpu().copy(tmp.buffer, 0, p.tensor.buffer, 0, p.tensor.byteLength);
    tmp.dispose();
  }
  const B = 1, T = 6;
  const ids = randomIds(T, QWEN.vocabSize, 2);
  const before = await scoped(() => noGrad(() => model.forward(ids, B, T))).toArray();
  const dir = await Deno.makeTempDir();
  try {
    await exportModel(model, dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    assert.deepEqual(config.architectures, ["Qwen2ForCausalLM"]);
    const file = await openSafetensors(`${dir}/model.safetensors`);
    const names = [...file.tensors.keys()];
    file.close();
    assert.ok(names.includes("model.layers.0.mlp.up_proj.weight"));
    assert.ok(!names.some((n) => n.includes("bpt_")), names.join());
    const loaded = await loadExportedModel(dir);
    const after = await scoped(() => noGrad(() => loaded.forward(ids, B, T))).toArray();
    let worst = 0;
    for (let i = 0; i < before.length; i++) worst = Math.max(worst, Math.abs(before[i] - after[i]));
    assert.ok(worst < 1e-4, `max logit difference ${worst}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("qwen2.5-0.5b in bf16 allocates and gives finite logits", async () => {
  // 494M parameters: the 151,936×896 embedding alone (272 MB in bf16) exceeds a
  // 128 MiB binding, so the lookup and the tied LM head run on split bindings.
  const cfg = getPreset("qwen2.5-0.5b");
  const model = new CausalLM(cfg, { method: "bpt", rank: 128, dtype: "bf16", seed: 1 });
  try {
    assert.ok(model.embed.byteLength > gpu().limits.maxStorageBufferBindingSize);
    const T = 4;
    const ids = new Int32Array([9707, 11, 1879, 0]);
    const logits = await scoped(() => noGrad(() => model.forward(ids, 1, T))).toArray();
    assert.equal(logits.length, T * cfg.vocabSize);
    assert.ok(logits.every(Number.isFinite));
  } finally {
    model.dispose();
  }
});

Deno.test("loading a checkpoint of another shape names the tensor", async () => {
  const small = new CausalLM(QWEN, { method: "full", rank: 0, seed: 1 });
  const wider = new CausalLM({ ...QWEN, intermediateSize: 96 }, {
    method: "full",
    rank: 0,
    seed: 1,
  });
  const dir = await Deno.makeTempDir();
  try {
    await saveModelState(small, `${dir}/state.safetensors`);
    await assert.rejects(
      () => loadModelState(wider, `${dir}/state.safetensors`),
      /"model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[64, 32\], expected \[96, 32\]/,
    );
    // A file cut inside its header.
    const bytes = await Deno.readFile(`${dir}/state.safetensors`);
    await Deno.writeFile(`${dir}/cut.safetensors`, bytes.subarray(0, 20));
    await assert.rejects(() => loadModelState(small, `${dir}/cut.safetensors`), /cut\.safetensors/);
  } finally {
    small.dispose();
    wider.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
