/**
 * Random-access reads of a local file or an HTTP(S) URL, in the shape hyparquet's AsyncBuffer
 * expects. Remote reads use HTTP Range requests, so a reader fetches only the byte ranges it
 * needs and never the whole file.
 */
import { DataError } from "./errors.ts";

/** A file that can be read at any byte range. */
export interface RandomAccessFile {
  readonly name: string;
  readonly byteLength: number;
  /** Reads bytes [start, end), or to the end of the file without `end`. */
  slice(start: number, end?: number): Promise<ArrayBuffer>;
  close(): void;
}

/** Opens `spec`, a local path or an http(s) URL. */
export async function openRandomAccess(spec: string): Promise<RandomAccessFile> {
  return /^https?:\/\//.test(spec) ? await openUrl(spec) : await openLocal(spec);
}

async function openLocal(path: string): Promise<RandomAccessFile> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    throw new DataError(`file ${path} cannot be opened (${(e as Error).message}); check the path`);
  }
  const byteLength = (await file.stat()).size;
  // Seek and read share the file position, so overlapping reads run one after another.
  let queue: Promise<unknown> = Promise.resolve();
  return {
    name: path,
    byteLength,
    slice(start, end = byteLength) {
      const read = queue.then(async () => {
        const bytes = new Uint8Array(Math.max(0, end - start));
        await file.seek(start, Deno.SeekMode.Start);
        let done = 0;
        while (done < bytes.length) {
          const n = await file.read(bytes.subarray(done));
          if (n === null) {
            throw new DataError(`file ${path} ended before byte ${end}; it is truncated`);
          }
          done += n;
        }
        return bytes.buffer;
      });
      queue = read.catch(() => {});
      return read;
    },
    close: () => file.close(),
  };
}

/** Retries of a request that failed on the network or with HTTP 429 or 5xx. */
const MAX_ATTEMPTS = 5;
const FIRST_BACKOFF_MS = 500;

/** Sends a request, retrying transient failures with exponential backoff (0.5, 1, 2, 4 s). */
async function fetchWithRetry(url: string, init: RequestInit): Promise<Response> {
  for (let attempt = 1;; attempt++) {
    let failure: string;
    try {
      const response = await fetch(url, init);
      if (response.status !== 429 && response.status < 500) return response;
      await response.body?.cancel();
      failure = `HTTP ${response.status}`;
    } catch (e) {
      failure = (e as Error).message;
    }
    if (attempt >= MAX_ATTEMPTS) {
      throw new DataError(
        `${
          init.method ?? "GET"
        } ${url} failed ${attempt} times (last: ${failure}); check the URL and the network`,
      );
    }
    const delay = FIRST_BACKOFF_MS * 2 ** (attempt - 1);
    console.warn(
      `data: ${init.method ?? "GET"} ${url} failed (${failure}), retry ${attempt} in ${delay} ms`,
    );
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

function httpError(url: string, response: Response): DataError {
  return new DataError(
    `${url} returned HTTP ${response.status} ${response.statusText}; check that the URL exists and is public`,
  );
}

async function openUrl(url: string): Promise<RandomAccessFile> {
  const head = await fetchWithRetry(url, { method: "HEAD" });
  await head.body?.cancel();
  let byteLength = Number(head.headers.get("content-length") ?? NaN);
  if (!head.ok || !Number.isFinite(byteLength)) {
    // Some servers reject HEAD or omit its length; a one-byte range request reports it too.
    const probe = await fetchWithRetry(url, { headers: { Range: "bytes=0-0" } });
    await probe.body?.cancel();
    if (probe.status !== 206) {
      if (!probe.ok) throw httpError(url, probe);
      throw rangeIgnored(url, probe.status);
    }
    byteLength = Number(probe.headers.get("content-range")?.split("/")[1] ?? NaN);
    if (!Number.isFinite(byteLength)) {
      throw new DataError(
        `${url} sent no file size in Content-Range; use a server that reports it`,
      );
    }
  }

  return {
    name: url,
    byteLength,
    async slice(start, end = byteLength) {
      if (end <= start) return new ArrayBuffer(0);
      const response = await fetchWithRetry(url, {
        headers: { Range: `bytes=${start}-${end - 1}` },
      });
      if (response.status === 206) {
        const body = await response.arrayBuffer();
        if (body.byteLength !== end - start) {
          throw new DataError(
            `${url} sent ${body.byteLength} bytes for range ${start}-${
              end - 1
            }; the file may have changed, restart the read`,
          );
        }
        return body;
      }
      await response.body?.cancel();
      if (!response.ok) throw httpError(url, response);
      throw rangeIgnored(url, response.status);
    },
    close() {},
  };
}

function rangeIgnored(url: string, status: number): DataError {
  return new DataError(
    `${url} ignored the Range request (HTTP ${status} instead of 206); serve it from a server that supports Range requests or download it and pass the local path`,
  );
}
