// Integer tensors: token ids and targets stored as i32 bit patterns.
//
// The tensor's dtype is "f32" because Tensor has no integer dtype, and
// both are 4 bytes per element, so windows and reshapes work unchanged. Kernels
// that take such a tensor bind it as `array<i32>`; reading it with `ld_` or
// `toArray()` returns meaningless floats.

import { empty, gpu, type Tensor, writeBytes } from "../tensor.ts";

/** Uploads 32-bit signed integers (token ids, targets) into a new tensor of `shape`. */
export function fromInt32(data: Int32Array | readonly number[], shape: readonly number[]): Tensor {
  const numel = shape.reduce((a, b) => a * b, 1);
  if (data.length !== numel) {
    throw new RangeError(
      `fromInt32: ${data.length} values do not fill shape ${shape.join("x")} (${numel} elements)`,
    );
  }
  const ints = new Int32Array(numel);
  if (data instanceof Int32Array) {
    ints.set(data);
  } else {
    for (let i = 0; i < numel; i++) {
      const v = data[i];
      if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) {
        throw new RangeError(`fromInt32: value ${v} at index ${i} is not a 32-bit signed integer`);
      }
      ints[i] = v;
    }
  }
  const t = empty(shape, { name: "int32" });
  // Deno 2.9.6 panics on a zero-byte queue.writeBuffer.
  if (numel > 0) writeBytes(t.buffer, 0, new Uint8Array(ints.buffer));
  return t;
}

/** Copies an integer tensor made by `fromInt32` back to the CPU. */
export async function toInt32(t: Tensor): Promise<Int32Array> {
  if (t.numel === 0) return new Int32Array(0);
  return new Int32Array(await gpu().read(t.buffer, 0, t.numel * 4));
}
