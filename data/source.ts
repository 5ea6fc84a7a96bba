/**
 * Data sources: what a loader reads documents or token ids from, and `openSource` to
 * open one from a spec string.
 */
import { openBrownSource } from "./brown.ts";
import { openBinSource } from "./bin_source.ts";
import { DataError } from "./errors.ts";
import { FINEWEB_EDU_10BT_URLS, openParquetSource } from "./parquet_source.ts";
import { openTextFileSource } from "./text_file_source.ts";
import type { BinShardInfo } from "./bin_shard.ts";

/** The part of a source a loader reads: training data or held-out validation data. */
export type Split = "train" | "val";

/** Counts of documents a text source has read, skipped or repaired. */
export interface DocumentStats {
  /** Documents read, including skipped ones. */
  documents: number;
  /** Documents skipped because they were empty or whitespace only. */
  emptyDocuments: number;
  /** Documents with invalid UTF-8, kept with each bad sequence replaced by U+FFFD. */
  invalidUtf8Documents: number;
  /** Documents dropped by the score filters. */
  filteredDocuments: number;
}

/** A run of documents that a text source reads at once, the unit of in-shard shuffling. */
export interface DocumentBlock {
  /** Position of this block in its shard: a byte offset, a row-group index, or 0. */
  cursor: number;
  /** Shard-level index of `docs[0]`, counting skipped documents too. */
  docBase: number;
  /** Cursor of the next block, or null after the last block of the shard. */
  next: number | null;
  /** Document texts; "" marks a skipped document so that indices stay stable. */
  docs: string[];
}

/** A source of documents (parquet, JSONL, plain text, the Brown Corpus) to tokenize. */
export interface TextSource {
  readonly kind: "text";
  readonly spec: string;
  /** Shard names (paths or URLs) in canonical order. */
  readonly shards: readonly string[];
  readonly stats: DocumentStats;
  /** Returns the split all documents of a shard belong to, or "mixed". */
  shardRole(shard: number): Split | "mixed";
  /** Returns the split of document `docIndex` of `shard`. */
  splitOf(shard: number, docIndex: number): Split;
  /** Returns an index from which on no document of `shard` is validation, or Infinity. */
  valEnd(shard: number): number;
  /** A sentence that states which documents form the validation split, for error messages. */
  readonly splitRule: string;
  /** Reads the blocks of `shard`, starting at the block with `cursor` whose first document is `docBase`. */
  readBlocks(shard: number, cursor: number, docBase: number): AsyncGenerator<DocumentBlock>;
}

/** A source of already tokenized ids: llm.c .bin shards. */
export interface TokenSource {
  readonly kind: "tokens";
  readonly spec: string;
  readonly shards: readonly BinShardInfo[];
  /** Returns the split all tokens of a shard belong to, or "mixed". */
  shardRole(shard: number): Split | "mixed";
  /** Returns the split of the sequence that starts at token `position` of `shard`. */
  splitOf(shard: number, position: number): Split;
  /** Returns a token position from which on no sequence of `shard` is validation, or Infinity. */
  valEnd(shard: number): number;
  /** A sentence that states which sequences form the validation split, for error messages. */
  readonly splitRule: string;
  /** Reads `count` token ids of `shard` starting at token `start`. */
  readTokens(shard: number, start: number, count: number): Promise<Uint16Array | Uint32Array>;
}

export type DataSource = TextSource | TokenSource;

/** Options for `openSource`. */
export interface SourceOptions {
  /** Parquet only: drop documents whose `int_score` is below this (FineWeb-Edu scores 0 to 5). */
  minIntScore?: number;
  /** Parquet only: drop documents whose `score` is below this. */
  minScore?: number;
  /** Parquet and JSONL: the column or field that contains document text (default "text"). */
  textColumn?: string;
  /**
   * When no shard is named for a split, every 20th document of the first shard is held out
   * for validation until this many are held out (default 500, which covers the first 10,000
   * documents). Infinity holds out every 20th document of the whole first shard.
   */
  valDocuments?: number;
  /**
   * Same for .bin shards: sequences starting in the first `valTokens` tokens of the first
   * shard form the validation split (default 65,536).
   */
  valTokens?: number;
}

