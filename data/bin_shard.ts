/**
 * llm.c token shards: a header of 256 little-endian int32 (magic, version, token count, then
 * zeros) followed by the token ids from byte 1024. Magic 20240520 with version 1 stores
 * uint16 ids (llm.c's dev/data scripts, modded-nanogpt). Magic 20240801 with version 7
 * stores uint32 ids, llm.c's variant for vocabularies beyond 65,536 ids.
 */
import { DataError } from "./errors.ts";

export const HEADER_BYTES = 1024;
export const MAGIC_UINT16 = 20240520;
export const VERSION_UINT16 = 1;
export const MAGIC_UINT32 = 20240801;
export const VERSION_UINT32 = 7;

/** A validated shard: its path, token count and id width. */
export interface BinShardInfo {
  path: string;
  tokens: number;
  bytesPerToken: 2 | 4;
}

/** Reads and validates the header of the shard at `path` against the file size. */
export async function readBinHeader(path: string): Promise<BinShardInfo> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    throw new DataError(
      `token shard ${path} cannot be opened (${(e as Error).message}); check the path`,
    );
  }
  try {
    const size = (await file.stat()).size;
    if (size === 0) {
      throw new DataError(
        `token shard ${path} is empty (0 bytes); re-create it with deno task tokenize`,
      );
    }
    if (size < HEADER_BYTES) {
      throw new DataError(
        `token shard ${path} has ${size} bytes, less than its ${HEADER_BYTES}-byte header; the file is truncated, re-create it`,
      );
    }
    const header = new Uint8Array(HEADER_BYTES);
    await readFully(file, header, path);
    const view = new DataView(header.buffer);
    const magic = view.getInt32(0, true);
    const version = view.getInt32(4, true);
    const tokens = view.getInt32(8, true);

    let bytesPerToken: 2 | 4;
    if (magic === MAGIC_UINT16 && version === VERSION_UINT16) bytesPerToken = 2;
    else if (magic === MAGIC_UINT32 && version === VERSION_UINT32) bytesPerToken = 4;
    else {
      throw new DataError(
        `token shard ${path} has magic ${magic} version ${version}, expected ${MAGIC_UINT16} version ${VERSION_UINT16} (uint16) or ${MAGIC_UINT32} version ${VERSION_UINT32} (uint32); it is not an llm.c shard, so write shards from text with deno task tokenize`,
      );
    }
    const expected = HEADER_BYTES + tokens * bytesPerToken;
    if (tokens < 0 || size !== expected) {
      throw new DataError(
        `token shard ${path} header records ${tokens} tokens (${expected} bytes) but the file has ${size} bytes; it is truncated or corrupt, re-create it`,
      );
    }
    return { path, tokens, bytesPerToken };
  } finally {
    file.close();
  }
}

/** Reads `count` ids of a shard starting at token `start`, without loading the rest. */
export async function readBinTokens(
  shard: BinShardInfo,
  start: number,
  count: number,
): Promise<Uint16Array | Uint32Array> {
  if (start < 0 || count < 0 || start + count > shard.tokens) {
    throw new RangeError(
      `tokens [${start}, ${start + count}) outside shard ${shard.path} of ${shard.tokens}`,
    );
  }
  const bytes = new Uint8Array(count * shard.bytesPerToken);
  const file = await Deno.open(shard.path);
  try {
    await file.seek(HEADER_BYTES + start * shard.bytesPerToken, Deno.SeekMode.Start);
    await readFully(file, bytes, shard.path);
  } finally {
    file.close();
  }
  // The ids are little-endian on disk, which typed arrays match on all supported platforms.
  return shard.bytesPerToken === 2
    ? new Uint16Array(bytes.buffer, 0, count)
    : new Uint32Array(bytes.buffer, 0, count);
}

async function readFully(file: Deno.FsFile, into: Uint8Array, path: string): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const n = await file.read(into.subarray(done));
    if (n === null) {
      throw new DataError(`token shard ${path} ended early; it is truncated, re-create it`);
    }
    done += n;
  }
}

/**
 * Writes one shard. Tokens go to `<path>.tmp`, and `finish` writes the header and renames
 * the file, so a reader never sees a partial shard under the final name.
 */
export class BinShardWriter {
  readonly path: string;
  readonly tempPath: string;
  readonly bytesPerToken: 2 | 4;
  tokens = 0;
  #file: Deno.FsFile;
  #maxId: number;

  private constructor(path: string, file: Deno.FsFile, bytesPerToken: 2 | 4) {
    this.path = path;
    this.tempPath = `${path}.tmp`;
    this.#file = file;
    this.bytesPerToken = bytesPerToken;
    this.#maxId = bytesPerToken === 2 ? 0xffff : 0xffffffff;
  }

  /** Creates the temporary file; ids of a vocabulary above 65,536 need `bytesPerToken` 4. */
  static async create(path: string, bytesPerToken: 2 | 4): Promise<BinShardWriter> {
    const file = await Deno.open(`${path}.tmp`, { write: true, create: true, truncate: true });
    await file.write(new Uint8Array(HEADER_BYTES));
    return new BinShardWriter(path, file, bytesPerToken);
  }

  /** Appends ids; each must fit the shard's id width. */
  async write(ids: ArrayLike<number>): Promise<void> {
    const out = this.bytesPerToken === 2
      ? new Uint16Array(ids.length)
      : new Uint32Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!(id >= 0 && id <= this.#maxId)) {
        throw new RangeError(
          `token id ${id} does not fit a ${this.bytesPerToken * 8}-bit shard ${this.path}`,
        );
      }
      out[i] = id;
    }
    const bytes = new Uint8Array(out.buffer);
    let done = 0;
    while (done < bytes.length) done += await this.#file.write(bytes.subarray(done));
    this.tokens += ids.length;
  }

  /** Writes the header, closes the file and renames it to its final path. */
  async finish(): Promise<void> {
    const header = new DataView(new ArrayBuffer(HEADER_BYTES));
    const wide = this.bytesPerToken === 4;
    header.setInt32(0, wide ? MAGIC_UINT32 : MAGIC_UINT16, true);
    header.setInt32(4, wide ? VERSION_UINT32 : VERSION_UINT16, true);
    header.setInt32(8, this.tokens, true);
    await this.#file.seek(0, Deno.SeekMode.Start);
    await this.#file.write(new Uint8Array(header.buffer));
    await this.#file.syncData();
    this.#file.close();
    await Deno.rename(this.tempPath, this.path);
  }

  /** Closes and deletes the temporary file. */
  async abort(): Promise<void> {
    try {
      this.#file.close();
    } catch {
      // Already closed by a failed finish.
    }
    await Deno.remove(this.tempPath).catch(() => {});
  }
}
