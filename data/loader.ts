/**
 * `createLoader`: batches for training or evaluation, produced ahead of the trainer by an
 * async prefetch queue on the main thread or by a Worker thread.
 */
import { DataError } from "./errors.ts";
import {
  batches,
  checkState,
  freshState,
  initialState,
  type LoaderState,
  type PipelineConfig,
  type StatefulBatch,
} from "./pipeline.ts";
import {
  type DataSource,
  type DocumentStats,
  openSource,
  type SourceOptions,
  type Split,
} from "./source.ts";
import { loadTokenizer, type Tokenizer } from "./tokenizer.ts";

/** Options for `createLoader`. */
export interface LoaderOptions {
  /** A source spec for `openSource` ("brown", "fineweb-edu", a path or URL), or an open source. */
  source: string | DataSource;
  /** Options passed to `openSource` when `source` is a spec. */
  sourceOptions?: SourceOptions;
  /** A spec for `loadTokenizer` ("gpt2", "qwen2.5", a path) or a tokenizer; text sources need one. */
  tokenizer?: string | Tokenizer;
  /** Sequences per batch (B). */
  batch: number;
  /** Tokens per sequence (T). */
  seqLen: number;
  /** Seed of the shuffles (default 0). */
  seed?: number;
  /** This process's data-parallel rank in [0, worldSize) (default 0). */
  rank?: number;
  /** Number of data-parallel ranks (default 1). */
  worldSize?: number;
  /** "train" (shuffled) or "val" (file order); default "train". */
  split?: Split;
  /** A state from `loader.state()`: the loader continues right after it. */
  state?: LoaderState;
  /** Batches produced ahead of `next()` (default 4). */
  prefetch?: number;
  /**
   * Run tokenization in a Worker thread. Default: true when `source` and `tokenizer` are
   * both specs, because a Worker can only rebuild them from strings.
   */
  worker?: boolean;
}

/** One batch, row-major (B, T): targets[i] is the token that follows inputs[i]. */
export interface Batch {
  inputs: Int32Array;
  targets: Int32Array;
}

/** A stream of batches with a resumable position. */
export interface Loader {
  /** Returns the next batch; rejects with the source's error if reading fails. */
  next(): Promise<Batch>;
  /** Returns the position after the last batch `next` returned, as plain JSON data. */
  state(): LoaderState;
  /** Returns document counts of a text source (read, empty, invalid UTF-8, filtered), or null. */
  stats(): DocumentStats | null;
  /** Moves back to the start, or to `state`, dropping prefetched batches. */
  restart(state?: LoaderState): void;
  /** Stops prefetching and frees the Worker. */
  close(): void;
}

/** Creates a loader; see `LoaderOptions`. Bad options throw a DataError naming the value. */
export async function createLoader(options: LoaderOptions): Promise<Loader> {
  const settings = validate(options);
  const useWorker = options.worker ??
    (typeof options.source === "string" && typeof options.tokenizer === "string");
  if (useWorker) {
    if (
      typeof options.source !== "string" ||
      (options.tokenizer !== undefined && typeof options.tokenizer !== "string")
    ) {
      throw new DataError(
        "worker: true needs source and tokenizer given as spec strings; pass specs or set worker: false",
      );
    }
    return createWorkerLoader(options, settings);
  }
  const source = typeof options.source === "string"
    ? await openSource(options.source, options.sourceOptions)
    : options.source;
  const tokenizer = typeof options.tokenizer === "string"
    ? await loadTokenizer(options.tokenizer)
    : options.tokenizer;
  return createInlineLoader({ source, tokenizer, ...settings }, options.state, settings.prefetch);
}

type Settings = Omit<PipelineConfig, "source" | "tokenizer"> & { prefetch: number };

function validate(options: LoaderOptions): Settings {
  const positive = (name: string, value: unknown) => {
    if (!Number.isInteger(value) || (value as number) < 1) {
      throw new DataError(`${name} must be a positive integer, got ${value}`);
    }
    return value as number;
  };
  const batch = positive("batch", options.batch);
  const seqLen = positive("seqLen", options.seqLen);
  const worldSize = positive("worldSize", options.worldSize ?? 1);
  const prefetch = positive("prefetch", options.prefetch ?? 4);
  const rank = options.rank ?? 0;
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) {
    throw new DataError(`rank ${rank} is outside [0, ${worldSize}); pass a rank below worldSize`);
  }
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed)) throw new DataError(`seed must be an integer, got ${seed}`);
  const split = options.split ?? "train";
  if (split !== "train" && split !== "val") {
    throw new DataError(`split must be "train" or "val", got ${split}`);
  }
  return { batch, seqLen, worldSize, rank, seed, split, prefetch };
}

