import assert from "node:assert/strict";
import { detagBrown, listBrownFiles, openBrownSource, readBrownDocument } from "./brown.ts";

Deno.test("detag joins punctuation and quotes", () => {
  const tagged = "\n\n\tHe/pps said/vbd ,/, ``/`` It's/pps+bez 1-1/2/cd miles/nns ''/'' ./.\n" +
    "\tWhy/wrb (/( really/rb )/) ?/.\n\n\n\tA/at '/' word/nn '/' here/rb ;/. Jr./np ./.\n";
  assert.equal(
    detagBrown(tagged),
    "He said, \"It's 1-1/2 miles\". Why (really)?\n\nA 'word' here; Jr.",
  );
});

Deno.test("corpus has 500 files in 15 genres", () => {
  const files = listBrownFiles();
  assert.equal(files.length, 500);
  assert.equal(new Set(files.map((f) => f.genre)).size, 15);
  assert.deepEqual(files[0], { id: "ca01", genre: "news" });
});

Deno.test("first document starts as published", async () => {
  const text = await readBrownDocument("ca01");
  assert.ok(
    text.startsWith("The Fulton County Grand Jury said Friday an investigation of Atlanta's"),
    text.slice(0, 80),
  );
  assert.ok(!/\/[a-z]/.test(text.slice(0, 2000)), "tags left in text");
});

Deno.test("validation split is 25 spread files", async () => {
  const source = openBrownSource();
  const val = listBrownFiles().filter((_, i) => source.splitOf(0, i) === "val");
  assert.equal(val.length, 25);
  assert.equal(new Set(val.map((f) => f.genre)).size >= 10, true);
  const blocks = [];
  for await (const block of source.readBlocks(0, 0, 0)) blocks.push(block);
  assert.equal(blocks.length, 1);
  assert.equal(blocks[0].docs.length, 500);
});
