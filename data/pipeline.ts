/**
 * The batch pipeline: turns a source into batches of B sequences of T+1 tokens, split
 * across data-parallel ranks, shuffled by seed, with a small state to resume from.
 *
 * Text sources: each document becomes [eot, ...encode(text)] (the end-of-text token goes
 * before each document, as in llm.c's fineweb.py), and the documents are packed into one
 * stream. Sequence k covers stream tokens [k*T, k*T + T], so consecutive sequences share one
 * token and every token after the first is a target exactly once.
 * Token sources: sequence k of a shard covers tokens [k*T, k*T + T] of that shard, and a
 * shard's last partial sequence is dropped.
 *
 * Shuffling (train split): the shard order is shuffled each epoch, and so is the order of
 * this rank's documents or sequences inside each block (a parquet row group, 1024 JSONL
 * documents, the whole Brown Corpus, or 2^20 tokens of a .bin shard). Each shuffle's seed
 * is derived from (seed, epoch, shard, block), so a resumed run reproduces it without
 * storing generator state. The validation split is read in file order.
 *
 * Data parallelism: among the documents or sequences of a block that belong to the split,
 * the k-th goes to rank k mod worldSize, so ranks see disjoint data. Every rank reads every
 * block of text sources.
 */
import { DataError } from "./errors.ts";
import { deriveSeed, hashString, Rng } from "./prng.ts";
import type { DataSource, Split, TextSource, TokenSource } from "./source.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Position of a loader in its stream, JSON-serialisable; the batch after it is the next one. */
export interface LoaderState {
  version: 1;
  /** Settings the state belongs to; a loader with other settings rejects it. */
  config: {
    source: string;
    split: Split;
    batch: number;
    seqLen: number;
    seed: number;
    rank: number;
    worldSize: number;
  };
  epoch: number;
  /** Position in this epoch's shard order. */
  shard: number;
  /** Cursor of the current block in its shard (row group, byte offset, or block index). */
  block: number;
  /** Shard-level index of the current block's first document (text sources). */
  docBase: number;
  /** Position in the block's shuffled list of this rank's documents or sequences. */
  item: number;
  /** Tokens of the current document already packed (text sources). */
  offset: number;
  /** Tokens packed but not yet emitted: the token shared with the next sequence (text sources). */
  carry: number[];
}

/** Settings of a pipeline run. */
export interface PipelineConfig {
  source: DataSource;
  /** Needed for text sources; for token sources it bounds the ids. */
  tokenizer?: Tokenizer;
  batch: number;
  seqLen: number;
  seed: number;
  rank: number;
  worldSize: number;
  split: Split;
}

/** One batch: B*T input ids and the B*T ids that follow each of them, row-major (B, T). */
export interface StatefulBatch {
  inputs: Int32Array;
  targets: Int32Array;
  /** Loader state right after this batch. */
  state: LoaderState;
}

/** Tokens per block of a .bin shard: 2 MiB of uint16 ids read at a time. */
const BIN_BLOCK_TOKENS = 1 << 20;

/** Settings a state is tied to. */
export type StateConfig = LoaderState["config"];

/** Returns the state at the start of the stream of a loader over `source` with `settings`. */
export function freshState(source: string, settings: Omit<StateConfig, "source">): LoaderState {
  const { split, batch, seqLen, seed, rank, worldSize } = settings;
  return {
    version: 1,
    config: { source, split, batch, seqLen, seed, rank, worldSize },
    epoch: 0,
    shard: 0,
    block: 0,
    docBase: 0,
    item: 0,
    offset: 0,
    carry: [],
  };
}

/** Returns the state of a fresh pipeline with `config`'s settings. */
export function initialState(config: PipelineConfig): LoaderState {
  return freshState(config.source.spec, config);
}

/** Throws unless `state` was saved by a pipeline with the same settings as `config`. */
export function checkState(state: LoaderState, config: PipelineConfig): void {
  if (state?.version !== 1 || typeof state.config !== "object") {
    throw new DataError(
      `loader state has version ${state?.version}, expected 1; pass a state returned by loader.state()`,
    );
  }
  const expected = initialState(config).config;
  for (const key of Object.keys(expected) as (keyof typeof expected)[]) {
    if (state.config[key] !== expected[key]) {
      throw new DataError(
        `loader state was saved with ${key} ${state.config[key]}, but the loader has ${key} ${
          expected[key]
        }; resume with the original settings`,
      );
    }
  }
}