/** Runs the pipeline on this thread, keeping `prefetch` batches requested ahead. */
export function createInlineLoader(
  config: PipelineConfig,
  start: LoaderState | undefined,
  prefetch: number,
): Loader {
  if (start) checkState(start, config);
  let stream: AsyncGenerator<StatefulBatch>;
  let queue: Promise<IteratorResult<StatefulBatch>>[] = [];
  let current: LoaderState | undefined = start;

  const request = () => {
    const pending = stream.next();
    // Errors surface in next(); this handler only stops an "unhandled rejection" report
    // for batches requested ahead and never awaited.
    pending.catch(() => {});
    queue.push(pending);
  };
  const begin = (state: LoaderState | undefined) => {
    stream?.return(undefined).catch(() => {});
    stream = batches(config, state);
    queue = [];
    current = state;
    for (let i = 0; i < prefetch; i++) request();
  };
  begin(start);

  return {
    async next() {
      const result = await queue.shift()!;
      request();
      if (result.done) throw new Error("batch stream ended");
      current = result.value.state;
      return { inputs: result.value.inputs, targets: result.value.targets };
    },
    state: () => structuredClone(current ?? initialState(config)),
    stats: () => (config.source.kind === "text" ? { ...config.source.stats } : null),
    restart: (state?: LoaderState) => {
      if (state) checkState(state, config);
      begin(state);
    },
    close: () => {
      stream.return(undefined).catch(() => {});
      queue = [];
    },
  };
}

/** Messages from loader_worker.ts. */
export type WorkerReply =
  | {
    type: "batch";
    generation: number;
    inputs: Int32Array;
    targets: Int32Array;
    state: LoaderState;
    stats: DocumentStats | null;
  }
  | { type: "error"; generation: number; message: string; isDataError: boolean };

/** Messages to loader_worker.ts. */
export type WorkerRequest =
  | { type: "start"; generation: number; options: WorkerStartOptions; state?: LoaderState }
  | { type: "pull"; generation: number };

/** Specs and settings from which a Worker rebuilds the loader. */
export interface WorkerStartOptions {
  source: string;
  sourceOptions?: SourceOptions;
  tokenizer?: string;
  settings: Settings;
}

function createWorkerLoader(options: LoaderOptions, settings: Settings): Loader {
  const worker = new Worker(new URL("./loader_worker.ts", import.meta.url), { type: "module" });
  const startOptions: WorkerStartOptions = {
    source: options.source as string,
    sourceOptions: options.sourceOptions,
    tokenizer: options.tokenizer as string | undefined,
    settings,
  };
  // Each restart bumps the generation, so batches still in flight from before are dropped.
  let generation = 0;
  let ready: WorkerReply[] = [];
  let waiting: ((reply: WorkerReply) => void) | null = null;
  let current: LoaderState | undefined = options.state;
  let latestStats: DocumentStats | null = null;

  worker.onmessage = (event: MessageEvent<WorkerReply>) => {
    const reply = event.data;
    if (reply.generation !== generation) return;
    if (waiting) {
      const resolve = waiting;
      waiting = null;
      resolve(reply);
    } else {
      ready.push(reply);
    }
  };
  worker.onerror = (event: ErrorEvent) => {
    event.preventDefault();
    const reply: WorkerReply = {
      type: "error",
      generation,
      message: event.message,
      isDataError: false,
    };
    if (waiting) waiting(reply);
    else ready.push(reply);
  };
  const start = (state: LoaderState | undefined) => {
    generation++;
    ready = [];
    current = state;
    const message: WorkerRequest = { type: "start", generation, options: startOptions, state };
    worker.postMessage(message);
  };
  start(options.state);

  const receive = () =>
    ready.length > 0
      ? Promise.resolve(ready.shift()!)
      : new Promise<WorkerReply>((resolve) => (waiting = resolve));

  return {
    async next() {
      const reply = await receive();
      if (reply.type === "error") {
        ready.unshift(reply);
        throw reply.isDataError ? new DataError(reply.message) : new Error(reply.message);
      }
      const pull: WorkerRequest = { type: "pull", generation };
      worker.postMessage(pull);
      current = reply.state;
      latestStats = reply.stats;
      return { inputs: reply.inputs, targets: reply.targets };
    },
    state: () => structuredClone(current ?? freshState(startOptions.source, settings)),
    stats: () => (latestStats ? { ...latestStats } : null),
    restart: (state?: LoaderState) => start(state),
    close: () => worker.terminate(),
  };
}
