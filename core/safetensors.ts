// Reader and writer for the safetensors format, streaming so that multi-GB checkpoints never
// sit in one ArrayBuffer.
//
// Layout (https://github.com/huggingface/safetensors, README "Format"):
//   8 bytes   N, little-endian u64
//   N bytes   UTF-8 JSON header:
//             {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}
//             offsets are relative to the first byte after the header
//   rest      tensor data, little-endian, row-major, packed without gaps
// The writer pads the header with spaces so the data starts at a multiple of 8 bytes.
// The reader follows the reference implementation's checks: tensors must tile the data
// section exactly, with no gap, overlap or trailing byte.

export type Dtype = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

/** Bytes per element of each supported dtype. */
export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

// The reference implementation rejects headers above 100 MB (MAX_HEADER_SIZE).
export const MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = "__metadata__";

/** Error for a malformed file or bad writer input; the message is one line. */
export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SafetensorsError";
  }
}

export interface TensorInfo {
  dtype: Dtype;
  shape: number[];
  // Absolute position of the tensor's first byte in the file.
  byteOffset: number;
  byteLength: number;
}

export type Metadata = Record<string, string>;

export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  // Either all bytes, or a function returning the bytes in chunks of any size, which is
  // called once while the file is written.
  bytes: Uint8Array | (() => AsyncIterable<Uint8Array>);
}

function isDtype(value: unknown): value is Dtype {
  return typeof value === "string" && Object.hasOwn(DTYPE_BYTES, value);
}

const DTYPE_LIST = Object.keys(DTYPE_BYTES).join(", ");

function isShape(value: unknown): value is number[] {
  return Array.isArray(value) &&
    value.every((d) => typeof d === "number" && Number.isSafeInteger(d) && d >= 0);
}

/** Returns the byte size of a tensor of `shape` and `dtype`. */
export function tensorByteLength(dtype: Dtype, shape: readonly number[]): number {
  let elements = 1;
  for (const d of shape) elements *= d;
  return elements * DTYPE_BYTES[dtype];
}

function formatShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await file.write(bytes.subarray(written));
}

// Reads exactly buf.length bytes or throws, because FsFile.read may return fewer.
async function readExact(file: Deno.FsFile, buf: Uint8Array, path: string): Promise<void> {
  let filled = 0;
  while (filled < buf.length) {
    const n = await file.read(buf.subarray(filled));
    if (n === null) {
      throw new SafetensorsError(
        `${path}: unexpected end of file after ${filled} of ${buf.length} bytes: the file changed while open`,
      );
    }
    filled += n;
  }
}

function checkEntries(path: string, entries: readonly TensorEntry[]): number[] {
  const seen = new Set<string>();
  return entries.map((entry) => {
    const { name, dtype, shape, bytes } = entry;
    if (name === "" || name === METADATA_KEY) {
      throw new SafetensorsError(
        `${path}: invalid tensor name "${name}": use a non-empty name other than ${METADATA_KEY}`,
      );
    }
    if (seen.has(name)) {
      throw new SafetensorsError(`${path}: tensor "${name}" appears twice: names must be unique`);
    }
    seen.add(name);
    if (!isDtype(dtype)) {
      throw new SafetensorsError(
        `${path}: tensor "${name}" has unknown dtype ${
          JSON.stringify(dtype)
        }: use one of ${DTYPE_LIST}`,
      );
    }
    if (!isShape(shape)) {
      throw new SafetensorsError(
        `${path}: tensor "${name}" has invalid shape ${
          JSON.stringify(shape)
        }: use a list of integers >= 0`,
      );
    }
    const byteLength = tensorByteLength(dtype, shape);
    if (bytes instanceof Uint8Array && bytes.length !== byteLength) {
      throw new SafetensorsError(
        `${path}: tensor "${name}" has ${bytes.length} bytes, but ${dtype} ${
          formatShape(shape)
        } needs ${byteLength}`,
      );
    }
    return byteLength;
  });
}

