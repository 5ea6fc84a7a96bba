// Magnitude pruning of optimizer state, done on the CPU.
//
// ReLoRA resets optimizer state every few thousand steps, so the readback and
// the sort here are paid rarely. The rule follows ReLoRA's reference code
// (github.com/Guitaricet/relora, peft_pretraining/training_utils.py,
// magnitude_pruning): the threshold is the `fraction`-quantile of |x| with
// linear interpolation (torch.quantile's default), cast to the tensor's dtype,
// and entries with |x| ≤ threshold become zero.

import { bf16ToF32, f32ToBf16 } from "../core/tensor.ts";

/** Computes the q-quantile of |values|, interpolating linearly between neighbouring order statistics. */
export function magnitudeQuantile(values: Float32Array, q: number): number {
  if (values.length === 0) throw new RangeError("magnitudeQuantile: no values");
  if (!(q >= 0 && q <= 1)) {
    throw new RangeError(`invalid quantile ${q}: expected a value in [0, 1]`);
  }

  const sorted = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) sorted[i] = Math.abs(values[i]);
  sorted.sort();

  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * Zeroes, in place, the entries of raw tensor storage (f32 values or packed
 * bf16 words) whose magnitude is at most the `fraction`-quantile of all
 * magnitudes. Returns the number of entries zeroed.
 */
export function pruneByMagnitude(
  bytes: Uint8Array,
  dtype: "f32" | "bf16",
  numel: number,
  fraction: number,
): number {
  if (numel === 0) return 0;

  let values: Float32Array;
  let words: Uint16Array | null = null;
  if (dtype === "f32") {
    values = new Float32Array(bytes.buffer, bytes.byteOffset, numel);
  } else {
    words = new Uint16Array(bytes.buffer, bytes.byteOffset, numel);
    values = new Float32Array(numel);
    for (let i = 0; i < numel; i++) values[i] = bf16ToF32(words[i]);
  }

  let threshold = magnitudeQuantile(values, fraction);
  if (dtype === "bf16") threshold = bf16ToF32(f32ToBf16(threshold));

  let zeroed = 0;
  for (let i = 0; i < numel; i++) {
    if (Math.abs(values[i]) > threshold) continue;
    if (words) words[i] = 0;
    else values[i] = 0;
    zeroed++;
  }
  return zeroed;
}