/** Yields batches forever, epoch after epoch, starting after `state` (or at the beginning). */
export function batches(
  config: PipelineConfig,
  state?: LoaderState,
): AsyncGenerator<StatefulBatch> {
  const start = state ? structuredClone(state) : initialState(config);
  if (state) checkState(state, config);
  if (config.source.kind === "tokens") return tokenBatches(config, config.source, start);
  if (!config.tokenizer) {
    throw new DataError(
      `source ${config.source.spec} contains text, so a tokenizer is missing; pass one such as "gpt2"`,
    );
  }
  return textBatches(config, config.source, config.tokenizer, start);
}

/** Shards that hold data of `split`, in this epoch's order. */
function shardOrder(config: PipelineConfig, roles: (Split | "mixed")[], epoch: number): number[] {
  const order = roles.flatMap((role, i) => (role === config.split || role === "mixed" ? [i] : []));
  if (config.split === "train") new Rng(deriveSeed(config.seed, epoch)).shuffle(order);
  return order;
}

function blockRng(config: PipelineConfig, epoch: number, shardName: string, block: number): Rng {
  return new Rng(deriveSeed(config.seed, epoch, hashString(shardName), block));
}

/**
 * Returns the error for a split that yields nothing in a whole epoch. Text sources pack
 * documents across epochs, so only a split with no documents at all ends here. Token
 * sources also end here when every shard of the split is shorter than one sequence.
 */
function noData(config: PipelineConfig): DataError {
  const { source, split, rank, worldSize } = config;
  const ranks = worldSize > 1 ? ` for rank ${rank} of ${worldSize}` : "";
  let counts = "";
  let sequence = "";
  if (source.kind === "text") {
    // The counts include earlier epochs and other loaders of the same source object.
    const { documents, emptyDocuments, filteredDocuments } = source.stats;
    counts =
      ` (documents read ${documents}, empty ${emptyDocuments}, filtered ${filteredDocuments})`;
  } else {
    sequence = `, and a sequence needs ${config.seqLen + 1} tokens of one shard`;
  }
  const fix = worldSize > 1 ? "use a larger source or fewer ranks" : "use a larger source";
  return new DataError(
    `source ${source.spec} has no ${split} data${ranks}${counts}: ${source.splitRule}${sequence}; ${fix}`,
  );
}

/** Collects sequences into batches of (B, T). */
class BatchBuilder {
  inputs: Int32Array;
  targets: Int32Array;
  rows = 0;

  constructor(readonly batch: number, readonly seqLen: number) {
    this.inputs = new Int32Array(batch * seqLen);
    this.targets = new Int32Array(batch * seqLen);
  }

  /** Adds a sequence of T+1 ids; returns true when the batch is full. */
  add(
    sequence: ArrayLike<number> & { subarray(start: number, end: number): ArrayLike<number> },
  ): boolean {
    const T = this.seqLen;
    this.inputs.set(sequence.subarray(0, T), this.rows * T);
    this.targets.set(sequence.subarray(1, T + 1), this.rows * T);
    this.rows++;
    return this.rows === this.batch;
  }

  /** Returns the full batch and starts a new one. */
  take(): { inputs: Int32Array; targets: Int32Array } {
    const full = { inputs: this.inputs, targets: this.targets };
    this.inputs = new Int32Array(this.batch * this.seqLen);
    this.targets = new Int32Array(this.batch * this.seqLen);
    this.rows = 0;
    return full;
  }
}