/** Returns the 8-byte length prefix and the space-padded JSON header for `entries`. */
export function encodeHeader(
  entries: readonly { name: string; dtype: Dtype; shape: number[] }[],
  metadata?: Metadata,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header[METADATA_KEY] = metadata;
  let offset = 0;
  for (const { name, dtype, shape } of entries) {
    const end = offset + tensorByteLength(dtype, shape);
    header[name] = { dtype, shape, data_offsets: [offset, end] };
    offset = end;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/**
 * Writes `entries` in order to a safetensors file at `path`. The data goes to a temporary
 * file beside it, which is synced and then renamed over `path`, so a crash or error never
 * leaves a truncated file where the previous one was. The temporary file is removed on error.
 */
export async function writeSafetensors(
  path: string,
  entries: readonly TensorEntry[],
  metadata?: Metadata,
): Promise<void> {
  const byteLengths = checkEntries(path, entries);
  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") {
        throw new SafetensorsError(
          `${path}: metadata "${key}" is ${JSON.stringify(value)}: values must be strings`,
        );
      }
    }
  }
  const header = encodeHeader(entries, metadata);

  const random = crypto.getRandomValues(new Uint32Array(2));
  const tmpPath = `${path}.tmp-${random[0].toString(16)}${random[1].toString(16)}`;
  const file = await Deno.open(tmpPath, { write: true, createNew: true });
  let closed = false;
  try {
    await writeAll(file, header);
    for (let i = 0; i < entries.length; i++) {
      const { name, bytes } = entries[i];
      const expected = byteLengths[i];
      if (bytes instanceof Uint8Array) {
        await writeAll(file, bytes);
        continue;
      }
      let written = 0;
      for await (const chunk of bytes()) {
        written += chunk.length;
        if (written > expected) {
          throw new SafetensorsError(
            `${path}: tensor "${name}" streamed more than its ${expected} bytes: check its shape and dtype`,
          );
        }
        await writeAll(file, chunk);
      }
      if (written !== expected) {
        throw new SafetensorsError(
          `${path}: tensor "${name}" streamed ${written} bytes, expected ${expected}: check its shape and dtype`,
        );
      }
    }
    await file.sync();
    file.close();
    closed = true;
    await Deno.rename(tmpPath, path);
  } catch (error) {
    if (!closed) file.close();
    await Deno.remove(tmpPath).catch(() => {});
    throw error;
  }
}

/** An open safetensors file. Reads may be issued concurrently because they run one at a time. */
export interface SafetensorsFile {
  path: string;
  // The parsed JSON header, tensors and __metadata__ as stored.
  header: Record<string, unknown>;
  metadata: Metadata;
  tensors: Map<string, TensorInfo>;
  // Position of the data section in the file: 8 + header length.
  dataOffset: number;
  info(name: string): TensorInfo;
  read(name: string): Promise<Uint8Array>;
  readChunks(name: string, chunkBytes: number): AsyncIterable<Uint8Array>;
  expectShape(name: string, shape: readonly number[]): TensorInfo;
  close(): void;
}

function parseHeader(path: string, bytes: Uint8Array): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new SafetensorsError(
      `${path}: header is not valid UTF-8: not a safetensors file or corrupted`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (error) {
    const reason = (error as Error).message.split("\n")[0];
    throw new SafetensorsError(
      `${path}: header is not valid JSON (${reason}): not a safetensors file or corrupted`,
    );
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new SafetensorsError(`${path}: header is JSON but not an object: not a safetensors file`);
  }
  return header as Record<string, unknown>;
}

function parseMetadata(path: string, value: unknown): Metadata {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new SafetensorsError(
      `${path}: ${METADATA_KEY} is ${JSON.stringify(value)}: it must be an object of strings`,
    );
  }
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== "string") {
      throw new SafetensorsError(
        `${path}: ${METADATA_KEY} "${key}" is ${JSON.stringify(v)}: values must be strings`,
      );
    }
  }
  return value as Metadata;
}

interface ParsedTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

function parseTensor(path: string, name: string, value: unknown): ParsedTensor {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new SafetensorsError(
      `${path}: tensor "${name}" header entry is ${
        JSON.stringify(value)
      }: expected {dtype, shape, data_offsets}`,
    );
  }
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (!isDtype(dtype)) {
    throw new SafetensorsError(
      `${path}: tensor "${name}" has unknown dtype ${
        JSON.stringify(dtype)
      }: supported are ${DTYPE_LIST}`,
    );
  }
  if (!isShape(shape)) {
    throw new SafetensorsError(
      `${path}: tensor "${name}" has invalid shape ${
        JSON.stringify(shape)
      }: expected a list of integers >= 0`,
    );
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]
  ) {
    throw new SafetensorsError(
      `${path}: tensor "${name}" has invalid data_offsets ${
        JSON.stringify(offsets)
      }: expected [begin, end] with 0 <= begin <= end`,
    );
  }
  const [begin, end] = offsets as number[];
  const expected = tensorByteLength(dtype, shape);
  if (end - begin !== expected) {
    throw new SafetensorsError(
      `${path}: tensor "${name}" data_offsets [${begin}, ${end}] span ${
        end - begin
      } bytes, but ${dtype} ${formatShape(shape)} needs ${expected}`,
    );
  }
  return { name, dtype, shape, begin, end };
}

