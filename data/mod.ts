/**
 * Data pipeline for bpt: text and token sources, tokenizers, and loaders that turn them
 * into batches of token ids (plain Int32Arrays of shape (B, T)) for training and evaluation.
 *
 * ```ts
 * import { createLoader } from "./data/mod.ts";
 * const loader = await createLoader({ source: "brown", tokenizer: "gpt2", batch: 8, seqLen: 256 });
 * const { inputs, targets } = await loader.next();
 * const saved = loader.state(); // JSON; pass as `state` to continue after this batch
 * ```
 *
 * @module
 */
export { DataError } from "./errors.ts";
export { loadTokenizer, type Tokenizer, TOKENIZER_NAMES } from "./tokenizer.ts";
export {
  type DataSource,
  type DocumentStats,
  openSource,
  type SourceOptions,
  type Split,
  type TextSource,
  type TokenSource,
} from "./source.ts";
export { type Batch, createLoader, type Loader, type LoaderOptions } from "./loader.ts";
export type { LoaderState } from "./pipeline.ts";
export { type BinShardInfo, BinShardWriter, readBinHeader, readBinTokens } from "./bin_shard.ts";
export { FINEWEB_EDU_10BT_URLS } from "./parquet_source.ts";
export { detagBrown } from "./brown.ts";
export { writeShards, type WriteShardsOptions, type WriteShardsResult } from "./write_shards.ts";
export { benchData, type DataBenchResult } from "./bench.ts";
