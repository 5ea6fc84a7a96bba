import assert from "node:assert/strict";
import { assertOneLineNaming, rejectsWith } from "./testing/assert_error.ts";
import { readBrownDocument } from "./brown.ts";
import { DataError } from "./errors.ts";
import { Rng } from "./prng.ts";
import { GPT2_PATTERN, QWEN2_PATTERN, ReferenceBpe } from "./testing/reference_bpe.ts";
import { randomText } from "./testing/random_text.ts";
import { sharedFile } from "./testing/shared_data.ts";
import { loadTokenizer } from "./tokenizer.ts";

const gpt2 = await loadTokenizer("gpt2");
const qwen = await loadTokenizer("qwen2.5");

// Reference ids from the published vocabularies: GPT-2 "Hello"=15496 ","=11 "Ġworld"=995,
// Qwen2.5 "Hello"=9707 ","=11 "Ġworld"=1879.
Deno.test("gpt2 encodes Hello, world", () => {
  assert.deepEqual(gpt2.encode("Hello, world"), [15496, 11, 995]);
  assert.deepEqual(gpt2.eotId, 50256);
  assert.deepEqual(gpt2.vocabSize, 50257);
});

Deno.test("qwen2.5 encodes Hello, world", () => {
  assert.deepEqual(qwen.encode("Hello, world"), [9707, 11, 1879]);
  assert.deepEqual(qwen.eotId, 151643);
  assert.deepEqual(qwen.vocabSize, 151665);
});

Deno.test("qwen3 keeps four extra ids", async () => {
  const qwen3 = await loadTokenizer("qwen3");
  assert.deepEqual(qwen3.vocabSize, 151669);
  assert.deepEqual(qwen3.decode([151667]), "<think>");
});

Deno.test("endoftext in text stays plain text", () => {
  for (const tokenizer of [gpt2, qwen]) {
    const ids = tokenizer.encode("a<|endoftext|>b");
    assert.ok(!ids.includes(tokenizer.eotId), `${tokenizer.name} emitted the special id`);
    assert.deepEqual(tokenizer.decode(ids), "a<|endoftext|>b");
    assert.deepEqual(tokenizer.decode([tokenizer.eotId]), "<|endoftext|>");
  }
});

Deno.test("round trip of seeded random Unicode", () => {
  const rng = new Rng(1234);
  for (let i = 0; i < 200; i++) {
    const text = randomText(rng, 1 + rng.below(80));
    assert.deepEqual(gpt2.decode(gpt2.encode(text)), text, `gpt2 case ${i}`);
    // Qwen's tokenizer.json normalises to NFC first, so only NFC text survives unchanged.
    const nfc = text.normalize("NFC");
    assert.deepEqual(qwen.decode(qwen.encode(nfc)), nfc, `qwen case ${i}`);
  }
});

Deno.test("round trip of hard cases", () => {
  const cases = [
    "😀👍🏽 family 👨‍👩‍👧",
    "日本語のテキスト、漢字。",
    "\u0301 lone mark",
    "e\u0301\u0302",
    "  \n\n\t x  ",
    "",
  ];
  for (const text of cases) {
    assert.deepEqual(gpt2.decode(gpt2.encode(text)), text);
    assert.deepEqual(qwen.decode(qwen.encode(text.normalize("NFC"))), text.normalize("NFC"));
  }
  assert.deepEqual(qwen.encode("e\u0301"), qwen.encode("\u00e9"));
});

const gpt2Dir = sharedFile("gpt2_tokenizer/encoder.json") && sharedFile("gpt2_tokenizer/vocab.bpe")
  ? sharedFile("gpt2_tokenizer/")!
  : null;
const qwenJson = sharedFile("qwen_tokenizer/tokenizer.json");

Deno.test({
  name: "gpt2 matches reference BPE",
  ignore: gpt2Dir === null,
  async fn() {
    const vocab = JSON.parse(await Deno.readTextFile(`${gpt2Dir}encoder.json`));
    const merges = (await Deno.readTextFile(`${gpt2Dir}vocab.bpe`)).split("\n")
      .filter((line) => line && !line.startsWith("#version")).map((line) => line.split(" "));
    const reference = new ReferenceBpe(vocab, merges, GPT2_PATTERN);
    const text = (await readBrownDocument("ca01")).slice(0, 4000);
    assert.deepEqual(gpt2.encode(text), reference.encode(text));
    const rng = new Rng(99);
    for (let i = 0; i < 30; i++) {
      const sample = randomText(rng, 60);
      assert.deepEqual(gpt2.encode(sample), reference.encode(sample), `case ${i}`);
    }
    // The same files through the tokenizer.json path, a second implementation.
    const fromFiles = await loadTokenizer(gpt2Dir!);
    assert.deepEqual(fromFiles.encode(text), reference.encode(text));
    assert.deepEqual(fromFiles.eotId, 50256);
  },
});

Deno.test({
  name: "qwen2.5 matches reference BPE",
  ignore: qwenJson === null,
  async fn() {
    const json = JSON.parse(await Deno.readTextFile(qwenJson!));
    const reference = new ReferenceBpe(
      json.model.vocab,
      json.model.merges,
      QWEN2_PATTERN,
      (t) => t.normalize("NFC"),
    );
    const text = (await readBrownDocument("cj01")).slice(0, 3000) +
      "\n\n价格是 12345 元。It's 3.14! 😀";
    assert.deepEqual(qwen.encode(text), reference.encode(text));
    const rng = new Rng(7);
    for (let i = 0; i < 30; i++) {
      const sample = randomText(rng, 60);
      assert.deepEqual(qwen.encode(sample), reference.encode(sample), `case ${i}`);
    }
    const fromFile = await loadTokenizer(qwenJson!);
    assert.deepEqual(fromFile.encode(text), qwen.encode(text));
  },
});

Deno.test("unknown tokenizer is rejected", async () => {
  const error = await rejectsWith(() => loadTokenizer("no-such-tokenizer"), DataError);
  assertOneLineNaming(error, "no-such-tokenizer");
});

Deno.test("tokenizer directory without files is rejected", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const error = await rejectsWith(() => loadTokenizer(dir), DataError);
    assertOneLineNaming(error, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("different texts give different ids", () => {
  assert.notDeepEqual(gpt2.encode("cat"), gpt2.encode("dog"));
});
