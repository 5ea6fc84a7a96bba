// deno-lint-ignore-file no-import-prefix -- data/ pins its npm dependencies inline.
import assert from "node:assert/strict";
import { parquetWriteBuffer } from "npm:hyparquet-writer@0.17.0";
import { parquetMetadata } from "npm:hyparquet@1.33.0";
import { DataError } from "./errors.ts";
import { FINEWEB_EDU_10BT_URLS } from "./parquet_source.ts";
import { createLoader } from "./loader.ts";
import { Rng } from "./prng.ts";
import { openSource, type TextSource } from "./source.ts";
import { assertOneLineNaming, rejectsWith } from "./testing/assert_error.ts";
import { loadTokenizer } from "./tokenizer.ts";

const ROWS = 200;
const ROWS_PER_GROUP = 40;
const WORDS = [
  "learning",
  "energy",
  "the",
  "cell",
  "history",
  "of",
  "water",
  "students",
  "river",
  "proof",
];

/** Seeded documents of 150-400 words, so Snappy cannot shrink the file much below 250 kB. */
function makeDocs(): string[] {
  const rng = new Rng(2024);
  return Array.from({ length: ROWS }, (_, i) => {
    const words = [`Document ${i}.`];
    const n = 150 + rng.below(250);
    for (let w = 0; w < n; w++) words.push(WORDS[rng.below(WORDS.length)] + rng.below(1000));
    return words.join(" ");
  });
}

const docs = makeDocs();
const intScores = docs.map((_, i) => BigInt(i % 6));

/** Writes a file in FineWeb-Edu's column layout with hyparquet-writer, Snappy pages. */
function finewebParquet(): Uint8Array<ArrayBuffer> {
  const n = docs.length;
  const buffer = parquetWriteBuffer({
    columnData: [
      { name: "text", data: docs, type: "STRING" },
      { name: "id", data: docs.map((_, i) => `<urn:uuid:${i}>`), type: "STRING" },
      { name: "dump", data: Array(n).fill("CC-MAIN-2024-10"), type: "STRING" },
      { name: "url", data: docs.map((_, i) => `https://example.org/${i}`), type: "STRING" },
      { name: "file_path", data: Array(n).fill("s3://bucket/file.warc.gz"), type: "STRING" },
      { name: "language", data: Array(n).fill("en"), type: "STRING" },
      { name: "date", data: Array(n).fill("2024-02-20T10:00:00Z"), type: "STRING" },
      { name: "language_score", data: Array(n).fill(0.95), type: "DOUBLE" },
      { name: "token_count", data: docs.map((d) => BigInt(d.length >> 2)), type: "INT64" },
      { name: "score", data: intScores.map((s) => Number(s) + 0.25), type: "DOUBLE" },
      { name: "int_score", data: intScores, type: "INT64" },
    ],
    rowGroupSize: ROWS_PER_GROUP,
  });
  return new Uint8Array(buffer);
}

const fileBytes: Uint8Array<ArrayBuffer> = finewebParquet();

interface Served {
  method: string;
  path: string;
  range: string | null;
  bytes: number;
}

/** Serves the parquet bytes on 127.0.0.1: /ok honours Range, /norange ignores it, others are 404. */
function serve(): { url: string; log: Served[]; close: () => Promise<void> } {
  const log: Served[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (request) => {
    const path = new URL(request.url).pathname;
    const range = request.headers.get("range");
    const entry: Served = { method: request.method, path, range, bytes: 0 };
    log.push(entry);
    if (path !== "/ok.parquet" && path !== "/norange.parquet") {
      return new Response("missing", { status: 404 });
    }
    const size = fileBytes.length;
    if (request.method === "HEAD") {
      return new Response(null, {
        headers: { "content-length": String(size), "accept-ranges": "bytes" },
      });
    }
    const match = range?.match(/^bytes=(\d+)-(\d*)$/);
    if (path === "/norange.parquet" || !match) {
      entry.bytes = size;
      return new Response(fileBytes);
    }
    const start = Number(match[1]);
    const end = match[2] === "" ? size - 1 : Math.min(Number(match[2]), size - 1);
    const body = fileBytes.slice(start, end + 1);
    entry.bytes = body.length;
    return new Response(body, {
      status: 206,
      headers: {
        "content-range": `bytes ${start}-${end}/${size}`,
        "content-length": String(body.length),
      },
    });
  });
  const { port } = server.addr as Deno.NetAddr;
  return { url: `http://127.0.0.1:${port}`, log, close: () => server.shutdown() };
}

async function allDocs(source: TextSource): Promise<string[]> {
  const out: string[] = [];
  for (let shard = 0; shard < source.shards.length; shard++) {
    for await (const block of source.readBlocks(shard, 0, 0)) out.push(...block.docs);
  }
  return out;
}

Deno.test("test file is snappy with five row groups", () => {
  const metadata = parquetMetadata(fileBytes.buffer as ArrayBuffer);
  assert.equal(metadata.row_groups.length, ROWS / ROWS_PER_GROUP);
  assert.equal(metadata.row_groups[0].columns[0].meta_data?.codec, "SNAPPY");
  assert.ok(fileBytes.length > 200_000, `file has ${fileBytes.length} bytes`);
});

Deno.test("parquet over HTTP streams ranges", async () => {
  const server = serve();
  try {
    const source = await openSource(`${server.url}/ok.parquet`) as TextSource;
    assert.deepEqual(await allDocs(source), docs);
    const gets = server.log.filter((r) => r.method === "GET");
    assert.ok(gets.length >= 2, `only ${gets.length} GET requests`);
    for (const request of gets) {
      assert.ok(
        request.range?.startsWith("bytes="),
        `GET without Range: ${JSON.stringify(request)}`,
      );
      assert.ok(request.bytes < fileBytes.length, `a request fetched the whole file`);
    }
    // One request for the footer, then one per row group for its text column chunk.
    assert.equal(gets.length, 1 + ROWS / ROWS_PER_GROUP, gets.map((r) => r.range).join(", "));
  } finally {
    await server.close();
  }
});

