/**
 * Model building blocks: the linear-layer methods (Full, BPT, LoRA, ReLoRA,
 * HyperAdapt) with the trainable-parameter rule, and the model configurations.
 *
 * @module
 */

export * from "./config.ts";
export * from "./params.ts";
export * from "./linear.ts";
export * from "./rank.ts";
export * from "./model.ts";
export * from "./checkpoint.ts";
