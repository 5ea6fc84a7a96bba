// Optimizer, gradient clipping and learning-rate schedules.
//
// A training step records backward, `GradNormClip.computeScale` and
// `AdamW.step` into one command encoder; nothing here submits or reads back
// except `GradNormClip.norm()`, `AdamW.stateDict()` and a pruning `resetState`.

export {
  AdamW,
  type AdamWOptions,
  type AdamWParam,
  type AdamWParamState,
  type AdamWState,
  type Bf16Update,
} from "./adamw.ts";
export { GradNormClip } from "./clip.ts";
export { defaultDecay } from "./decay.ts";
export { magnitudeQuantile, pruneByMagnitude } from "./prune.ts";
export {
  constant,
  cosine,
  type CosineOptions,
  DEFAULT_LR,
  jagged,
  type JaggedOptions,
  type Schedule,
  wsd,
  type WsdOptions,
} from "./schedule.ts";
