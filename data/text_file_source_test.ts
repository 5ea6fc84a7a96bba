import assert from "node:assert/strict";
import { DataError } from "./errors.ts";
import { openSource, type TextSource } from "./source.ts";
import { assertOneLineNaming, rejectsWith } from "./testing/assert_error.ts";

async function blocksOf(source: TextSource, cursor = 0, docBase = 0) {
  const out = [];
  for await (const block of source.readBlocks(0, cursor, docBase)) out.push(block);
  return out;
}

Deno.test("jsonl blocks resume at byte offsets", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const texts = Array.from({ length: 2500 }, (_, i) => `doc ${i} ü "quoted"`);
    await Deno.writeTextFile(
      `${dir}/d.jsonl`,
      texts.map((text, i) => JSON.stringify({ id: i, text })).join("\n"),
    );
    const source = await openSource(`${dir}/d.jsonl`) as TextSource;
    const blocks = await blocksOf(source);
    assert.deepEqual(blocks.map((b) => b.docs.length), [1024, 1024, 452]);
    assert.deepEqual(blocks.flatMap((b) => b.docs), texts);
    const resumed = await blocksOf(source, blocks[1].cursor, blocks[1].docBase);
    assert.deepEqual(resumed.flatMap((b) => b.docs), texts.slice(1024));
    assert.equal(resumed[0].docBase, 1024);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("text paragraphs are documents", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/t.txt`,
      "First Citizen:\nBefore we proceed.\n\n\n  \nAll:\r\nSpeak.\n",
    );
    const source = await openSource(`${dir}/t.txt`) as TextSource;
    const [block] = await blocksOf(source);
    assert.deepEqual(block.docs, ["First Citizen:\nBefore we proceed.", "All:\nSpeak."]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("jsonl invalid UTF-8 and empty documents", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const enc = new TextEncoder();
    const bytes = new Uint8Array([
      ...enc.encode('{"text": "ok"}\n{"text": "bad '),
      0xc3, // a lead byte without its continuation byte
      ...enc.encode(' byte"}\n{"text": ""}\n{"text": "end"}\n'),
    ]);
    await Deno.writeFile(`${dir}/u.jsonl`, bytes);
    const source = await openSource(`${dir}/u.jsonl`) as TextSource;
    const [block] = await blocksOf(source);
    assert.deepEqual(block.docs, ["ok", "bad \uFFFD byte", "", "end"]);
    assert.deepEqual(source.stats, {
      documents: 4,
      emptyDocuments: 1,
      invalidUtf8Documents: 1,
      filteredDocuments: 0,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad text sources are rejected", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/j.jsonl`, '{"text": "a"}\n{"text": \n');
    await Deno.writeTextFile(`${dir}/k.jsonl`, '{"body": "a"}\n');
    const cases = [["j.jsonl", "line 2 (byte 14) is not valid JSON"], ["k.jsonl", '"text"']];
    for (const [name, problem] of cases) {
      const source = await openSource(`${dir}/${name}`) as TextSource;
      const error = await rejectsWith(() => blocksOf(source), DataError);
      assertOneLineNaming(error, `${dir}/${name}`, problem);
    }
    const missing = await rejectsWith(() => openSource(`${dir}/none.txt`), DataError);
    assertOneLineNaming(missing, `${dir}/none.txt`);
    await Deno.writeTextFile(`${dir}/x.csv`, "a,b\n");
    const unknown = await rejectsWith(() => openSource(`${dir}/x.csv`), DataError);
    assertOneLineNaming(unknown, `${dir}/x.csv`, "extension");
    const glob = await rejectsWith(() => openSource(`${dir}/*.parquet`), DataError);
    assertOneLineNaming(glob, "matches no files");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("jsonl error after resume names line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // 1500 good lines, a blank line, then a broken one: line 1502 of the file.
    const lines = Array.from({ length: 1500 }, (_, i) => JSON.stringify({ text: `doc ${i}` }));
    const good = lines.join("\n") + "\n\n";
    await Deno.writeTextFile(`${dir}/r.jsonl`, good + "{broken\n");
    const source = await openSource(`${dir}/r.jsonl`) as TextSource;
    // A reader from the start and one resumed at the broken line report the same line.
    const offset = new TextEncoder().encode(good).length;
    for (const [cursor, docBase] of [[0, 0], [offset, 1500]]) {
      const error = await rejectsWith(() => blocksOf(source, cursor, docBase), DataError);
      assertOneLineNaming(error, `${dir}/r.jsonl`, `line 1502 (byte ${offset})`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
