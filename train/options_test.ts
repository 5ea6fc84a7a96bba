import assert from "node:assert/strict";
import {
  methodDefaultLr,
  OptionsError,
  parseTrainArgs,
  resolveModelConfig,
  TRAIN_HELP,
} from "./options.ts";

const CONFIG_DIR = new URL("../configs/", import.meta.url).pathname;

// Asserts that `argv` is rejected with a one-line OptionsError whose message contains
// every string of `parts`.
function assertRejects(argv: string[], ...parts: string[]) {
  let caught: unknown;
  try {
    parseTrainArgs(argv);
  } catch (error) {
    caught = error;
  }
  assert.ok(
    caught instanceof OptionsError,
    `${argv.join(" ")}: expected OptionsError, got ${caught}`,
  );
  assert.ok(!caught.message.includes("\n"), `multi-line message: ${caught.message}`);
  for (const part of parts) {
    assert.ok(caught.message.includes(part), `"${caught.message}" lacks "${part}"`);
  }
}

function withTempDir(body: (dir: string) => void) {
  const dir = Deno.makeTempDirSync({ prefix: "options_test_" });
  try {
    body(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("parseTrainArgs defaults", () => {
  const o = parseTrainArgs([]);
  assert.equal(o.config, null);
  assert.equal(o.model, "qwen2.5-tiny");
  assert.equal(o.method, "bpt");
  assert.equal(o.rank, 32);
  assert.equal(o.alpha, 32);
  assert.equal(o.mergeEvery, 50);
  assert.equal(o.reloraWarmup, 25);
  assert.equal(o.reloraPrune, 0.9);
  assert.equal(o.lr, null);
  assert.equal(o.minLrRatio, 0.1);
  assert.equal(o.schedule, "wsd");
  assert.equal(o.steps, 200);
  assert.equal(o.tokens, null);
  // 5 % and 20 % of 200 steps.
  assert.equal(o.warmup, 10);
  assert.equal(o.decaySteps, 40);
  assert.equal(o.batch, 8);
  assert.equal(o.gradAccum, 1);
  assert.equal(o.seqLen, 64);
  assert.equal(o.data, "brown");
  assert.equal(o.tokenizer, "gpt2");
  assert.equal(o.evalEvery, 50);
  assert.equal(o.evalTokens, 8192);
  assert.equal(o.logEvery, 10);
  assert.equal(o.saveEvery, 50);
  assert.equal(o.dtype, "bf16");
  assert.equal(o.bf16Update, "master");
  assert.equal(o.weightDecay, 0.1);
  assert.equal(o.beta1, 0.9);
  assert.equal(o.beta2, 0.95);
  assert.equal(o.gradClip, 1);
  assert.equal(o.seed, 1);
  assert.equal(o.out, "runs/qwen2.5-tiny-bpt");
  assert.equal(o.resume, null);
  assert.equal(o.export, null);
  assert.equal(o.help, false);
});

Deno.test("parseTrainArgs reads every flag", () => {
  const o = parseTrainArgs([
    "--model=olmo2-tiny",
    "--method=relora",
    "--rank=8",
    "--alpha=16",
    "--merge-every=40",
    "--relora-warmup=10",
    "--relora-prune=1",
    "--lr=3e-4",
    "--min-lr-ratio=0",
    "--schedule=cosine",
    "--warmup=5",
    "--decay-steps=7",
    "--weight-decay=0",
    "--beta1=0.8",
    "--beta2=0.99",
    "--grad-clip=0",
    "--data=data/x.bin",
    "--tokenizer=qwen2.5",
    "--batch=4",
    "--grad-accum=3",
    "--seq-len=128",
    "--steps=90",
    "--dtype=f32",
    "--bf16-update=stochastic",
    "--eval-every=30",
    "--eval-tokens=2k",
    "--log-every=1",
    "--save-every=45",
    "--seed=4294967295",
    "--out=/tmp/run",
    "--export=/tmp/hf",
  ]);
  assert.equal(o.model, "olmo2-tiny");
  assert.equal(o.method, "relora");
  assert.equal(o.rank, 8);
  assert.equal(o.alpha, 16);
  assert.equal(o.mergeEvery, 40);
  assert.equal(o.reloraWarmup, 10);
  assert.equal(o.reloraPrune, 1);
  assert.equal(o.lr, 3e-4);
  assert.equal(o.minLrRatio, 0);
  assert.equal(o.schedule, "cosine");
  assert.equal(o.warmup, 5);
  assert.equal(o.decaySteps, 7);
  assert.equal(o.weightDecay, 0);
  assert.equal(o.beta1, 0.8);
  assert.equal(o.beta2, 0.99);
  assert.equal(o.gradClip, 0);
  assert.equal(o.data, "data/x.bin");
  assert.equal(o.tokenizer, "qwen2.5");
  assert.equal(o.batch, 4);
  assert.equal(o.gradAccum, 3);
  assert.equal(o.seqLen, 128);
  assert.equal(o.steps, 90);
  assert.equal(o.dtype, "f32");
  assert.equal(o.bf16Update, "stochastic");
  assert.equal(o.evalEvery, 30);
  assert.equal(o.evalTokens, 2000);
  assert.equal(o.logEvery, 1);
  assert.equal(o.saveEvery, 45);
  assert.equal(o.seed, 4294967295);
  assert.equal(o.out, "/tmp/run");
  assert.equal(o.export, "/tmp/hf");
});

Deno.test("methodDefaultLr per method", () => {
  assert.equal(methodDefaultLr("full"), 2e-4);
  assert.equal(methodDefaultLr("bpt"), 2e-3);
  assert.equal(methodDefaultLr("lora"), 2e-3);
  assert.equal(methodDefaultLr("relora"), 2e-3);
  assert.equal(methodDefaultLr("hyperadapt"), 2e-3);
});

Deno.test("parseTrainArgs tokens to steps", () => {
  // 10⁶ tokens / (8 · 2 · 64 = 1024 per step) = 976.56, rounded up to 977 steps.
  const o = parseTrainArgs(["--tokens", "1M", "--grad-accum", "2"]);
  assert.equal(o.tokens, 1_000_000);
  assert.equal(o.steps, 977);
  assert.equal(o.warmup, 49); // 48.85 rounded
  assert.equal(o.decaySteps, 195); // 195.4 rounded
  // 5000 / 512 = 9.77 → 10 steps.
  assert.equal(parseTrainArgs(["--tokens", "5000"]).steps, 10);
  assert.equal(parseTrainArgs(["--tokens", "0.5k"]).steps, 1);
  assert.equal(parseTrainArgs(["--tokens", "1e6"]).tokens, 1_000_000);
  assertRejects(["--steps", "10", "--tokens", "5000"], "--steps 10", "--tokens 5000");
  assertRejects(["--tokens", "lots"], '--tokens "lots"', "5M");
  assertRejects(["--tokens=-5"], '--tokens "-5"');
});

Deno.test("parseTrainArgs unknown flags", () => {
  assertRejects(["--merge-evry", "3"], "--merge-evry", "--merge-every");
  assertRejects(["--lR", "3"], "--lR", "--lr");
  assertRejects(["-x"], "-x");
  assertRejects(["train"], '"train"');
  assertRejects(["--rank"], "--rank needs a value");
  assertRejects(["--lr", "-1"], "--lr=VALUE");
  assertRejects(["--help=yes"], "--help takes no value");
});

Deno.test("parseTrainArgs unknown names", () => {
  assertRejects(["--model", "qwen3-tiny"], '"qwen3-tiny"', "qwen2.5-tiny", "olmo2-1b");
  assertRejects(["--method", "dora"], '--method "dora"', "full, bpt, lora, relora, hyperadapt");
  assertRejects(["--schedule", "linear"], "wsd, cosine, constant");
  assertRejects(["--dtype", "fp16"], "bf16, f16, f32");
  assertRejects(["--bf16-update", "nearest"], "master, stochastic");
  assertRejects(["--data", " "], "--data is empty");
});

Deno.test("parseTrainArgs bad numbers", () => {
  assertRejects(["--rank", "abc"], '--rank "abc"', "integer >= 1");
  assertRejects(["--rank", "0"], '--rank "0"');
  assertRejects(["--batch", "2.5"], '--batch "2.5"');
  assertRejects(["--lr=-1"], '--lr "-1"', "positive");
  assertRejects(["--lr", "0"], '--lr "0"');
  assertRejects(["--lr", "1e-3x"], '--lr "1e-3x"');
  assertRejects(["--beta2", "1"], '--beta2 "1"', "[0, 1)");
  assertRejects(["--relora-prune", "1.5"], '--relora-prune "1.5"', "0..1");
  assertRejects(["--min-lr-ratio", "2"], '--min-lr-ratio "2"');
  assertRejects(["--grad-clip=-1"], '--grad-clip "-1"');
  assertRejects(["--seed", "4294967296"], '--seed "4294967296"', "0..4294967295");
  assertRejects(["--alpha", "nan"], '--alpha "nan"');
});

Deno.test("parseTrainArgs rank limit", () => {
  // qwen2.5-tiny's widest block linears are gate and up, 512 × 128. BPT wraps them while
  // 640 + 640 r < 65,536, i.e. r ≤ 101; LoRA while 640 r < 65,536, i.e. r ≤ 102.
  assert.equal(parseTrainArgs(["--rank", "101"]).rank, 101);
  assertRejects(["--rank", "102"], "--rank 102", "bpt", "qwen2.5-tiny", "1..101");
  assert.equal(parseTrainArgs(["--method", "lora", "--rank", "102"]).rank, 102);
  assertRejects(["--method", "lora", "--rank", "103"], "1..102");
  // full and hyperadapt have no rank, so any positive rank passes.
  assert.equal(parseTrainArgs(["--method", "full", "--rank", "5000"]).rank, 5000);
});

Deno.test("parseTrainArgs sequence length limit", () => {
  // The tiny presets allow 1024 positions.
  assert.equal(parseTrainArgs(["--seq-len", "1024"]).seqLen, 1024);
  assertRejects(["--seq-len", "1025"], "--seq-len 1025", "1024");
});

Deno.test("parseTrainArgs schedule lengths", () => {
  // Default decay is 40 of 200 steps, so 161 warm-up steps leave no room.
  assert.equal(parseTrainArgs(["--warmup", "160"]).warmup, 160);
  assertRejects(["--warmup", "161"], "--warmup 161", "--decay-steps 40", "--steps 200");
  assertRejects(["--schedule", "cosine", "--warmup", "200"], "--warmup 200", "cosine");
  assert.equal(parseTrainArgs(["--schedule", "constant", "--warmup", "200"]).warmup, 200);
  assertRejects(
    ["--method", "relora", "--relora-warmup", "51"],
    "--relora-warmup 51",
    "--merge-every 50",
  );
  // Only ReLoRA restarts its learning rate, so the check does not apply to BPT.
  assert.equal(parseTrainArgs(["--method", "bpt", "--relora-warmup", "51"]).reloraWarmup, 51);
});

Deno.test("parseTrainArgs out and resume", () => {
  assert.equal(parseTrainArgs(["--method", "full"]).out, "runs/qwen2.5-tiny-full");
  assertRejects(["--resume", "/nonexistent/run"], "/nonexistent/run", "not found");
  withTempDir((dir) => {
    assert.equal(parseTrainArgs(["--resume", dir]).resume, dir);
  });
});

Deno.test("parseTrainArgs help", () => {
  const o = parseTrainArgs(["--help", "--rank", "not-a-number"]);
  assert.equal(o.help, true);
  const flags = [
    "config",
    "model",
    "method",
    "rank",
    "alpha",
    "merge-every",
    "relora-warmup",
    "relora-prune",
    "lr",
    "min-lr-ratio",
    "warmup",
    "decay-steps",
    "schedule",
    "batch",
    "grad-accum",
    "seq-len",
    "steps",
    "tokens",
    "data",
    "tokenizer",
    "eval-every",
    "eval-tokens",
    "log-every",
    "save-every",
    "dtype",
    "bf16-update",
    "weight-decay",
    "beta1",
    "beta2",
    "grad-clip",
    "seed",
    "out",
    "resume",
    "export",
    "help",
  ];
  for (const flag of flags) assert.match(TRAIN_HELP, new RegExp(`  --${flag} `), flag);
});

Deno.test("parseTrainArgs config file", () => {
  withTempDir((dir) => {
    const path = `${dir}/run.jsonc`;
    Deno.writeTextFileSync(
      path,
      `// a comment
      {
        "method": "lora", /* block comment */
        "rank": 16,
        "merge-every": 50,
        "gradAccum": 2,
        "lr": "1e-3",
        "steps": 200,
        "seed": null,
        "out": "runs/x", // trailing comma below
      }`,
    );
    const o = parseTrainArgs(["--config", path]);
    assert.equal(o.config, path);
    assert.equal(o.method, "lora");
    assert.equal(o.rank, 16);
    assert.equal(o.alpha, 16);
    assert.equal(o.mergeEvery, 50);
    assert.equal(o.gradAccum, 2);
    assert.equal(o.lr, 1e-3);
    assert.equal(o.steps, 200);
    assert.equal(o.seed, 1);
    assert.equal(o.out, "runs/x");

    // Flags win over the file, and --tokens replaces the file's steps.
    const over = parseTrainArgs(["--config", path, "--rank", "4", "--tokens", "2048"]);
    assert.equal(over.rank, 4);
    assert.equal(over.method, "lora");
    assert.equal(over.tokens, 2048);
    // 2048 / (8 · 2 · 64) = 2 steps.
    assert.equal(over.steps, 2);

    Deno.writeTextFileSync(path, '{ "rank": "x" }');
    assertRejects(["--config", path], '--rank "x"', `from ${path}`);
    Deno.writeTextFileSync(path, '{ "rnak": 3 }');
    assertRejects(["--config", path], '"rnak"', '"rank"');
    Deno.writeTextFileSync(path, '{ "config": "other.json" }');
    assertRejects(["--config", path], '"config"');
    Deno.writeTextFileSync(path, '{\n  "rank": 3\n  "lr": 1\n}');
    assertRejects(["--config", path], "invalid JSONC", "line 3, column 3", "CommaExpected");
    Deno.writeTextFileSync(path, "[1, 2]");
    assertRejects(["--config", path], "expected a JSON object");
    Deno.writeTextFileSync(path, '{ "dtype": true }');
    assertRejects(["--config", path], '"dtype" is true', "number or a string");
    Deno.writeTextFileSync(path, '{ "steps": 10, "tokens": 5000 }');
    assertRejects(["--config", path], "--steps 10", "--tokens 5000");
    assertRejects(["--config", `${dir}/missing.jsonc`], "missing.jsonc", "not found");
  });
});

Deno.test("shipped configs parse", () => {
  // Expected values as the files state them; every run takes 524,288 tokens per step.
  const expected = [
    { file: "qwen2.5-100m-bpt.jsonc", model: "qwen2.5-100m", rank: 128, steps: 40000, decay: 8000 },
    { file: "qwen2.5-0.5b-bpt.jsonc", model: "qwen2.5-0.5b", rank: 128, steps: 40000, decay: 8000 },
    {
      file: "qwen2.5-1.5b-bpt.jsonc",
      model: "qwen2.5-1.5b",
      rank: 256,
      steps: 50000,
      decay: 10000,
    },
    { file: "olmo2-1b-bpt.jsonc", model: "olmo2-1b", rank: 256, steps: 50000, decay: 10000 },
  ];
  const shipped = [...Deno.readDirSync(CONFIG_DIR)].map((e) => e.name).filter((n) =>
    n.endsWith(".jsonc")
  );
  assert.deepEqual(shipped.sort(), expected.map((e) => e.file).sort());

  for (const want of expected) {
    const o = parseTrainArgs(["--config", `${CONFIG_DIR}${want.file}`]);
    assert.equal(o.model, want.model, want.file);
    assert.equal(o.method, "bpt", want.file);
    assert.equal(o.rank, want.rank, want.file);
    assert.equal(o.lr, 2e-3, want.file);
    assert.equal(o.warmup, 2000, want.file);
    assert.equal(o.decaySteps, want.decay, want.file);
    assert.equal(o.schedule, "wsd", want.file);
    assert.equal(o.minLrRatio, 0.1, want.file);
    assert.equal(o.weightDecay, 0.1, want.file);
    assert.equal(o.gradClip, 1, want.file);
    assert.equal(o.steps, want.steps, want.file);
    assert.equal(o.batch * o.gradAccum * o.seqLen, 524_288, want.file);
    assert.equal(o.dtype, "bf16", want.file);
    assert.equal(o.data, "fineweb-edu", want.file);
    assert.equal(o.out, `runs/${want.model}-bpt`, want.file);
  }
});

Deno.test("shipped configs tokenizers fit", () => {
  const qwen = resolveModelConfig(
    parseTrainArgs(["--config", `${CONFIG_DIR}qwen2.5-0.5b-bpt.jsonc`]),
  );
  assert.equal(qwen.vocabSize, 151936);
  assert.equal(qwen.eosTokenId, 151643);
  // OLMo-2 with GPT-2's tokenizer: the 100,352 rows cover its 50,257 ids, and eos becomes
  // GPT-2's <|endoftext|>.
  const olmoOptions = parseTrainArgs(["--config", `${CONFIG_DIR}olmo2-1b-bpt.jsonc`]);
  assert.equal(olmoOptions.tokenizer, "gpt2");
  const olmo = resolveModelConfig(olmoOptions);
  assert.equal(olmo.vocabSize, 100352);
  assert.equal(olmo.eosTokenId, 50256);
  assert.equal(olmo.bosTokenId, null);
  assert.equal(olmo.padTokenId, null);
  // Qwen2.5's 151,665 ids do not fit OLMo-2's 100,352 rows.
  assertRejects(
    ["--config", `${CONFIG_DIR}olmo2-1b-bpt.jsonc`, "--tokenizer", "qwen2.5"],
    "151665",
    "100352",
  );
});

Deno.test("resolveModelConfig tiny vocabulary", () => {
  const gpt2 = resolveModelConfig({ model: "qwen2.5-tiny", tokenizer: "gpt2" });
  assert.equal(gpt2.vocabSize, 50304);
  assert.equal(gpt2.bosTokenId, 50256);
  assert.equal(gpt2.eosTokenId, 50256);

  const qwen = resolveModelConfig({ model: "qwen2.5-tiny", tokenizer: "qwen2.5" });
  assert.equal(qwen.vocabSize, 151936);
  assert.equal(qwen.bosTokenId, 151643);
  assert.equal(qwen.eosTokenId, 151643);
  assert.equal(qwen.hiddenSize, 128);

  const olmo = resolveModelConfig({ model: "olmo2-tiny", tokenizer: "qwen3" });
  assert.equal(olmo.vocabSize, 151936);

  // A tokenizer file: without its size the preset is unchanged; with it, 1000 ids are
  // padded to 1024 rows.
  const path = { model: "qwen2.5-tiny", tokenizer: "tok/tokenizer.json" };
  assert.equal(resolveModelConfig(path).vocabSize, 50304);
  const sized = resolveModelConfig(path, { vocabSize: 1000, eotId: 999 });
  assert.equal(sized.vocabSize, 1024);
  assert.equal(sized.eosTokenId, 999);
});

Deno.test("resolveModelConfig vocabulary too small", () => {
  assertRejects(["--model", "qwen2.5-micro"], "gpt2", "50257", "97");
  assert.throws(
    () =>
      resolveModelConfig({ model: "qwen2.5-100m", tokenizer: "x.json" }, {
        vocabSize: 200000,
        eotId: 0,
      }),
    OptionsError,
  );
  // A released preset keeps its size and its ids when they match the tokenizer.
  const same = resolveModelConfig({ model: "qwen2.5-100m", tokenizer: "qwen2.5" });
  assert.equal(same.vocabSize, 151936);
  assert.equal(same.eosTokenId, 151643);
});

Deno.test("resolveModelConfig config.json", () => {
  withTempDir((dir) => {
    // Qwen2.5-0.5B's shape with a context of 4096, passed as its folder.
    const json = {
      architectures: ["Qwen2ForCausalLM"],
      hidden_size: 896,
      intermediate_size: 4864,
      num_hidden_layers: 24,
      num_attention_heads: 14,
      num_key_value_heads: 2,
      rope_theta: 1000000.0,
      rms_norm_eps: 1e-6,
      tie_word_embeddings: true,
      vocab_size: 151936,
      max_position_embeddings: 4096,
      eos_token_id: 151643,
    };
    Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify(json));
    const o = parseTrainArgs(["--model", dir, "--tokenizer", "gpt2", "--seq-len", "4096"]);
    assert.equal(o.out, `runs/${dir.split("/").pop()}-bpt`);
    const cfg = resolveModelConfig(o);
    assert.equal(cfg.hiddenSize, 896);
    // A config.json keeps its own ids.
    assert.equal(cfg.eosTokenId, 151643);
    assertRejects(["--model", dir, "--seq-len", "4097"], "--seq-len 4097", "4096");

    Deno.writeTextFileSync(`${dir}/bad.json`, "{ not json");
    assertRejects(["--model", `${dir}/bad.json`], "bad.json", "not valid JSON");
    Deno.writeTextFileSync(`${dir}/gpt2.json`, '{"architectures": ["GPT2LMHeadModel"]}');
    assertRejects(["--model", `${dir}/gpt2.json`], "GPT2LMHeadModel");
  });
});
