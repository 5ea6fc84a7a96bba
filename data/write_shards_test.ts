import assert from "node:assert/strict";
import { readBinHeader, readBinTokens } from "./bin_shard.ts";
import { openSource, type TextSource } from "./source.ts";
import { loadTokenizer } from "./tokenizer.ts";
import { writeShards } from "./write_shards.ts";
import { DataError } from "./errors.ts";
import { assertOneLineNaming, rejectsWith } from "./testing/assert_error.ts";

const gpt2 = await loadTokenizer("gpt2");
const texts = Array.from(
  { length: 40 },
  (_, i) => `Document number ${i} says hello to the world ${"again ".repeat(i)}`,
);

async function withJsonl(fn: (dir: string, path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/docs.jsonl`;
    await Deno.writeTextFile(path, texts.map((text) => JSON.stringify({ text })).join("\n") + "\n");
    await fn(dir, path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("shards hold val then train tokens", async () => {
  await withJsonl(async (dir, path) => {
    const source = await openSource(path, { valDocuments: 5 }) as TextSource;
    const result = await writeShards({
      source,
      tokenizer: gpt2,
      outDir: `${dir}/out`,
      name: "d",
      shardTokens: 300,
      valTokens: 1000,
    });
    const stream = (docs: string[]) => docs.flatMap((doc) => [gpt2.eotId, ...gpt2.encode(doc)]);
    // Every 20th document is held out: indices 19 and 39 of the 40.
    const val = stream(texts.filter((_, i) => i % 20 === 19));
    const train = stream(texts.filter((_, i) => i % 20 !== 19));
    const names = Array.from(Deno.readDirSync(`${dir}/out`), (e) => e.name).sort();
    const trainShards = Math.ceil(train.length / 300);
    assert.equal(names.length, 1 + trainShards);
    assert.equal(names[0], "d_train_000001.bin");
    assert.ok(names.includes("d_val_000000.bin"));
    assert.deepEqual(result.files.map((f) => f.split("/").pop()), [
      "d_val_000000.bin",
      ...names.filter((n) => n.includes("train")),
    ]);

    const valInfo = await readBinHeader(`${dir}/out/d_val_000000.bin`);
    assert.deepEqual(Array.from(await readBinTokens(valInfo, 0, valInfo.tokens)), val);
    const read: number[] = [];
    for (let i = 1; i <= trainShards; i++) {
      const info = await readBinHeader(`${dir}/out/d_train_${String(i).padStart(6, "0")}.bin`);
      if (i < trainShards) assert.equal(info.tokens, 300);
      read.push(...await readBinTokens(info, 0, info.tokens));
    }
    assert.deepEqual(read, train);
    assert.equal(result.trainTokens, train.length);
  });
});

Deno.test("max tokens stops early", async () => {
  await withJsonl(async (dir, path) => {
    const source = await openSource(path, { valDocuments: 5 }) as TextSource;
    const result = await writeShards({
      source,
      tokenizer: gpt2,
      outDir: `${dir}/out`,
      name: "d",
      shardTokens: 100,
      valTokens: 50,
      maxTokens: 250,
    });
    assert.equal(result.trainTokens, 250);
    assert.equal(result.valTokens, 50);
    assert.deepEqual(Array.from(Deno.readDirSync(`${dir}/out`), (e) => e.name).sort(), [
      "d_train_000001.bin",
      "d_train_000002.bin",
      "d_train_000003.bin",
      "d_val_000000.bin",
    ]);
  });
});

Deno.test("val tokens caps the val shard", async () => {
  await withJsonl(async (dir, path) => {
    const stream = (docs: string[]) => docs.flatMap((doc) => [gpt2.eotId, ...gpt2.encode(doc)]);
    const first = stream([texts[19]]);
    const cases = [
      // Room for document 19 only, so held-out document 39 goes to train.
      { valTokens: first.length, val: first, train: stream(texts.filter((_, i) => i !== 19)) },
      // No validation shard, and every document is train.
      { valTokens: 0, val: [], train: stream(texts) },
    ];
    for (const { valTokens, val, train } of cases) {
      const out = `${dir}/out${valTokens}`;
      const source = await openSource(path) as TextSource;
      const result = await writeShards({
        source,
        tokenizer: gpt2,
        outDir: out,
        name: "d",
        shardTokens: 100_000,
        valTokens,
      });
      assert.equal(result.valTokens, val.length, `valTokens ${valTokens}`);
      assert.equal(result.trainTokens, train.length, `valTokens ${valTokens}`);
      const trainInfo = await readBinHeader(`${out}/d_train_000001.bin`);
      assert.deepEqual(Array.from(await readBinTokens(trainInfo, 0, trainInfo.tokens)), train);
      const names = Array.from(Deno.readDirSync(out), (e) => e.name);
      assert.equal(names.includes("d_val_000000.bin"), val.length > 0, `valTokens ${valTokens}`);
    }
  });
});

Deno.test("bad output directory is rejected", async () => {
  await withJsonl(async (dir, path) => {
    await Deno.writeTextFile(`${dir}/file`, "");
    for (const outDir of [`${dir}/file`, `${dir}/file/sub`]) {
      const source = await openSource(path) as TextSource;
      const options = { source, tokenizer: gpt2, outDir, name: "d", shardTokens: 100 };
      const error = await rejectsWith(() => writeShards({ ...options, valTokens: 10 }), DataError);
      assertOneLineNaming(error, outDir, "cannot be created");
    }
    const source = await openSource(path) as TextSource;
    const error = await rejectsWith(
      () =>
        writeShards({
          source,
          tokenizer: gpt2,
          outDir: `${dir}/out`,
          name: "a/b",
          shardTokens: 100,
          valTokens: 10,
        }),
      DataError,
    );
    assertOneLineNaming(error, '"a/b"', "path separator");
  });
});

/** Runs `deno task tokenize` with `args`; returns its exit code and trimmed stderr. */
async function tokenize(args: string[]): Promise<{ code: number; message: string }> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./tokenize.ts", import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stderr } = await command.output();
  return { code, message: new TextDecoder().decode(stderr).trim() };
}

/** Checks a tokenize failure: exit code 2 and one "error: " line that contains `parts`. */
function assertUsageError(result: { code: number; message: string }, ...parts: string[]): void {
  const { code, message } = result;
  assert.equal(code, 2, message);
  assert.equal(message.split("\n").length, 1, message);
  assert.ok(message.startsWith("error: "), message);
  for (const part of parts) assert.ok(message.includes(part), `lacks "${part}": ${message}`);
}

Deno.test("tokenize CLI rejects bad flags", async () => {
  const cases: [string[], string[]][] = [
    [["--dta", "brown"], ["--dta", "did you mean --data?", "--help"]],
    [["--shard-tokns", "5"], ["did you mean --shard-tokens?"]],
    [["--data", "brown", "--out"], ["--out is missing its value"]],
    [["--data", "brown", "--out", "o", "extra"], ['"extra"']],
    [["--data", "brown", "--out", "o", "--shard-tokens", "0"], ["--shard-tokens 0", "a positive"]],
    [["--data", "brown", "--out", "o", "--max-tokens", "1.5"], ["--max-tokens 1.5", "a positive"]],
    [["--data", "brown", "--out", "o", "--val-tokens=-3"], ["--val-tokens -3", "0 or a positive"]],
    [["--data", "brown", "--out", "o", "--val-tokens", "-3"], ["write it as --val-tokens=VALUE"]],
    [["--data", "brown", "--out", "o", "--help=x"], ["--help takes no value"]],
  ];
  for (const [args, parts] of cases) assertUsageError(await tokenize(args), ...parts);
});

Deno.test("tokenize CLI writes a small source", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // 60 paragraphs: 3 are held out for validation and 57 are train.
    const paragraphs = Array.from({ length: 60 }, (_, i) => `Paragraph ${i} of a small file.`);
    await Deno.writeTextFile(`${dir}/small.txt`, paragraphs.join("\n\n") + "\n");
    const result = await tokenize([
      "--data",
      `${dir}/small.txt`,
      "--out",
      `${dir}/out`,
      "--shard-tokens",
      "1K",
    ]);
    assert.equal(result.code, 0, result.message);
    const stream = (docs: string[]) => docs.flatMap((doc) => [gpt2.eotId, ...gpt2.encode(doc)]);
    const val = await readBinHeader(`${dir}/out/small_val_000000.bin`);
    const expected = stream(paragraphs.filter((_, i) => i % 20 === 19));
    assert.deepEqual(Array.from(await readBinTokens(val, 0, val.tokens)), expected);
    const train = await readBinHeader(`${dir}/out/small_train_000001.bin`);
    assert.equal(train.tokens, stream(paragraphs).length - expected.length);

    const blocked = await tokenize(["--data", `${dir}/small.txt`, "--out", `${dir}/small.txt/out`]);
    assertUsageError(blocked, `${dir}/small.txt/out`, "cannot be created");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenize CLI leaves nothing on error", async () => {
  await withJsonl(async (dir, path) => {
    // A broken line after 40 good documents fails the run after shards were finished.
    await Deno.writeTextFile(path, '{"text": \n', { append: true });
    const out = `${dir}/out`;
    const command = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./tokenize.ts", import.meta.url).pathname,
        "--data",
        path,
        "--out",
        out,
        "--shard-tokens",
        "100",
        "--val-tokens",
        "50",
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const { code, stderr } = await command.output();
    const message = new TextDecoder().decode(stderr).trim();
    assert.equal(code, 2, message);
    assert.equal(message.split("\n").length, 1, message);
    assert.ok(message.includes(path), message);
    assert.ok(message.startsWith("error: "), message);
    assert.ok(message.includes("line 41 (byte "), message);
    assert.deepEqual(Array.from(Deno.readDirSync(out)), []);
  });
});

Deno.test("tokenize CLI rejects truncated parquet", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/bad.parquet`, new TextEncoder().encode("PAR1 not really parquet"));
    const command = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./tokenize.ts", import.meta.url).pathname,
        "--data",
        `${dir}/bad.parquet`,
        "--out",
        `${dir}/out`,
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const { code, stderr } = await command.output();
    const message = new TextDecoder().decode(stderr).trim();
    assert.equal(code, 2, message);
    assert.ok(message.includes(`${dir}/bad.parquet`), message);
    assert.deepEqual(Array.from(Deno.readDirSync(`${dir}/out`)), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