/**
 * Opens a data source from `spec`. Names: "brown" (the Brown Corpus, bundled) and
 * "fineweb-edu" (the FineWeb-Edu sample-10BT parquet shards over HTTPS). URLs: an http(s)
 * URL of a parquet file. Paths: a .parquet, .bin, .jsonl or .txt file, a directory of such
 * files, or a glob with wildcards in its last component ("data/*.parquet").
 */
export async function openSource(spec: string, options: SourceOptions = {}): Promise<DataSource> {
  if (spec === "brown") return openBrownSource();
  if (spec === "fineweb-edu") return await openParquetSource(spec, FINEWEB_EDU_10BT_URLS, options);
  if (/^https?:\/\//.test(spec)) {
    if (!/\.parquet(\?|$)/.test(spec)) {
      throw new DataError(
        `URL ${spec} does not name a .parquet file; only parquet is read over HTTP, download other formats and pass a path`,
      );
    }
    return await openParquetSource(spec, [spec], options);
  }

  const files = await expandPath(spec);
  const kinds = new Set(files.map(fileKind));
  if (kinds.size > 1) {
    throw new DataError(
      `source ${spec} mixes file types (${[...kinds].join(", ")}); point it at files of one type`,
    );
  }
  const kind = [...kinds][0];
  if (kind === "parquet") return await openParquetSource(spec, files, options);
  if (kind === "bin") return await openBinSource(spec, files, options);
  return openTextFileSource(spec, files, kind as "jsonl" | "txt", options);
}

const EXTENSIONS: Record<string, string> = {
  ".parquet": "parquet",
  ".bin": "bin",
  ".jsonl": "jsonl",
  ".txt": "txt",
};

function fileKind(path: string): string {
  const ext = path.slice(path.lastIndexOf(".")).toLowerCase();
  const kind = EXTENSIONS[ext];
  if (kind === undefined) {
    throw new DataError(
      `file ${path} has an unknown extension; use .parquet, .bin, .jsonl or .txt`,
    );
  }
  return kind;
}

/** Lists the files a path, directory or glob names, sorted so shard order is stable. */
async function expandPath(spec: string): Promise<string[]> {
  const slash = spec.lastIndexOf("/");
  const base = spec.slice(slash + 1);
  if (/[*?[]/.test(base)) {
    const dir = slash >= 0 ? spec.slice(0, slash) || "/" : ".";
    const pattern = globToRegExp(base);
    const files = (await listDirectory(dir, spec)).filter((name) => pattern.test(name));
    if (files.length === 0) {
      throw new DataError(`glob ${spec} matches no files; check the pattern`);
    }
    return files.map((name) => `${dir}/${name}`);
  }

  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(spec);
  } catch {
    throw new DataError(
      `data source ${spec} not found; use "brown", "fineweb-edu", a URL, or an existing file, directory or glob`,
    );
  }
  if (!info.isDirectory) return [spec];
  const dir = spec.replace(/\/+$/, "");
  const files = (await listDirectory(dir, spec)).filter((name) =>
    EXTENSIONS[name.slice(name.lastIndexOf(".")).toLowerCase()] !== undefined
  );
  if (files.length === 0) {
    throw new DataError(
      `directory ${spec} has no .parquet, .bin, .jsonl or .txt files; point it at a data directory`,
    );
  }
  return files.map((name) => `${dir}/${name}`);
}

async function listDirectory(dir: string, spec: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) if (entry.isFile) names.push(entry.name);
  } catch {
    throw new DataError(`directory ${dir} of source ${spec} cannot be read; check the path`);
  }
  return names.sort();
}

