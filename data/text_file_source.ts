/**
 * Documents from local JSONL files (one JSON object per line, text in a field) and plain
 * text files (documents separated by blank lines, as llm.c splits Tiny Shakespeare).
 * Files are streamed, and a block's cursor is its byte offset so a loader resumes by seeking.
 */
import { DataError } from "./errors.ts";
import {
  decodeDocument,
  DEFAULT_VAL_DOCUMENTS,
  documentSplit,
  emptyStats,
  type SourceOptions,
  type TextSource,
} from "./source.ts";

/** Documents per block, the unit shuffled by a loader. */
const BLOCK_DOCUMENTS = 1024;
const READ_BYTES = 1 << 20;

/** A line's bytes without its "\n" and the byte offset where it starts. */
interface Line {
  bytes: Uint8Array;
  offset: number;
}

/** Yields the lines of `path` from byte `start`, reading 1 MiB at a time. */
export async function* readLines(path: string, start: number): AsyncGenerator<Line> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    throw new DataError(`file ${path} cannot be opened (${(e as Error).message}); check the path`);
  }
  try {
    await file.seek(start, Deno.SeekMode.Start);
    let pending = new Uint8Array(0);
    let pendingOffset = start;
    const chunk = new Uint8Array(READ_BYTES);
    for (;;) {
      const n = await file.read(chunk);
      if (n === null) break;
      const joined = new Uint8Array(pending.length + n);
      joined.set(pending);
      joined.set(chunk.subarray(0, n), pending.length);
      let lineStart = 0;
      for (let i = joined.indexOf(10); i >= 0; i = joined.indexOf(10, lineStart)) {
        yield { bytes: joined.subarray(lineStart, i), offset: pendingOffset + lineStart };
        lineStart = i + 1;
      }
      pendingOffset += lineStart;
      pending = joined.slice(lineStart);
    }
    if (pending.length > 0) yield { bytes: pending, offset: pendingOffset };
  } finally {
    file.close();
  }
}

/** Opens JSONL (`kind` "jsonl") or plain text (`kind` "txt") files. */
export function openTextFileSource(
  spec: string,
  files: readonly string[],
  kind: "jsonl" | "txt",
  options: SourceOptions,
): TextSource {
  const stats = emptyStats();
  const field = options.textColumn ?? "text";
  const split = documentSplit(files, options.valDocuments ?? DEFAULT_VAL_DOCUMENTS);
  const documents = kind === "jsonl" ? jsonlDocuments : textDocuments;

  async function* readBlocks(shard: number, cursor: number, docBase: number) {
    let docs: string[] = [];
    let blockCursor = cursor;
    const reader: AsyncGenerator<RawDocument> = documents(files[shard], cursor, field);
    for await (const doc of reader) {
      if (docs.length === BLOCK_DOCUMENTS) {
        yield { cursor: blockCursor, docBase, next: doc.offset, docs };
        docBase += docs.length;
        docs = [];
        blockCursor = doc.offset;
      }
      const text = decodeDocument(doc.bytes, stats);
      if (doc.invalidUtf8) stats.invalidUtf8Documents++;
      docs.push(text);
    }
    if (docs.length > 0) yield { cursor: blockCursor, docBase, next: null, docs };
  }

  return {
    kind: "text",
    spec,
    shards: files,
    stats,
    shardRole: split.shardRole,
    splitOf: split.splitOf,
    valEnd: split.valEnd,
    splitRule: split.description,
    readBlocks,
  };
}

/** A document's bytes; `invalidUtf8` marks a JSONL line whose bytes were already repaired. */
interface RawDocument extends Line {
  invalidUtf8?: boolean;
}

/** Yields each line's text field as UTF-8 bytes, with the line's byte offset. */
async function* jsonlDocuments(
  path: string,
  start: number,
  field: string,
): AsyncGenerator<RawDocument> {
  const strict = new TextDecoder("utf-8", { fatal: true });
  const lenient = new TextDecoder();
  const encoder = new TextEncoder();
  for await (const line of readLines(path, start)) {
    // The line is decoded before JSON parsing, so invalid UTF-8 is detected here.
    let raw: string;
    let invalidUtf8 = false;
    try {
      raw = strict.decode(line.bytes);
    } catch {
      raw = lenient.decode(line.bytes);
      invalidUtf8 = true;
    }
    if (raw.trim().length === 0) continue;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      const where = await describeLine(path, line.offset);
      const reason = (e as Error).message;
      throw new DataError(
        `${path}: ${where} is not valid JSON (${reason}); fix or remove the line`,
      );
    }
    const text = (value as Record<string, unknown> | null)?.[field];
    if (typeof text !== "string") {
      const where = await describeLine(path, line.offset);
      throw new DataError(
        `${path}: ${where} has no string "${field}" field; give every line one or set textColumn (tokenize --text-column)`,
      );
    }
    yield { bytes: encoder.encode(text), offset: line.offset, invalidUtf8 };
  }
}

/**
 * Returns "line N (byte B)" for the line that starts at byte `offset` of `path`. A reader
 * that resumed mid-file does not know N, so the file is scanned up to `offset`, which
 * happens only on this error path.
 */
async function describeLine(path: string, offset: number): Promise<string> {
  let newlines = 0;
  for await (const line of readLines(path, 0)) {
    if (line.offset >= offset) break;
    newlines++;
  }
  return `line ${newlines + 1} (byte ${offset})`;
}

/** Yields blank-line-separated paragraphs as documents, with each paragraph's byte offset. */
async function* textDocuments(path: string, start: number): AsyncGenerator<Line> {
  let lines: Uint8Array[] = [];
  let offset = start;
  const flush = (): Line => {
    const size = lines.reduce((sum, line) => sum + line.length + 1, -1);
    const bytes = new Uint8Array(size);
    let at = 0;
    for (const line of lines) {
      if (at > 0) bytes[at++] = 10;
      bytes.set(line, at);
      at += line.length;
    }
    lines = [];
    return { bytes, offset };
  };
  for await (const line of readLines(path, start)) {
    const bytes = line.bytes.at(-1) === 13 ? line.bytes.subarray(0, -1) : line.bytes;
    const blank = bytes.every((b) => b === 32 || b === 9);
    if (blank) {
      if (lines.length > 0) yield flush();
      continue;
    }
    if (lines.length === 0) offset = line.offset;
    lines.push(bytes.slice());
  }
  if (lines.length > 0) yield flush();
}
