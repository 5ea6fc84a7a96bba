/**
 * `benchData`: throughput of the two data paths that can stall training, reading .bin
 * shards through the loader and GPT-2 tokenization of Brown Corpus text, on one thread.
 *
 *   deno run -A data/bench.ts
 */
import { BinShardWriter } from "./bin_shard.ts";
import { listBrownFiles, readBrownDocument } from "./brown.ts";
import { createLoader } from "./loader.ts";
import { loadTokenizer } from "./tokenizer.ts";

/** Measured rates in tokens per second. */
export interface DataBenchResult {
  binTokensPerSecond: number;
  gpt2TokensPerSecond: number;
  binTokens: number;
  gpt2Tokens: number;
}

/**
 * Writes a temporary shard of `binTokens` random uint16 ids and reads it back as (B, T) =
 * (16, 1024) batches, then encodes all 500 Brown documents with GPT-2 once (a cold merge
 * cache, as for new data). Loading the tokenizer and the corpus is not timed.
 */
export async function benchData(binTokens = 16 * 1024 * 1024): Promise<DataBenchResult> {
  const dir = await Deno.makeTempDir({ prefix: "bpt-bench-" });
  try {
    const writer = await BinShardWriter.create(`${dir}/bench_train_000001.bin`, 2);
    const chunk = new Uint16Array(1 << 20);
    for (let written = 0; written < binTokens; written += chunk.length) {
      for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 2654435761) % 50257;
      await writer.write(chunk.subarray(0, Math.min(chunk.length, binTokens - written)));
    }
    await writer.finish();

    const batch = 16;
    const seqLen = 1024;
    const loader = await createLoader({ source: dir, batch, seqLen, worker: false });
    const steps = Math.floor((binTokens - 1) / seqLen / batch);
    const binStart = performance.now();
    for (let i = 0; i < steps; i++) await loader.next();
    const binSeconds = (performance.now() - binStart) / 1000;
    loader.close();

    const tokenizer = await loadTokenizer("gpt2");
    const docs: string[] = [];
    for (const file of listBrownFiles()) docs.push(await readBrownDocument(file.id));
    const gpt2Start = performance.now();
    let gpt2Tokens = 0;
    for (const doc of docs) gpt2Tokens += tokenizer.encode(doc).length;
    const gpt2Seconds = (performance.now() - gpt2Start) / 1000;

    return {
      binTokensPerSecond: (steps * batch * seqLen) / binSeconds,
      gpt2TokensPerSecond: gpt2Tokens / gpt2Seconds,
      binTokens: steps * batch * seqLen,
      gpt2Tokens,
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const result = await benchData();
  console.log(
    `.bin loader: ${
      (result.binTokensPerSecond / 1e6).toFixed(1)
    } M tokens/s over ${result.binTokens} tokens`,
  );
  console.log(
    `GPT-2 encode (Brown): ${
      (result.gpt2TokensPerSecond / 1e3).toFixed(0)
    } k tokens/s over ${result.gpt2Tokens} tokens`,
  );
}
