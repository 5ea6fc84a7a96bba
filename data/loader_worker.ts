/**
 * Worker side of a loader with `worker: true`: opens the source and tokenizer from their
 * specs, runs the pipeline, and posts batches ahead of the trainer's requests.
 */
/// <reference lib="deno.worker" />
import { DataError } from "./errors.ts";
import { batches, type StatefulBatch } from "./pipeline.ts";
import { openSource, type TextSource } from "./source.ts";
import { loadTokenizer, type Tokenizer } from "./tokenizer.ts";
import type { WorkerReply, WorkerRequest } from "./loader.ts";

let generation = 0;
let credit = 0;
let producing = false;
let stream: AsyncGenerator<StatefulBatch> | null = null;
let source: Awaited<ReturnType<typeof openSource>> | null = null;
let tokenizer: Tokenizer | undefined;

function post(reply: WorkerReply, transfer: Transferable[] = []): void {
  self.postMessage(reply, transfer);
}

/** Produces batches while the main thread has credit left; one loop runs at a time. */
async function produce(): Promise<void> {
  if (producing) return;
  producing = true;
  const mine = generation;
  try {
    while (credit > 0 && stream && mine === generation) {
      const result = await stream.next();
      if (mine !== generation) break;
      if (result.done) break;
      credit--;
      const { inputs, targets, state } = result.value;
      const stats = source?.kind === "text" ? { ...(source as TextSource).stats } : null;
      post({ type: "batch", generation: mine, inputs, targets, state, stats }, [
        inputs.buffer as ArrayBuffer,
        targets.buffer as ArrayBuffer,
      ]);
    }
  } catch (e) {
    if (mine === generation) {
      post({
        type: "error",
        generation: mine,
        message: (e as Error).message,
        isDataError: e instanceof DataError,
      });
    }
    stream = null;
  } finally {
    producing = false;
  }
  // A restart during the loop above leaves work for the new generation.
  if (credit > 0 && stream && mine !== generation) void produce();
}

self.onmessage = async (event: MessageEvent<WorkerRequest>) => {
  const request = event.data;
  if (request.type === "pull") {
    if (request.generation === generation) {
      credit++;
      void produce();
    }
    return;
  }

  generation = request.generation;
  const { options } = request;
  credit = options.settings.prefetch;
  stream = null;
  try {
    source ??= await openSource(options.source, options.sourceOptions);
    if (options.tokenizer !== undefined) tokenizer ??= await loadTokenizer(options.tokenizer);
    if (request.generation !== generation) return;
    stream = batches({ source, tokenizer, ...options.settings }, request.state);
  } catch (e) {
    post({
      type: "error",
      generation,
      message: (e as Error).message,
      isDataError: e instanceof DataError,
    });
    return;
  }
  void produce();
};
