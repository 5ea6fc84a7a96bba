/**
 * `writeShards`: tokenizes a text source into llm.c .bin shards, the work behind
 * `deno task tokenize`. The layout follows llm.c's dev/data/fineweb.py: one validation shard
 * "<name>_val_000000.bin" first, then "<name>_train_000001.bin" and up, every train shard
 * exactly `shardTokens` long except the last, each document preceded by the end-of-text id.
 */
import { BinShardWriter } from "./bin_shard.ts";
import { DataError } from "./errors.ts";
import type { DocumentStats, Split, TextSource } from "./source.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Options for `writeShards`. */
export interface WriteShardsOptions {
  source: TextSource;
  tokenizer: Tokenizer;
  /** Output directory, created if missing. */
  outDir: string;
  /** File name prefix of the shards. */
  name: string;
  /** Tokens per train shard. */
  shardTokens: number;
  /**
   * Maximum tokens of the validation shard, which is shorter when the validation split is.
   * Once the shard is full, later held-out documents of mixed shards go to train, and
   * shards named as validation are skipped. 0 writes no validation shard.
   */
  valTokens: number;
  /** Stop after this many train tokens (default: the whole source). */
  maxTokens?: number;
  /** Called after each document with the tokens written so far and the split being written. */
  onProgress?: (split: Split, tokens: number) => void;
  /** Checked between documents; when it returns true, the run stops and removes its output. */
  cancelled?: () => boolean;
}

/** Summary of a `writeShards` run: files, token counts and document counts. */
export interface WriteShardsResult {
  files: string[];
  valTokens: number;
  trainTokens: number;
  stats: DocumentStats;
}

/** Writes numbered shards of a fixed size, rolling over to a new file when one is full. */
class ShardSeries {
  readonly files: string[] = [];
  tokens = 0;
  #writer: BinShardWriter | null = null;
  #index: number;

  constructor(
    readonly outDir: string,
    readonly prefix: string,
    firstIndex: number,
    readonly shardTokens: number,
    readonly bytesPerToken: 2 | 4,
  ) {
    this.#index = firstIndex;
  }

  async push(ids: number[]): Promise<void> {
    let at = 0;
    while (at < ids.length) {
      if (!this.#writer) {
        const path = `${this.outDir}/${this.prefix}_${String(this.#index++).padStart(6, "0")}.bin`;
        this.#writer = await fileErrors(
          path,
          () => BinShardWriter.create(path, this.bytesPerToken),
        );
      }
      const writer = this.#writer;
      const take = Math.min(ids.length - at, this.shardTokens - writer.tokens);
      await fileErrors(writer.tempPath, () => writer.write(ids.slice(at, at + take)));
      at += take;
      this.tokens += take;
      if (this.#writer.tokens === this.shardTokens) await this.#close();
    }
  }

  async #close(): Promise<void> {
    const writer = this.#writer!;
    this.#writer = null;
    await fileErrors(writer.path, () => writer.finish());
    this.files.push(writer.path);
  }

  async finish(): Promise<void> {
    if (this.#writer && this.#writer.tokens > 0) await this.#close();
    else await this.abort();
  }

  /** Removes the unfinished shard's temporary file. */
  async abort(): Promise<void> {
    await this.#writer?.abort();
    this.#writer = null;
  }
}

/**
 * Runs a file operation on shard `path` and turns a failure of the file system (permission
 * denied, disk full, a missing directory) into a one-line DataError.
 */
async function fileErrors<T>(path: string, operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (e) {
    if (e instanceof DataError || e instanceof RangeError) throw e;
    throw new DataError(
      `writing shard ${path} failed (${
        (e as Error).message
      }); check that its directory is writable and has free space`,
    );
  }
}

