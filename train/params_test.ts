import assert from "node:assert/strict";

const SCRIPT = new URL("./params.ts", import.meta.url).pathname;

async function runCli(...args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, ...args],
  }).output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr),
  };
}

async function runJson(...args: string[]) {
  const { code, stdout, stderr } = await runCli(...args, "--json");
  assert.equal(code, 0, stderr);
  return JSON.parse(stdout);
}

Deno.test("params cli qwen2.5-100m", async () => {
  const full = await runJson("--model", "qwen2.5-100m", "--method", "full");
  assert.equal(full.total, 108_214_784);
  assert.equal(full.trainable, 108_214_784);
  assert.equal(full.rank, null);

  const bpt = await runJson("--model", "qwen2.5-100m", "--method", "bpt", "--rank", "128");
  assert.equal(bpt.total, 108_214_784);
  assert.equal(bpt.trainable, 88_893_952);
  assert.equal(bpt.rank, 128);
  assert.equal(bpt.reduction.toFixed(3), "0.179");
  assert.equal(bpt.nonEmbeddingReduction.toFixed(3), "0.635");
});

Deno.test("params cli qwen2.5-0.5b", async () => {
  const m = ["--model", "qwen2.5-0.5b"];
  assert.equal((await runJson(...m, "--method", "full")).total, 494_032_768);
  const bpt = await runJson(...m, "--method", "bpt", "--rank", "128");
  assert.equal(bpt.trainable, 206_306_176);
  assert.equal(bpt.reduction.toFixed(3), "0.582");
  assert.equal(bpt.nonEmbeddingReduction.toFixed(3), "0.804");
  assert.equal((await runJson(...m, "--method", "lora", "--rank", "128")).trainable, 205_805_440);
  assert.equal((await runJson(...m, "--method", "hyperadapt")).trainable, 136_756_096);
});

Deno.test("params cli qwen2.5-1.5b", async () => {
  const c = await runJson("--model", "qwen2.5-1.5b", "--method", "bpt", "--rank", "256");
  assert.equal(c.total, 1_543_714_304);
  assert.equal(c.trainable, 526_338_560);
  assert.equal(c.reduction.toFixed(3), "0.659");
});

Deno.test("params cli reads config.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "params_test_" });
  try {
    // Qwen2.5-0.5B's shape as a Hugging Face config.json, passed as its folder.
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({
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
        max_position_embeddings: 32768,
      }),
    );
    const c = await runJson("--model", dir, "--method", "bpt", "--rank", "128");
    assert.equal(c.total, 494_032_768);
    assert.equal(c.trainable, 206_306_176);

    await Deno.writeTextFile(`${dir}/bad.json`, '{"architectures": ["GPT2LMHeadModel"]}');
    const bad = await runCli("--model", `${dir}/bad.json`);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown architecture "GPT2LMHeadModel"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("params cli table output", async () => {
  const { code, stdout } = await runCli("--model", "qwen2.5-100m", "--rank", "128");
  assert.equal(code, 0);
  assert.match(stdout, /^all\s+108,214,784\s+88,893,952$/m);
  assert.match(stdout, /^non-embedding\s+30,423,552\s+11,102,720$/m);
  assert.match(stdout, /^wrapped linears \(40\)\s/m);
  assert.match(stdout, /^full linears \(16\)\s/m);
  assert.match(stdout, /17\.9 % \(non-embedding 63\.5 %\)/);
});

Deno.test("params cli help", async () => {
  const { code, stdout } = await runCli("--help");
  assert.equal(code, 0);
  for (const flag of ["--model", "--method", "--rank", "--json"]) {
    assert.ok(stdout.includes(flag), `help lacks ${flag}`);
  }
  assert.ok(stdout.includes("(default bpt)"));
  assert.ok(stdout.includes("(default 32)"));
  assert.ok(stdout.includes("qwen2.5-tiny"));
});

Deno.test("params cli bad input exits 2", async () => {
  const cases: [string[], RegExp][] = [
    [["--bogus"], /unknown flag --bogus/],
    [["--model", "gpt5"], /--model "gpt5" is neither a preset/],
    [["--method", "dora"], /unknown method "dora": use one of full, bpt/],
    [["--rank", "0"], /rank 0 is invalid for bpt: use an integer in 1\.\.101/],
    [["--rank", "4.5"], /--rank "4\.5" is invalid/],
    [["--method", "lora", "--rank", "100000"], /rank 100000 is too large for lora/],
    [["--rank"], /invalid value for --rank/],
    [["extra"], /unexpected argument extra/],
  ];
  for (const [args, pattern] of cases) {
    const { code, stdout, stderr } = await runCli(...args);
    assert.equal(code, 2, `${args.join(" ")}: exit code ${code}`);
    assert.equal(stdout, "");
    assert.match(stderr, pattern);
    // One line, without a stack trace.
    assert.equal(stderr.trim().split("\n").length, 1, stderr);
  }
});