async function* textBatches(
  config: PipelineConfig,
  source: TextSource,
  tokenizer: Tokenizer,
  st: LoaderState,
): AsyncGenerator<StatefulBatch> {
  const T = config.seqLen;
  const roles = source.shards.map((_, i) => source.shardRole(i));
  const builder = new BatchBuilder(config.batch, T);
  const sequence = new Int32Array(T + 1);
  let filled = st.carry.length;
  sequence.set(st.carry);

  for (;; st.epoch++, st.shard = 0) {
    const order = shardOrder(config, roles, st.epoch);
    if (order.length === 0) throw noData(config);
    const wholeEpoch = st.shard === 0 && st.block === 0 && st.item === 0 && st.offset === 0;
    let epochTokens = 0;

    for (; st.shard < order.length; st.shard++, st.block = 0, st.docBase = 0) {
      const shard = order[st.shard];
      const name = source.shards[shard];
      for await (const block of source.readBlocks(shard, st.block, st.docBase)) {
        // Validation documents sit at the start of a mixed shard, so the rest is not read.
        if (config.split === "val" && block.docBase >= source.valEnd(shard)) break;
        st.block = block.cursor;
        st.docBase = block.docBase;
        const inSplit: string[] = [];
        block.docs.forEach((doc, i) => {
          if (doc !== "" && source.splitOf(shard, block.docBase + i) === config.split) {
            inSplit.push(doc);
          }
        });
        const mine = inSplit.filter((_, k) => k % config.worldSize === config.rank);
        if (config.split === "train") blockRng(config, st.epoch, name, block.cursor).shuffle(mine);

        for (; st.item < mine.length; st.item++, st.offset = 0) {
          const tokens = tokenizer.encode(mine[st.item]);
          const docLength = tokens.length + 1;
          epochTokens += docLength - st.offset;
          // Position st.offset counts the leading end-of-text token as position 0.
          for (let pos = st.offset; pos < docLength;) {
            if (pos === 0) {
              sequence[filled++] = tokenizer.eotId;
              pos++;
            } else {
              const take = Math.min(T + 1 - filled, docLength - pos);
              for (let i = 0; i < take; i++) sequence[filled + i] = tokens[pos - 1 + i];
              filled += take;
              pos += take;
            }
            if (filled < T + 1) continue;
            const full = builder.add(sequence);
            sequence[0] = sequence[T];
            filled = 1;
            if (!full) continue;
            const done = pos === docLength;
            yield {
              ...builder.take(),
              state: {
                ...st,
                config: { ...st.config },
                item: done ? st.item + 1 : st.item,
                offset: done ? 0 : pos,
                carry: [sequence[0]],
              },
            };
          }
        }
        st.item = 0;
        st.offset = 0;
      }
    }
    if (wholeEpoch && epochTokens === 0) throw noData(config);
  }
}

async function* tokenBatches(
  config: PipelineConfig,
  source: TokenSource,
  st: LoaderState,
): AsyncGenerator<StatefulBatch> {
  const T = config.seqLen;
  const perBlock = Math.max(1, Math.floor(BIN_BLOCK_TOKENS / T));
  const roles = source.shards.map((_, i) => source.shardRole(i));
  const builder = new BatchBuilder(config.batch, T);
  const vocabSize = config.tokenizer?.vocabSize ?? Infinity;

  for (;; st.epoch++, st.shard = 0) {
    const order = shardOrder(config, roles, st.epoch);
    const wholeEpoch = st.shard === 0 && st.block === 0 && st.item === 0;
    let epochSequences = 0;

    for (; st.shard < order.length; st.shard++, st.block = 0) {
      const shard = order[st.shard];
      const info = source.shards[shard];
      const sequences = Math.max(0, Math.floor((info.tokens - 1) / T));
      const blocks = Math.ceil(sequences / perBlock);
      for (; st.block < blocks; st.block++, st.item = 0) {
        const first = st.block * perBlock;
        if (config.split === "val" && first * T >= source.valEnd(shard)) break;
        const count = Math.min(perBlock, sequences - first);
        const inSplit: number[] = [];
        for (let j = 0; j < count; j++) {
          if (source.splitOf(shard, (first + j) * T) === config.split) inSplit.push(j);
        }
        const mine = inSplit.filter((_, k) => k % config.worldSize === config.rank);
        epochSequences += mine.length;
        if (mine.length === 0) continue;
        if (config.split === "train") blockRng(config, st.epoch, info.path, st.block).shuffle(mine);

        const ids = await source.readTokens(shard, first * T, count * T + 1);
        if (vocabSize < Infinity) checkIds(ids, vocabSize, info.path, first * T);
        for (; st.item < mine.length; st.item++) {
          const j = mine[st.item];
          if (!builder.add(ids.subarray(j * T, j * T + T + 1))) continue;
          yield {
            ...builder.take(),
            state: { ...st, config: { ...st.config }, item: st.item + 1, carry: [] },
          };
        }
      }
    }
    if (wholeEpoch && epochSequences === 0) throw noData(config);
  }
}

function checkIds(
  ids: Uint16Array | Uint32Array,
  vocabSize: number,
  path: string,
  start: number,
): void {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] >= vocabSize) {
      throw new DataError(
        `token shard ${path} has id ${ids[i]} at token ${
          start + i
        }, outside the tokenizer's ${vocabSize} ids; use the tokenizer the shard was written with`,
      );
    }
  }
}