/** Creates `outDir` and its parents, with a DataError that names the directory on failure. */
async function createOutputDirectory(outDir: string): Promise<void> {
  try {
    await Deno.mkdir(outDir, { recursive: true });
  } catch (e) {
    // Deno's message ends in " (os error N): mkdir 'path'", which repeats the path.
    const reason = e instanceof Deno.errors.AlreadyExists || e instanceof Deno.errors.NotADirectory
      ? "a file is in the way"
      : (e as Error).message.replace(/ \(os error \d+\).*$/, "");
    throw new DataError(
      `output directory ${outDir} cannot be created (${reason}); pass a writable directory path`,
    );
  }
}

/**
 * Tokenizes `source` into shards. On any error, or when `cancelled` returns true, the run
 * deletes every file it wrote, temporary or finished, and rethrows or throws a DataError.
 */
export async function writeShards(options: WriteShardsOptions): Promise<WriteShardsResult> {
  const { source, tokenizer, outDir, name, shardTokens, valTokens } = options;
  if (!Number.isInteger(shardTokens) || shardTokens < 1) {
    throw new DataError(`shard size ${shardTokens} must be a positive integer number of tokens`);
  }
  if (!Number.isInteger(valTokens) || valTokens < 0) {
    throw new DataError(`valTokens ${valTokens} is invalid; pass 0 or a positive integer`);
  }
  const maxTokens = options.maxTokens;
  if (maxTokens !== undefined && !(Number.isInteger(maxTokens) && maxTokens > 0)) {
    throw new DataError(`maxTokens ${maxTokens} is invalid; pass a positive integer or omit it`);
  }
  if (name === "" || /[/\\]/.test(name)) {
    throw new DataError(
      `shard name prefix (--name) "${name}" is invalid; pass a file name without a path separator`,
    );
  }
  const bytesPerToken = tokenizer.vocabSize > 65536 ? 4 : 2;
  await createOutputDirectory(outDir);
  const val = new ShardSeries(outDir, `${name}_val`, 0, Math.max(1, valTokens), bytesPerToken);
  const train = new ShardSeries(outDir, `${name}_train`, 1, shardTokens, bytesPerToken);
  const maxTrain = maxTokens ?? Infinity;

  const series = { val, train };
  const limits = { val: valTokens, train: maxTrain };
  const full = (split: Split) => series[split].tokens >= limits[split];

  // One pass in file order writes both splits, so each document is read and counted once.
  try {
    for (let shard = 0; shard < source.shards.length && !full("train"); shard++) {
      if (source.shardRole(shard) === "val" && full("val")) continue;
      for await (const block of source.readBlocks(shard, 0, 0)) {
        for (let i = 0; i < block.docs.length; i++) {
          const doc = block.docs[i];
          let split = source.splitOf(shard, block.docBase + i);
          // Past --val-tokens, held-out documents of a mixed shard are train data.
          if (split === "val" && full("val") && source.shardRole(shard) === "mixed") {
            split = "train";
          }
          if (doc === "" || full(split)) continue;
          if (options.cancelled?.()) {
            throw new DataError(`tokenize of ${source.spec} was cancelled; its output was removed`);
          }
          const ids = [tokenizer.eotId, ...tokenizer.encode(doc)];
          await series[split].push(ids.slice(0, limits[split] - series[split].tokens));
          options.onProgress?.(split, series[split].tokens);
        }
        if (full("train")) break;
      }
    }
    await val.finish();
    await train.finish();
  } catch (e) {
    await val.abort();
    await train.abort();
    for (const file of [...val.files, ...train.files]) await Deno.remove(file).catch(() => {});
    throw e;
  }
  if (train.tokens === 0) {
    for (const file of [...val.files, ...train.files]) await Deno.remove(file).catch(() => {});
    const { documents, emptyDocuments, filteredDocuments } = source.stats;
    throw new DataError(
      `source ${source.spec} has no train documents (documents read ${documents}, empty ${emptyDocuments}, filtered ${filteredDocuments}): ${source.splitRule}; use a larger source or looser filters`,
    );
  }
  return {
    files: [...val.files, ...train.files],
    valTokens: val.tokens,
    trainTokens: train.tokens,
    stats: { ...source.stats },
  };
}
