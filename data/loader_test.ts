import assert from "node:assert/strict";
import { BinShardWriter } from "./bin_shard.ts";
import { DataError } from "./errors.ts";
import { type Batch, createLoader, type LoaderOptions } from "./loader.ts";
import { openSource } from "./source.ts";
import { assertOneLineNaming, rejectsWith } from "./testing/assert_error.ts";
import { loadTokenizer } from "./tokenizer.ts";

const gpt2 = await loadTokenizer("gpt2");
const brown = await openSource("brown");

async function take(
  options: LoaderOptions,
  count: number,
): Promise<{ batches: Batch[]; state: unknown }> {
  const loader = await createLoader(options);
  try {
    const batches: Batch[] = [];
    for (let i = 0; i < count; i++) batches.push(await loader.next());
    return { batches, state: JSON.parse(JSON.stringify(loader.state())) };
  } finally {
    loader.close();
  }
}

/** Writes shard "<dir>/t_train_000001.bin" holding ids 0..n-1 (mod 50000), so positions are readable. */
async function countingShard(dir: string, n: number): Promise<void> {
  const writer = await BinShardWriter.create(`${dir}/t_train_000001.bin`, 2);
  await writer.write(Array.from({ length: n }, (_, i) => i % 50000));
  await writer.finish();
  const val = await BinShardWriter.create(`${dir}/t_val_000000.bin`, 2);
  await val.write(Array.from({ length: 1000 }, (_, i) => 50000 + (i % 200)));
  await val.finish();
}

const textOptions: LoaderOptions = {
  source: brown,
  tokenizer: gpt2,
  batch: 3,
  seqLen: 32,
  seed: 5,
  worker: false,
};

Deno.test("same seed gives same batches", async () => {
  const a = await take(textOptions, 6);
  const b = await take(textOptions, 6);
  assert.deepEqual(a.batches, b.batches);
  const c = await take({ ...textOptions, seed: 6 }, 6);
  assert.notDeepEqual(a.batches, c.batches);
});

Deno.test("targets are inputs shifted by one", async () => {
  const { batches } = await take(textOptions, 2);
  for (const { inputs, targets } of batches) {
    for (let row = 0; row < 3; row++) {
      assert.deepEqual(
        inputs.subarray(row * 32 + 1, row * 32 + 32),
        targets.subarray(row * 32, row * 32 + 31),
      );
    }
  }
  // Consecutive sequences share one token: the next row starts with this row's last target.
  const [{ inputs, targets }] = batches;
  assert.equal(inputs[32], targets[31]);
});

Deno.test("resume matches uninterrupted text run", async () => {
  const full = await take(textOptions, 40);
  for (const k of [1, 7, 23]) {
    const first = await take(textOptions, k);
    const resumed = await take({ ...textOptions, state: first.state as never }, 40 - k);
    assert.deepEqual(resumed.batches, full.batches.slice(k), `resume after ${k}`);
  }
});

Deno.test("worker loader matches inline loader", async () => {
  const spec = { source: "brown", tokenizer: "gpt2", batch: 2, seqLen: 48, seed: 3 };
  const inline = await take({ ...spec, worker: false }, 8);
  const worker = await take({ ...spec, worker: true }, 8);
  assert.deepEqual(worker.batches, inline.batches);
  assert.deepEqual(worker.state, inline.state);
  const resumed = await take({
    ...spec,
    worker: true,
    state: (await take({ ...spec, worker: true }, 3)).state as never,
  }, 5);
  assert.deepEqual(resumed.batches, inline.batches.slice(3));
});

Deno.test("val split reads file order", async () => {
  const val = await take({ ...textOptions, split: "val" }, 1);
  const files = [];
  for await (const block of brown.kind === "text" ? brown.readBlocks(0, 0, 0) : []) {
    files.push(...block.docs);
  }
  // The first validation document is file index 19; its tokens open the stream.
  const expected = [gpt2.eotId, ...gpt2.encode(files[19])].slice(0, 32);
  assert.deepEqual(Array.from(val.batches[0].inputs.subarray(0, 32)), expected);
});