function globToRegExp(glob: string): RegExp {
  let pattern = "";
  for (const ch of glob) {
    if (ch === "*") pattern += "[^/]*";
    else if (ch === "?") pattern += "[^/]";
    else if (ch === "[" || ch === "]") pattern += ch;
    else pattern += ch.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return new RegExp(`^${pattern}$`);
}

/**
 * Returns the split a shard name declares: llm.c and this package's tokenize write
 * "<name>_val_<n>.bin" and "<name>_train_<n>.bin".
 */
export function namedSplit(name: string): Split | null {
  const base = name.slice(name.lastIndexOf("/") + 1).toLowerCase();
  if (/(^|[^a-z])(val|valid|validation)([^a-z]|$)/.test(base)) return "val";
  if (/(^|[^a-z])train([^a-z]|$)/.test(base)) return "train";
  return null;
}

/** Assignment of a source's shards, documents or token positions to the train and val splits. */
export interface SplitRule {
  shardRole(shard: number): Split | "mixed";
  splitOf(shard: number, index: number): Split;
  valEnd(shard: number): number;
  /** A sentence that states the rule, for error messages. */
  description: string;
}

/** Every VAL_STRIDE-th document (index 19, 39, ...) is held out for validation. */
export const VAL_STRIDE = 20;
/** Default number of held-out documents of a text source without named splits. */
export const DEFAULT_VAL_DOCUMENTS = 500;

/**
 * Builds the split rule of text sources without a split of their own. If any shard is
 * named as validation, names decide. Otherwise every VAL_STRIDE-th document of the first
 * shard is validation until `valDocuments` are held out. The rule depends only on a
 * document's index, so a streamed source needs no document count in advance, and a source
 * of a few hundred documents still keeps 95% of them for training.
 */
export function documentSplit(names: readonly string[], valDocuments: number): SplitRule {
  const named = nameSplit(names);
  if (named) return named;
  if (!(valDocuments >= 0)) {
    throw new DataError(`valDocuments ${valDocuments} is invalid; pass 0 or more documents`);
  }
  // Held-out documents are indices VAL_STRIDE - 1, 2 * VAL_STRIDE - 1, ..., so none is at or
  // after index VAL_STRIDE * valDocuments.
  const end = VAL_STRIDE * valDocuments;
  const limit = valDocuments === Infinity ? "" : `, up to ${valDocuments} documents`;
  return {
    shardRole: (shard) => (shard === 0 && end > 0 ? "mixed" : "train"),
    splitOf: (shard, index) =>
      shard === 0 && index < end && index % VAL_STRIDE === VAL_STRIDE - 1 ? "val" : "train",
    valEnd: (shard) => (shard === 0 ? end : 0),
    description: end === 0
      ? "the validation split is empty (valDocuments 0)"
      : `the validation split is every ${VAL_STRIDE}th document of the first file${limit}`,
  };
}

/**
 * Builds the split rule of token shards without a split of their own. If any shard is
 * named as validation, names decide. Otherwise sequences that start in the first
 * `valTokens` tokens of the first shard are validation.
 */
export function tokenSplit(names: readonly string[], valTokens: number): SplitRule {
  const named = nameSplit(names);
  if (named) return named;
  return {
    shardRole: (shard) => (shard === 0 && valTokens > 0 ? "mixed" : "train"),
    splitOf: (shard, position) => (shard === 0 && position < valTokens ? "val" : "train"),
    valEnd: (shard) => (shard === 0 ? valTokens : 0),
    description:
      `the validation split is the sequences that start in the first ${valTokens} tokens of the first shard`,
  };
}

/** Returns the split rule given by shard names, or null if no shard is named as validation. */
function nameSplit(names: readonly string[]): SplitRule | null {
  const named = names.map(namedSplit);
  if (!named.some((split) => split === "val")) return null;
  const roles = named.map((split): Split => split ?? "train");
  return {
    shardRole: (shard) => roles[shard],
    splitOf: (shard) => roles[shard],
    valEnd: (shard) => (roles[shard] === "val" ? Infinity : 0),
    description: `files named with "val", "valid" or "validation" (${
      roles.filter((role) => role === "val").length
    } of ${roles.length}) form the validation split and the other files the train split`,
  };
}

/** Returns a fresh zeroed `DocumentStats`. */
export function emptyStats(): DocumentStats {
  return { documents: 0, emptyDocuments: 0, invalidUtf8Documents: 0, filteredDocuments: 0 };
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const lenientUtf8 = new TextDecoder("utf-8");

/**
 * Decodes a document's UTF-8 bytes and counts it in `stats`. Invalid sequences become U+FFFD
 * and the document is kept. Returns "" for an empty or whitespace-only document.
 */
export function decodeDocument(bytes: Uint8Array, stats: DocumentStats): string {
  stats.documents++;
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    stats.invalidUtf8Documents++;
    text = lenientUtf8.decode(bytes);
  }
  if (text.trim().length === 0) {
    stats.emptyDocuments++;
    return "";
  }
  return text;
}
