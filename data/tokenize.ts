/**
 * `deno task tokenize`: writes a text source into llm.c .bin shards.
 *
 *   deno task tokenize --data brown --tokenizer gpt2 --out out/brown --shard-tokens 1000000
 *
 * Bad input prints one line to stderr and exits with status 2. No partial output is left.
 */
import { parseArgs } from "node:util";
import { DataError } from "./errors.ts";
import { parseArgsMessage, parseTokenCount } from "./flags.ts";
import { openSource } from "./source.ts";
import { loadTokenizer } from "./tokenizer.ts";
import { writeShards } from "./write_shards.ts";

const HELP = `Usage: deno task tokenize --data SOURCE --out DIR [options]

  --data SOURCE         brown, fineweb-edu, an http(s) parquet URL, or a .parquet/.jsonl/.txt
                        file, directory or glob
  --tokenizer NAME      gpt2 (default), qwen2.5, qwen3, or a tokenizer.json file or directory
  --out DIR             output directory, created if missing
  --name PREFIX         shard file prefix (default: derived from --data)
  --shard-tokens N      tokens per train shard (default 100M, as llm.c's fineweb.py)
  --val-tokens N        maximum tokens of the validation shard, 0 for none (default:
                        --shard-tokens). Every 20th document of the first file is held out
                        (Brown: every 20th file) until the shard is full, and later ones
                        go to train. A source with files named *_val_* is split by
                        file name instead.
  --max-tokens N        stop after N train tokens (default: the whole source)
  --min-int-score N     parquet: keep documents with int_score >= N
  --min-score X         parquet: keep documents with score >= X
  --text-column NAME    parquet/JSONL: column or field holding the text (default text)
  -h, --help            print this help

Token counts accept K, M and B suffixes (10³, 10⁶, 10⁹), such as 1M.
`;

const FLAGS = {
  data: { type: "string" },
  tokenizer: { type: "string", default: "gpt2" },
  out: { type: "string" },
  name: { type: "string" },
  "shard-tokens": { type: "string" },
  "val-tokens": { type: "string" },
  "max-tokens": { type: "string" },
  "min-int-score": { type: "string" },
  "min-score": { type: "string" },
  "text-column": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Returns the token count given to `--flag`, or `fallback` when the flag is absent. */
function parseCount(flag: string, value: string | undefined, fallback: number, min: 0 | 1) {
  if (value === undefined) return fallback;
  const count = parseTokenCount(value, min);
  if (count === null) {
    const expected = min === 0 ? "0 or a positive whole number" : "a positive whole number";
    throw new DataError(
      `--${flag} ${value} is invalid; pass ${expected} of tokens such as 1000000 or 1M`,
    );
  }
  return count;
}

function parseScore(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) {
    throw new DataError(`--${flag} ${value} is not a number; pass a value such as 3`);
  }
  return n;
}

function defaultName(data: string): string {
  const base = data.replace(/\/+$/, "").split("/").pop() ?? "data";
  return base.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "_") || "data";
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: FLAGS, strict: true });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (!values.data) throw new DataError("missing --data; pass a source such as --data brown");
  if (!values.out) {
    throw new DataError("missing --out; pass an output directory such as --out out/brown");
  }
  const shardTokens = parseCount("shard-tokens", values["shard-tokens"], 100_000_000, 1);
  const valTokens = parseCount("val-tokens", values["val-tokens"], shardTokens, 0);
  const maxTokens = values["max-tokens"] === undefined
    ? undefined
    : parseCount("max-tokens", values["max-tokens"], 0, 1);

  const source = await openSource(values.data, {
    minIntScore: parseScore("min-int-score", values["min-int-score"]),
    minScore: parseScore("min-score", values["min-score"]),
    textColumn: values["text-column"],
    // --val-tokens bounds the validation shard, so the source holds out without a cap.
    valDocuments: Infinity,
  });
  if (source.kind !== "text") {
    throw new DataError(`--data ${values.data} is already tokenized (.bin); pass a text source`);
  }
  const tokenizer = await loadTokenizer(values.tokenizer!);

  let interrupted = false;
  const onInterrupt = () => (interrupted = true);
  Deno.addSignalListener("SIGINT", onInterrupt);

  const tty = Deno.stderr.isTerminal();
  const start = performance.now();
  const written = { val: 0, train: 0 };
  let lastDraw = 0;
  const draw = () => {
    const now = performance.now();
    if (!tty || now - lastDraw < 200) return;
    lastDraw = now;
    const total = written.val + written.train;
    const rate = total / ((now - start) / 1000);
    let bar = "";
    if (maxTokens) {
      const fraction = Math.min(1, written.train / maxTokens);
      const filled = Math.round(fraction * 30);
      bar = `[${"#".repeat(filled)}${"-".repeat(30 - filled)}] ${(100 * fraction).toFixed(1)}% `;
    }
    const line = `${bar}train ${formatCount(written.train)}, val ${
      formatCount(written.val)
    } tokens, ${formatCount(rate)} tokens/s`;
    Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[K${line}`));
  };

  try {
    const result = await writeShards({
      source,
      tokenizer,
      outDir: values.out,
      name: values.name ?? defaultName(values.data),
      shardTokens,
      valTokens,
      maxTokens,
      onProgress: (split, tokens) => {
        written[split] = tokens;
        draw();
      },
      cancelled: () => interrupted,
    });
    if (tty) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
    const seconds = (performance.now() - start) / 1000;
    const total = result.valTokens + result.trainTokens;
    for (const file of result.files) console.log(file);
    const { documents, emptyDocuments, invalidUtf8Documents, filteredDocuments } = result.stats;
    console.log(
      `${result.files.length} shards: ${result.valTokens} val + ${result.trainTokens} train tokens (${tokenizer.name}) in ${
        seconds.toFixed(1)
      } s, ${
        formatCount(total / seconds)
      } tokens/s; documents read ${documents}, empty skipped ${emptyDocuments}, invalid UTF-8 repaired ${invalidUtf8Documents}, filtered ${filteredDocuments}`,
    );
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    const usage = parseArgsMessage(e, Object.keys(FLAGS), "tokenize");
    if (e instanceof DataError || usage !== null) {
      console.error(`error: ${usage ?? (e as Error).message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
