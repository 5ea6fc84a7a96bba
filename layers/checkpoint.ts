// Model weights in safetensors, two ways:
//
//   export      a standard Hugging Face model: config.json + model.safetensors with
//               the method's factors merged into plain weights (BPT: A (W + U V) B),
//               loadable by transformers.AutoModelForCausalLM.from_pretrained(dir).
//   state       every parameter as it trains, frozen W and unmerged factors included,
//               under the names parameters() gives (HF names plus `.bpt_a`, `.bpt_b`,
//               `.bpt_u`, `.bpt_v`, `.lora_A.weight`, `.lora_B.weight`), so training resumes exactly.
//
// Tensors are read back and written one at a time: a file is never built in one buffer.

import { gpu, writeBytes } from "../core/tensor.ts";
import type { Tensor } from "../core/tensor.ts";
import {
  type Dtype,
  openSafetensors,
  SafetensorsError,
  type TensorEntry,
  writeSafetensors,
} from "../core/safetensors.ts";
import { f32ToBf16, f32ToF16 } from "../core/tensor.ts";
import { configFromHf, toHfConfig, type TorchDtype } from "./config.ts";
import { CausalLM } from "./model.ts";

const SAFETENSORS_DTYPE = { f32: "F32", bf16: "BF16", f16: "F16" } as const;
const TORCH_DTYPE: Record<string, TorchDtype> = {
  f32: "float32",
  bf16: "bfloat16",
  f16: "float16",
};

// Bytes read back from the GPU per chunk: a 1.5B model's bf16 embedding is
// 466 MB, and no tensor is held whole on the CPU.
const READ_CHUNK = 64 << 20;

/** Streams the tensor's storage bytes, without the padding half-word of odd-sized 16-bit tensors. */
async function* tensorChunks(t: Tensor): AsyncIterable<Uint8Array> {
  const exact = t.dtype === "f32" ? t.numel * 4 : t.numel * 2;
  for (let offset = 0; offset < exact; offset += READ_CHUNK) {
    const length = Math.min(READ_CHUNK, exact - offset);
    yield new Uint8Array(await gpu().read(t.buffer, offset, length));
  }
}

function entryFor(name: string, t: Tensor): TensorEntry {
  return {
    name,
    dtype: SAFETENSORS_DTYPE[t.dtype],
    shape: [...t.shape],
    bytes: () => tensorChunks(t),
  };
}

/** Writes every parameter, unmerged, to `path` (a training checkpoint's weights). */
export async function saveModelState(
  model: CausalLM,
  path: string,
  metadata: Record<string, string> = {},
): Promise<void> {
  const entries = model.parameters().map((p) => entryFor(p.name, p.tensor));
  await writeSafetensors(path, entries, { format: "pt", ...metadata });
}

/** Loads every parameter written by `saveModelState` into `model`, checking names and shapes. */
export async function loadModelState(model: CausalLM, path: string): Promise<void> {
  const file = await openSafetensors(path);
  try {
    for (const p of model.parameters()) {
      if (!file.tensors.has(p.name)) {
        throw new SafetensorsError(
          `${path}: tensor "${p.name}" is missing: the checkpoint was written for another model, method or rank`,
        );
      }
      const info = file.expectShape(p.name, p.tensor.shape);
      if (info.dtype !== SAFETENSORS_DTYPE[p.tensor.dtype]) {
        throw new SafetensorsError(
          `${path}: tensor "${p.name}" is ${info.dtype} but the model stores ${p.tensor.dtype}: pass the --dtype the checkpoint was written with`,
        );
      }
      await copyInto(p.tensor, file.readChunks(p.name, 1 << 24));
    }
  } finally {
    file.close();
  }
}

async function copyInto(t: Tensor, chunks: AsyncIterable<Uint8Array>) {
  let offset = 0;
  let carry: Uint8Array | null = null;
  for await (let chunk of chunks) {
    // Queue writes need 4-byte multiples; carry the remainder into the next chunk.
    if (carry) {
      const joined = new Uint8Array(carry.length + chunk.length);
      joined.set(carry);
      joined.set(chunk, carry.length);
      chunk = joined;
      carry = null;
    }
    const whole = chunk.length - (chunk.length % 4);
    if (whole < chunk.length) carry = chunk.slice(whole);
    if (whole > 0) writeBytes(t.buffer, offset, chunk.slice(0, whole));
    offset += whole;
  }
  if (carry) writeBytes(t.buffer, offset, carry.slice());
}

/**
 * Writes a standard Hugging Face model to `dir`: config.json and
 * model.safetensors with merged weights in the model's dtype.
 */
export async function exportModel(model: CausalLM, dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const dtype = model.options.dtype;
  const merged = new Map<string, () => Promise<Uint8Array>>();
  for (const l of model.linears()) {
    if (l.method === "full") continue;
    merged.set(l.weight.name, async () => encode(await l.effectiveWeight(), dtype));
  }

  const entries: TensorEntry[] = [];
  for (const p of model.parameters()) {
    // Factors and diagonals disappear into the merged weight.
    if (/\.(bpt_[abuv]|lora_[AB]\.weight)$/.test(p.name)) continue;
    const make = merged.get(p.name);
    entries.push(
      make
        ? {
          name: p.name,
          dtype: SAFETENSORS_DTYPE[dtype],
          shape: [...p.tensor.shape],
          bytes: async function* () {
            yield await make();
          },
        }
        : entryFor(p.name, p.tensor),
    );
  }
  await writeSafetensors(`${dir}/model.safetensors`, entries, { format: "pt" });

  const config = toHfConfig(model.config, TORCH_DTYPE[dtype]);
  const tmp = `${dir}/config.json.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(config, null, 2) + "\n");
  await Deno.rename(tmp, `${dir}/config.json`);
}

function encode(values: Float32Array, dtype: "f32" | "bf16" | "f16"): Uint8Array {
  if (dtype === "f32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const conv = dtype === "bf16" ? f32ToBf16 : f32ToF16;
  const words = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) words[i] = conv(values[i]);
  return new Uint8Array(words.buffer);
}

/** Loads an exported (or any Qwen2/OLMo-2 Hugging Face) model directory as a full-training model. */
export async function loadExportedModel(dir: string, seed = 1): Promise<CausalLM> {
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  } catch (e) {
    throw new SafetensorsError(
      `${dir}/config.json: cannot read (${
        (e as Error).message.split("\n")[0]
      }); point at a model directory with config.json and model.safetensors`,
    );
  }
  const cfg = configFromHf(json);
  const path = `${dir}/model.safetensors`;
  const file = await openSafetensors(path);
  const dtypes = new Set([...file.tensors.values()].map((t) => t.dtype));
  file.close();
  const dtype = dtypes.has("BF16") ? "bf16" : dtypes.has("F16") ? "f16" : "f32";
  const model = new CausalLM(cfg, { method: "full", rank: 0, dtype, seed });
  await loadModelState(model, path);
  return model;
}

export type { Dtype };
