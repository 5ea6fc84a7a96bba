// deno-lint-ignore-file no-import-prefix -- data/ pins its npm dependencies inline, not in the import map.
/**
 * GPT-2's BPE (50,257 ids, `<|endoftext|>` = 50256) through `gpt-tokenizer`'s r50k_base
 * encoding, which uses GPT-2's vocabulary, merges and split pattern (tiktoken names it r50k_base).
 */
import type { Tokenizer } from "./tokenizer.ts";

const GPT2_EOT = 50256;
const GPT2_VOCAB = 50257;

/** Loads GPT-2's tokenizer; its tables ship inside the npm package, so no network is needed. */
export async function loadGpt2Tokenizer(): Promise<Tokenizer> {
  const bpe = await import("npm:gpt-tokenizer@4.0.0/encoding/r50k_base");
  // An empty disallowed set makes "<|endoftext|>" in a document plain text instead of an error.
  const ordinary = { disallowedSpecial: new Set<string>() };
  return {
    name: "gpt2",
    vocabSize: GPT2_VOCAB,
    eotId: GPT2_EOT,
    encode: (text: string) => bpe.encode(text, ordinary),
    decode: (ids: ArrayLike<number>) => bpe.decode(Array.from(ids)),
  };
}
