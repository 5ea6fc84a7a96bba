import assert from "node:assert/strict";
import { BinShardWriter, HEADER_BYTES, readBinHeader, readBinTokens } from "./bin_shard.ts";
import { DataError } from "./errors.ts";
import { assertOneLineNaming, rejectsWith } from "./testing/assert_error.ts";
import { sharedFile } from "./testing/shared_data.ts";
import { loadTokenizer } from "./tokenizer.ts";

/** Builds a shard's bytes by hand from the llm.c layout, independently of BinShardWriter. */
function shardBytes(
  magic: number,
  version: number,
  count: number,
  ids: number[],
  width: 2 | 4,
): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES + ids.length * width);
  const view = new DataView(bytes.buffer);
  view.setInt32(0, magic, true);
  view.setInt32(4, version, true);
  view.setInt32(8, count, true);
  ids.forEach((id, i) => {
    if (width === 2) view.setUint16(HEADER_BYTES + 2 * i, id, true);
    else view.setUint32(HEADER_BYTES + 4 * i, id, true);
  });
  return bytes;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "bin-shard-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("writer output matches llm.c layout", async () => {
  await withTempDir(async (dir) => {
    const ids = [50256, 0, 1, 65535, 12345];
    const writer = await BinShardWriter.create(`${dir}/a.bin`, 2);
    await writer.write(ids.slice(0, 2));
    await writer.write(ids.slice(2));
    await writer.finish();
    assert.deepEqual(await Deno.readFile(`${dir}/a.bin`), shardBytes(20240520, 1, 5, ids, 2));
    assert.deepEqual(Array.from(Deno.readDirSync(dir), (e) => e.name), ["a.bin"]);
  });
});

Deno.test("uint32 shard round trip", async () => {
  await withTempDir(async (dir) => {
    const ids = [151643, 0, 70000, 9707];
    const writer = await BinShardWriter.create(`${dir}/q.bin`, 4);
    await writer.write(ids);
    await writer.finish();
    assert.deepEqual(await Deno.readFile(`${dir}/q.bin`), shardBytes(20240801, 7, 4, ids, 4));
    const info = await readBinHeader(`${dir}/q.bin`);
    assert.deepEqual(info, { path: `${dir}/q.bin`, tokens: 4, bytesPerToken: 4 });
    assert.deepEqual(Array.from(await readBinTokens(info, 1, 3)), [0, 70000, 9707]);
  });
});

Deno.test("reader reads a hand-built shard", async () => {
  await withTempDir(async (dir) => {
    const ids = Array.from({ length: 1000 }, (_, i) => (i * 7919) % 50257);
    await Deno.writeFile(`${dir}/h.bin`, shardBytes(20240520, 1, ids.length, ids, 2));
    const info = await readBinHeader(`${dir}/h.bin`);
    assert.equal(info.tokens, 1000);
    assert.deepEqual(Array.from(await readBinTokens(info, 990, 10)), ids.slice(990));
  });
});

Deno.test("writer abort leaves no file", async () => {
  await withTempDir(async (dir) => {
    const writer = await BinShardWriter.create(`${dir}/x.bin`, 2);
    await writer.write([1, 2, 3]);
    await assert.rejects(() => writer.write([70000]), RangeError);
    await writer.abort();
    assert.deepEqual(Array.from(Deno.readDirSync(dir)), []);
  });
});

Deno.test("bad shards are rejected", async () => {
  await withTempDir(async (dir) => {
    const cases: [string, Uint8Array, string][] = [
      ["empty.bin", new Uint8Array(0), "empty"],
      ["short.bin", new Uint8Array(100), "truncated"],
      ["magic.bin", shardBytes(12345, 1, 3, [1, 2, 3], 2), "magic 12345"],
      ["count.bin", shardBytes(20240520, 1, 10, [1, 2, 3], 2), "header records 10 tokens"],
      ["version.bin", shardBytes(20240520, 7, 3, [1, 2, 3], 2), "version 7"],
    ];
    for (const [name, bytes, problem] of cases) {
      await Deno.writeFile(`${dir}/${name}`, bytes);
      const error = await rejectsWith(() => readBinHeader(`${dir}/${name}`), DataError);
      assertOneLineNaming(error, `${dir}/${name}`, problem);
    }
    // A file of another format gets the command that writes shards.
    const error = await rejectsWith(() => readBinHeader(`${dir}/magic.bin`), DataError);
    assertOneLineNaming(error, "deno task tokenize");
  });
});

const shakespeare = sharedFile("llmc_bin_shard/tiny_shakespeare_val.bin");

Deno.test({
  name: "tiny shakespeare shard decodes",
  ignore: shakespeare === null,
  async fn() {
    const info = await readBinHeader(shakespeare!);
    assert.deepEqual({ tokens: info.tokens, bytesPerToken: info.bytesPerToken }, {
      tokens: 32768,
      bytesPerToken: 2,
    });
    const gpt2 = await loadTokenizer("gpt2");
    const text = gpt2.decode(await readBinTokens(info, 0, 8));
    assert.ok(text.startsWith("<|endoftext|>First Citizen"), text);
  },
});