Deno.test("parquet resume reads one row group", async () => {
  const server = serve();
  try {
    const source = await openSource(`${server.url}/ok.parquet`) as TextSource;
    const blocks = source.readBlocks(0, 3, 3 * ROWS_PER_GROUP);
    const first = await blocks.next();
    await blocks.return(undefined);
    assert.equal(first.done, false);
    if (first.done) return;
    assert.equal(first.value.docBase, 120);
    assert.deepEqual(first.value.docs, docs.slice(120, 160));
    const served = server.log.filter((r) => r.method === "GET").reduce(
      (sum, r) => sum + r.bytes,
      0,
    );
    assert.ok(served < fileBytes.length / 2, `served ${served} of ${fileBytes.length} bytes`);
  } finally {
    await server.close();
  }
});

Deno.test("parquet score filters", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/f.parquet`, fileBytes);
    const source = await openSource(`${dir}/f.parquet`, { minIntScore: 4 }) as TextSource;
    const kept = (await allDocs(source)).filter((d) => d !== "");
    assert.deepEqual(kept, docs.filter((_, i) => intScores[i] >= 4n));
    assert.equal(source.stats.filteredDocuments, docs.length - kept.length);
    const byScore = await openSource(`${dir}/f.parquet`, { minScore: 5 }) as TextSource;
    assert.deepEqual(
      (await allDocs(byScore)).filter((d) => d !== ""),
      docs.filter((_, i) => intScores[i] === 5n),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loader yields parquet documents in order", async () => {
  const server = serve();
  const gpt2 = await loadTokenizer("gpt2");
  const loader = await createLoader({
    source: `${server.url}/ok.parquet`,
    tokenizer: gpt2,
    batch: 2,
    seqLen: 64,
    split: "val",
  });
  try {
    // The validation split is every 20th row, so it starts with rows 19 and 39.
    const stream = [gpt2.eotId, ...gpt2.encode(docs[19]), gpt2.eotId, ...gpt2.encode(docs[39])];
    const { inputs, targets } = await loader.next();
    assert.deepEqual(Array.from(inputs.subarray(0, 64)), stream.slice(0, 64));
    assert.deepEqual(Array.from(targets.subarray(0, 64)), stream.slice(1, 65));
    assert.deepEqual(Array.from(inputs.subarray(64, 128)), stream.slice(64, 128));
  } finally {
    loader.close();
    await server.close();
  }
});

Deno.test("HTTP 404 and ignored Range are rejected", async () => {
  const server = serve();
  try {
    const missing = `${server.url}/missing.parquet`;
    const notFound = await rejectsWith(async () => {
      const source = await openSource(missing) as TextSource;
      await allDocs(source);
    }, DataError);
    assertOneLineNaming(notFound, missing, "404");

    const noRange = `${server.url}/norange.parquet`;
    const ignored = await rejectsWith(async () => {
      const source = await openSource(noRange) as TextSource;
      await allDocs(source);
    }, DataError);
    assertOneLineNaming(ignored, noRange, "Range");
  } finally {
    await server.close();
  }
});

Deno.test("bad parquet files are rejected", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/cut.parquet`, fileBytes.slice(0, fileBytes.length >> 1));
    await Deno.writeFile(`${dir}/empty.parquet`, new Uint8Array(0));
    await Deno.writeFile(
      `${dir}/notext.parquet`,
      new Uint8Array(
        parquetWriteBuffer({ columnData: [{ name: "body", data: ["a", "b"], type: "STRING" }] }),
      ),
    );
    const cases: [string, string][] = [["cut.parquet", "truncated"], ["empty.parquet", "empty"], [
      "notext.parquet",
      '"text"',
    ]];
    for (const [name, problem] of cases) {
      const error = await rejectsWith(async () => {
        const source = await openSource(`${dir}/${name}`) as TextSource;
        await allDocs(source);
      }, DataError);
      assertOneLineNaming(error, `${dir}/${name}`, problem);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("invalid UTF-8 and empty documents", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = [
      new TextEncoder().encode("good one"),
      new Uint8Array([0x61, 0xff, 0x62]), // 0xff never occurs in UTF-8
      new Uint8Array(0),
      new TextEncoder().encode("   \n "),
      new TextEncoder().encode("last"),
    ];
    await Deno.writeFile(
      `${dir}/raw.parquet`,
      new Uint8Array(
        parquetWriteBuffer({ columnData: [{ name: "text", data: bytes, type: "BYTE_ARRAY" }] }),
      ),
    );
    const source = await openSource(`${dir}/raw.parquet`) as TextSource;
    assert.deepEqual(await allDocs(source), ["good one", "a\uFFFDb", "", "", "last"]);
    assert.deepEqual(source.stats, {
      documents: 5,
      emptyDocuments: 2,
      invalidUtf8Documents: 1,
      filteredDocuments: 0,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fineweb-edu lists 14 shard URLs", () => {
  assert.equal(FINEWEB_EDU_10BT_URLS.length, 14);
  assert.equal(
    FINEWEB_EDU_10BT_URLS[0],
    "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT/000_00000.parquet",
  );
  assert.ok(FINEWEB_EDU_10BT_URLS[13].endsWith("/sample/10BT/013_00000.parquet"));
});