Deno.test("bin ranks see disjoint sequences", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const n = 16 * 100 + 1;
    await countingShard(dir, n);
    const starts = (batches: Batch[]) => batches.flatMap((b) => [b.inputs[0], b.inputs[16]]);
    const base = { source: dir, batch: 2, seqLen: 16, seed: 9, worldSize: 2, worker: false };
    const r0 = starts((await take({ ...base, rank: 0 }, 25)).batches);
    const r1 = starts((await take({ ...base, rank: 1 }, 25)).batches);
    const all = [...r0, ...r1].sort((a, b) => a - b);
    assert.deepEqual(all, Array.from({ length: 100 }, (_, k) => k * 16));
    assert.equal(new Set(r0).size, 50);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bin resume and shuffle", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await countingShard(dir, 16 * 64 + 1);
    const options = { source: dir, batch: 4, seqLen: 16, seed: 1, worker: false };
    const full = await take(options, 40);
    const first = await take(options, 13);
    const resumed = await take({ ...options, state: first.state as never }, 27);
    assert.deepEqual(resumed.batches, full.batches.slice(13));
    // Epoch 0 is 16 batches holding each of the 64 sequences once, in shuffled order.
    const starts = full.batches.slice(0, 16).flatMap((b) =>
      [0, 1, 2, 3].map((r) => b.inputs[r * 16])
    );
    assert.deepEqual(
      [...starts].sort((a, b) => a - b),
      Array.from({ length: 64 }, (_, k) => k * 16),
    );
    assert.notDeepEqual(starts, [...starts].sort((a, b) => a - b));
    const { inputs, targets } = full.batches[0];
    assert.equal(targets[15], inputs[0] + 16);
    const val = await take({ ...options, split: "val" }, 1);
    assert.deepEqual(
      Array.from(val.batches[0].inputs.subarray(0, 16)),
      Array.from({ length: 16 }, (_, i) => 50000 + i),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad loader options are rejected", async () => {
  const cases: [Partial<LoaderOptions>, string][] = [
    [{ batch: 0 }, "batch"],
    [{ seqLen: 1.5 }, "seqLen"],
    [{ rank: 2, worldSize: 2 }, "rank 2"],
    [{ split: "test" as never }, "split"],
  ];
  for (const [change, name] of cases) {
    const error = await rejectsWith(() => createLoader({ ...textOptions, ...change }), DataError);
    assertOneLineNaming(error, name);
  }
  const { state } = await take(textOptions, 1);
  const error = await rejectsWith(
    () => createLoader({ ...textOptions, seqLen: 64, state: state as never }),
    DataError,
  );
  assertOneLineNaming(error, "seqLen 32");
});

Deno.test("split without data is rejected", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/a.jsonl`, '{"text": "only one short document"}\n');
    await Deno.writeTextFile(`${dir}/empty.jsonl`, '{"text": ""}\n{"text": " "}\n');
    const base = { tokenizer: gpt2, batch: 1, seqLen: 8, worker: false };
    const cases: [Partial<LoaderOptions>, string[]][] = [
      // One document is too few for the validation split, which takes every 20th.
      [{ source: `${dir}/a.jsonl`, split: "val" }, [
        "no val data (documents read 1, empty 0",
        "every 20th document",
      ]],
      [{ source: `${dir}/empty.jsonl` }, [
        "no train data (documents read 2, empty 2",
        "use a larger source",
      ]],
      [{ source: `${dir}/a.jsonl`, rank: 1, worldSize: 2 }, ["rank 1 of 2", "fewer ranks"]],
    ];
    for (const [change, parts] of cases) {
      const loader = await createLoader({ ...base, source: "", ...change });
      const error = await rejectsWith(() => loader.next(), DataError);
      loader.close();
      assertOneLineNaming(error, `${dir}/`, ...parts);
      if (change.worldSize === undefined) {
        assert.ok(!error.message.includes("rank"), error.message);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("small text source has both splits", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // 200 paragraphs: 10 are validation (indices 19, 39, ...) and 190 are train.
    const paragraphs = Array.from({ length: 200 }, (_, i) => `Paragraph ${i} of a small file.`);
    await Deno.writeTextFile(`${dir}/small.txt`, paragraphs.join("\n\n") + "\n");
    const source = await openSource(`${dir}/small.txt`);
    const options = { source, tokenizer: gpt2, batch: 2, seqLen: 16, worker: false };
    const val = await take({ ...options, split: "val" }, 1);
    const expected = [gpt2.eotId, ...gpt2.encode(paragraphs[19])];
    assert.deepEqual(Array.from(val.batches[0].inputs.subarray(0, expected.length)), expected);

    // The first train epoch contains each of the 190 train paragraphs once.
    const trainParagraphs = paragraphs.filter((_, i) => i % 20 !== 19);
    const epochTokens = trainParagraphs.reduce((sum, p) => sum + 1 + gpt2.encode(p).length, 0);
    const train = await take(options, Math.ceil(epochTokens / 32));
    const ids = train.batches.flatMap((b) => Array.from(b.inputs));
    const text = gpt2.decode(ids.filter((id) => id !== gpt2.eotId));
    for (const [i, paragraph] of paragraphs.entries()) {
      assert.equal(text.includes(paragraph), i % 20 !== 19, paragraph);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
