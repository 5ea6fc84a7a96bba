import assert from "node:assert/strict";
import { readBinHeader, readBinTokens } from "./bin_shard.ts";
import { openSource, type TextSource } from "./source.ts";
import { loadTokenizer } from "./tokenizer.ts";
import { writeShards } from "./write_shards.ts";

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
    const val = stream(texts.slice(0, 5));
    const train = stream(texts.slice(5));
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
    assert.ok(message.includes("line 41"), message);
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