// Checks that the tensors tile [0, dataLength) exactly, as the reference reader does.
function checkLayout(path: string, tensors: ParsedTensor[], dataLength: number): void {
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let position = 0;
  let previous = "";
  for (const t of sorted) {
    if (t.end > dataLength) {
      throw new SafetensorsError(
        `${path}: tensor "${t.name}" data_offsets [${t.begin}, ${t.end}] are out of bounds of the ${dataLength}-byte data section: the file is truncated or corrupted`,
      );
    }
    if (t.begin < position) {
      throw new SafetensorsError(
        `${path}: tensor "${t.name}" data_offsets [${t.begin}, ${t.end}] overlap tensor "${previous}": the file is corrupted`,
      );
    }
    if (t.begin > position) {
      throw new SafetensorsError(
        `${path}: unused bytes ${position}..${t.begin} before tensor "${t.name}": tensors must be packed without gaps`,
      );
    }
    position = t.end;
    previous = t.name;
  }
  if (position !== dataLength) {
    throw new SafetensorsError(
      `${path}: data section is ${dataLength} bytes but the tensors end at ${position}: the file has trailing bytes`,
    );
  }
}

/** Opens a safetensors file and validates its header; throws SafetensorsError if malformed. */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  const file = await Deno.open(path, { read: true });
  try {
    return await openFile(path, file);
  } catch (error) {
    file.close();
    throw error;
  }
}

async function openFile(path: string, file: Deno.FsFile): Promise<SafetensorsFile> {
  const fileSize = (await file.stat()).size;
  if (fileSize < 8) {
    throw new SafetensorsError(
      `${path}: file is ${fileSize} bytes, shorter than the 8-byte header length: truncated or not a safetensors file`,
    );
  }
  const prefix = new Uint8Array(8);
  await readExact(file, prefix, path);
  const headerLength = new DataView(prefix.buffer).getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(
      `${path}: header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit: not a safetensors file or corrupted`,
    );
  }
  const dataOffset = 8 + Number(headerLength);
  if (dataOffset > fileSize) {
    throw new SafetensorsError(
      `${path}: header length ${headerLength} runs past the end of the ${fileSize}-byte file: the file is truncated`,
    );
  }
  const headerBytes = new Uint8Array(Number(headerLength));
  await readExact(file, headerBytes, path);
  const header = parseHeader(path, headerBytes);

  const metadata = parseMetadata(path, header[METADATA_KEY]);
  const parsed: ParsedTensor[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name !== METADATA_KEY) parsed.push(parseTensor(path, name, value));
  }
  checkLayout(path, parsed, fileSize - dataOffset);

  const tensors = new Map<string, TensorInfo>();
  for (const t of parsed) {
    tensors.set(t.name, {
      dtype: t.dtype,
      shape: t.shape,
      byteOffset: dataOffset + t.begin,
      byteLength: t.end - t.begin,
    });
  }

  // Seek and read share the file position, so each seek+read pair runs alone.
  let queue: Promise<unknown> = Promise.resolve();
  function readAt(position: number, length: number): Promise<Uint8Array> {
    const task = queue.then(async () => {
      const buf = new Uint8Array(length);
      await file.seek(position, Deno.SeekMode.Start);
      await readExact(file, buf, path);
      return buf;
    });
    queue = task.catch(() => {});
    return task;
  }

  function info(name: string): TensorInfo {
    const t = tensors.get(name);
    if (t === undefined) {
      const names = [...tensors.keys()];
      const listed = names.slice(0, 5).join(", ") + (names.length > 5 ? ", ..." : "");
      throw new SafetensorsError(
        `${path}: tensor "${name}" not found: the file has ${names.length} tensors (${listed})`,
      );
    }
    return t;
  }

  let closed = false;
  return {
    path,
    header,
    metadata,
    tensors,
    dataOffset,
    info,
    read(name) {
      const t = info(name);
      return readAt(t.byteOffset, t.byteLength);
    },
    async *readChunks(name, chunkBytes) {
      const t = info(name);
      if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1) {
        throw new SafetensorsError(
          `${path}: chunk size ${chunkBytes} is invalid: use a positive integer number of bytes`,
        );
      }
      for (let done = 0; done < t.byteLength; done += chunkBytes) {
        yield await readAt(t.byteOffset + done, Math.min(chunkBytes, t.byteLength - done));
      }
    },
    expectShape(name, shape) {
      const t = info(name);
      const same = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
      if (!same) {
        throw new SafetensorsError(
          `${path}: tensor "${name}" has shape ${formatShape(t.shape)}, expected ${
            formatShape(shape)
          }: the checkpoint does not match the model config`,
        );
      }
      return t;
    },
    close() {
      if (!closed) file.close();
      closed = true;
    },
  };
}
