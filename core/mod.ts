/**
 * WebGPU tensors with reverse-mode autograd: the device, tensors in f32, bf16
 * and f16, the memory ledger, seeded random init, the kernels every model op
 * needs (each with its backward), and a safetensors reader/writer.
 *
 * Imports inside `core/` are relative with `.ts` extensions, so this module can
 * be imported by URL with no import map:
 *
 * ```ts
 * import { initGpu, fromArray, matmul } from "https://example.org/bpt/core/mod.ts";
 * await initGpu();
 * const y = matmul(fromArray([1, 2, 3, 4], [2, 2]), fromArray([1, 0, 0, 1], [2, 2]));
 * console.log(await y.toArray());
 * ```
 *
 * @module
 */

export { type Dispatch, getGpu, Gpu, GpuError, NoGpuError } from "./gpu.ts";
export {
  beginScope,
  bf16ToF32,
  bytesPerElement,
  drainPool,
  type DType,
  empty,
  endScope,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromArray,
  gpu,
  initGpu,
  Ledger,
  ledger,
  MEMORY_CLASSES,
  type MemoryClass,
  poolBytes,
  scoped,
  setDefaultMemoryClass,
  ShapeError,
  storageBytes,
  Tensor,
  type TensorOptions,
  TensorView,
  writeBytes,
  zeros,
} from "./tensor.ts";
export {
  backward,
  type BackwardFn,
  clearTape,
  gradEnabled,
  leafGrad,
  noGrad,
  record,
  tapeLength,
} from "./autograd.ts";
export { hash2, normalAt, rand, randn, uniform01 } from "./random.ts";
export {
  BF16_PACK,
  flatIndex,
  grid1d,
  main1d,
  pack16,
  storage,
  uniforms,
  type Window,
  window,
  windowElements,
} from "./wgsl.ts";
export { cast } from "./ops/cast.ts";
export { add, addInto, fillInPlace, mul, scale, sumRows } from "./ops/elementwise.ts";
export {
  gemm,
  type GemmConfig,
  gemmConfig,
  type GemmOptions,
  gemmSum,
  type GemmSumOptions,
  linear,
  matmul,
  setGemmConfig,
} from "./ops/matmul.ts";
export {
  type ColumnSum,
  columnSums,
  scaleColumns,
  scaleColumnsBackward,
} from "./ops/scale_columns.ts";
export { silu, swiglu } from "./ops/activation.ts";
export { mean, sum } from "./ops/reduce.ts";
export { softmax } from "./ops/softmax.ts";
export { rmsnorm } from "./ops/rmsnorm.ts";
export { rope } from "./ops/rope.ts";
export { embedding } from "./ops/embedding.ts";
export { crossEntropy } from "./ops/cross_entropy.ts";
export { attention, type AttentionOptions } from "./ops/attention.ts";
export { fromInt32, toInt32 } from "./ops/int.ts";
export { benchGemm, type GemmShape, type GemmTiming } from "./gemm_bench.ts";
export {
  assertClose,
  checkGradients,
  type GradInput,
  type GradReport,
  seededArray,
} from "./testing.ts";
export * from "./safetensors.ts";
