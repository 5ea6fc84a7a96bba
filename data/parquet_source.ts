// deno-lint-ignore-file no-import-prefix -- data/ pins its npm dependencies inline, not in the import map.
/**
 * Documents from parquet files in FineWeb's schema (text, id, dump, url, file_path, language,
 * date, language_score, token_count, and for FineWeb-Edu score and int_score), local or over
 * HTTP, read one row group at a time through hyparquet.
 */
import { parquetMetadataAsync, parquetReadObjects } from "npm:hyparquet@1.33.0";
import type { FileMetaData } from "npm:hyparquet@1.33.0";
import { compressors } from "npm:hyparquet-compressors@1.1.2";
import { DataError } from "./errors.ts";
import { openRandomAccess, type RandomAccessFile } from "./random_access.ts";
import {
  decodeDocument,
  DEFAULT_VAL_DOCUMENTS,
  documentSplit,
  emptyStats,
  type SourceOptions,
  type TextSource,
} from "./source.ts";

// NOTE: these URLs were built from the dataset's published layout and were never fetched
// from this package's test machines, which have no route to the Hub.
/**
 * The 14 files (000 to 013, about 2 GB each) of FineWeb-Edu's sample-10BT config on the
 * Hugging Face Hub, dataset HuggingFaceFW/fineweb-edu, path sample/10BT/NNN_00000.parquet.
 */
export const FINEWEB_EDU_10BT_URLS: readonly string[] = Array.from(
  { length: 14 },
  (_, i) =>
    `https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT/${
      String(i).padStart(3, "0")
    }_00000.parquet`,
);

// The footer read fetches this many bytes from the end of the file, then more if the
// metadata is longer. hyparquet's default of 512 KiB would read all of a small file.
const FOOTER_FETCH_BYTES = 64 * 1024;

/** Opens parquet shards lazily: each shard's footer is read when a loader reaches it. */
export function openParquetSource(
  spec: string,
  files: readonly string[],
  options: SourceOptions,
): Promise<TextSource> {
  const stats = emptyStats();
  const textColumn = options.textColumn ?? "text";
  const split = documentSplit(files, options.valDocuments ?? DEFAULT_VAL_DOCUMENTS);

  async function* readBlocks(shard: number, cursor: number, docBase: number) {
    const name = files[shard];
    const file = await openRandomAccess(name);
    try {
      const metadata = await readMetadata(file);
      const columns = selectColumns(name, metadata, textColumn, options);
      let rowStart = 0;
      for (let g = 0; g < cursor; g++) rowStart += Number(metadata.row_groups[g].num_rows);
      for (let group = cursor; group < metadata.row_groups.length; group++) {
        const rowEnd = rowStart + Number(metadata.row_groups[group].num_rows);
        // NOTE: a whole row group's text is kept in memory. The file's writer chose the
        // row-group size, so memory is bounded per row group, not by this reader.
        const rows = await readRows(file, metadata, columns, rowStart, rowEnd);
        const docs = rows.map((row) => {
          const doc = decodeDocument(textBytes(row[textColumn], name, textColumn), stats);
          if (doc !== "" && !passesFilters(row, options)) {
            stats.filteredDocuments++;
            return "";
          }
          return doc;
        });
        const next = group + 1 < metadata.row_groups.length ? group + 1 : null;
        yield { cursor: group, docBase, next, docs };
        docBase += rows.length;
        rowStart = rowEnd;
      }
    } finally {
      file.close();
    }
  }

  return Promise.resolve({
    kind: "text",
    spec,
    shards: files,
    stats,
    shardRole: split.shardRole,
    splitOf: split.splitOf,
    valEnd: split.valEnd,
    splitRule: split.description,
    readBlocks,
  });
}

async function readMetadata(file: RandomAccessFile): Promise<FileMetaData> {
  if (file.byteLength === 0) {
    throw new DataError(`parquet file ${file.name} is empty (0 bytes); re-download it`);
  }
  try {
    return await parquetMetadataAsync(file, { initialFetchSize: FOOTER_FETCH_BYTES });
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(
      `parquet file ${file.name} has an invalid footer (${
        (e as Error).message
      }); it is truncated or not parquet, re-download it`,
    );
  }
}

function selectColumns(
  name: string,
  metadata: FileMetaData,
  textColumn: string,
  options: SourceOptions,
): string[] {
  // schema[0] is the root; its direct children are the top-level columns.
  const available = new Set(metadata.schema.slice(1).map((element) => element.name));
  const needed = [textColumn];
  if (options.minIntScore !== undefined) needed.push("int_score");
  if (options.minScore !== undefined) needed.push("score");
  for (const column of needed) {
    if (!available.has(column)) {
      throw new DataError(
        `parquet file ${name} has no "${column}" column (columns: ${
          [...available].join(", ")
        }); use a file in FineWeb's schema${
          column === textColumn ? " or set textColumn" : " or drop the score filter"
        }`,
      );
    }
  }
  return needed;
}

async function readRows(
  file: RandomAccessFile,
  metadata: FileMetaData,
  columns: string[],
  rowStart: number,
  rowEnd: number,
): Promise<Record<string, unknown>[]> {
  try {
    // utf8: false returns text as bytes, so invalid UTF-8 can be counted before replacement.
    return await parquetReadObjects({
      file,
      metadata,
      columns,
      rowStart,
      rowEnd,
      utf8: false,
      compressors,
    });
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(
      `parquet file ${file.name} has an unreadable row group at rows ${rowStart}-${rowEnd} (${
        (e as Error).message
      }); it is truncated or corrupt, re-download it`,
    );
  }
}

function textBytes(value: unknown, name: string, column: string): Uint8Array {
  if (value === null || value === undefined) return new Uint8Array(0);
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return new TextEncoder().encode(value);
  throw new DataError(
    `parquet file ${name} column "${column}" contains ${typeof value} values, not text; set textColumn to a string column`,
  );
}

function passesFilters(row: Record<string, unknown>, options: SourceOptions): boolean {
  if (options.minIntScore !== undefined && !(Number(row.int_score) >= options.minIntScore)) {
    return false;
  }
  if (options.minScore !== undefined && !(Number(row.score) >= options.minScore)) return false;
  return true;
}
