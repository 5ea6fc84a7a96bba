// deno-lint-ignore-file no-import-prefix -- train/ pins its npm dependencies inline, not in the import map.
import assert from "node:assert/strict";
import { XMLParser, XMLValidator } from "npm:fast-xml-parser@4.5.3";
import { initGpu } from "../core/tensor.ts";
import { countParams, type Method } from "../layers/params.ts";
import { parseCompareArgs, runComparison } from "./compare.ts";
import { OptionsError, resolveModelConfig } from "./options.ts";

// A two-layer Qwen2 model 32 wide with the GPT-2 vocabulary, so it trains on the Brown
// Corpus in seconds.
const TINY_CONFIG = {
  architectures: ["Qwen2ForCausalLM"],
  model_type: "qwen2",
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 50304,
  max_position_embeddings: 64,
  rope_theta: 10000,
  rms_norm_eps: 1e-6,
  tie_word_embeddings: true,
  bos_token_id: 50256,
  eos_token_id: 50256,
  hidden_act: "silu",
};

const RANK = 4;

async function writeConfig(dir: string): Promise<string> {
  const path = `${dir}/config.json`;
  await Deno.writeTextFile(path, JSON.stringify(TINY_CONFIG));
  return path;
}

function baseArgs(model: string, out: string, steps: number): string[] {
  return [
    "--model",
    model,
    "--steps",
    String(steps),
    "--batch",
    "2",
    "--seq-len",
    "16",
    "--eval-every",
    "8",
    "--eval-tokens",
    "64",
    "--merge-every",
    "8",
    "--rank",
    String(RANK),
    "--out",
    out,
  ];
}

// Cells of the first results.md table row that starts with `| method |`.
function tableRow(markdown: string, method: string): string[] {
  const line = markdown.split("\n").find((l) => l.startsWith(`| ${method} | `));
  assert.ok(line, `results.md has no row for ${method}`);
  return line.split("|").slice(1, -1).map((cell) => cell.trim());
}

function integer(cell: string): number {
  return Number(cell.replaceAll(",", ""));
}

function assertSvg(text: string, path: string): void {
  assert.equal(XMLValidator.validate(text), true, `${path} is not well-formed XML`);
  const doc = new XMLParser({ ignoreAttributes: false }).parse(text);
  const roots = Object.keys(doc).filter((key) => !key.startsWith("?"));
  assert.deepEqual(roots, ["svg"], `${path} root elements`);
}

// The trainable count printed by `deno task params --json`.
async function paramsCli(model: string, method: Method): Promise<number> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "train/params.ts",
      "--model",
      model,
      "--method",
      method,
      "--rank",
      "4",
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  return JSON.parse(new TextDecoder().decode(output.stdout)).trainable;
}

Deno.test("compare full bpt lora reduced run", async () => {
  await initGpu();
  const dir = await Deno.makeTempDir({ prefix: "compare_test_" });
  try {
    const model = await writeConfig(dir);
    const out = `${dir}/out`;
    const methods: Method[] = ["full", "bpt", "lora"];
    const opts = parseCompareArgs([...baseArgs(model, out, 24), "--methods", methods.join(",")]);
    const logs: string[] = [];
    const { results, complete } = await runComparison(opts, (line) => logs.push(line));
    assert.equal(complete, true);
    assert.deepEqual(results.map((r) => r.method), methods);

    const cfg = resolveModelConfig({ model, tokenizer: "gpt2" });
    const markdown = await Deno.readTextFile(`${out}/results.md`);
    for (const method of methods) {
      const counts = countParams(cfg, method, RANK);
      const row = tableRow(markdown, method);
      assert.equal(integer(row[2]), counts.total, `${method} total`);
      assert.equal(integer(row[3]), counts.trainable, `${method} trainable`);
      assert.equal(integer(row[4]), counts.nonEmbeddingTotal, `${method} non-embedding total`);
      assert.equal(
        integer(row[5]),
        counts.nonEmbeddingTrainable,
        `${method} non-embedding trainable`,
      );
      assert.equal(integer(row[3]), await paramsCli(model, method), `${method} vs params CLI`);
      const loss = Number(row[6]);
      assert.ok(loss > 0, `${method} final val loss ${row[6]}`);
      // ln(50304) = 10.83 is the loss of a uniform prediction.
      assert.ok(loss < 11, `${method} final val loss ${row[6]}`);
    }
    assert.ok(markdown.includes("deno task compare --model"), "results.md lacks the command");
    assert.ok(markdown.includes("Adapter: "), "results.md lacks the adapter");

    for (const name of ["eval_loss.svg", "update_rank.svg"]) {
      assertSvg(await Deno.readTextFile(`${out}/${name}`), name);
    }

    // Rank of layer 0's up_proj update (64 × 32) at steps 0, 8, 16 and 24.
    const rank = JSON.parse(await Deno.readTextFile(`${out}/update_rank.json`));
    assert.equal(rank.layer, "model.layers.0.mlp.up_proj");
    assert.deepEqual(rank.shape, [64, 32]);
    for (const method of methods) {
      const points = rank.methods[method];
      assert.deepEqual(points.map((p: { step: number }) => p.step), [0, 8, 16, 24], method);
      assert.equal(points[0].numericalRank, 0, `${method} at step 0`);
      for (const p of points) {
        assert.ok(p.effectiveRank <= p.numericalRank + 1e-9, `${method} step ${p.step}`);
      }
    }
    const last = (method: Method) => rank.methods[method].at(-1).numericalRank;
    // LoRA's ΔW = (α/r)·BA has rank at most r; BPT's, after three merges, exceeds it.
    assert.ok(last("lora") >= 1, `lora rank ${last("lora")}`);
    assert.ok(last("lora") <= RANK, `lora rank ${last("lora")}`);
    assert.ok(last("bpt") > RANK, `bpt rank ${last("bpt")}`);

    // A second run reuses every summary and trains nothing.
    const again: string[] = [];
    await runComparison(opts, (line) => again.push(line));
    assert.equal(again.filter((l) => l.includes("reusing")).length, methods.length);
    assert.equal(again.filter((l) => l.includes("training")).length, 0);

    // A different step count in the same --out is rejected before any training.
    const stale = parseCompareArgs([...baseArgs(model, out, 16), "--methods", "full"]);
    await assert.rejects(
      () => runComparison(stale, () => {}),
      (e: Error) => e instanceof OptionsError && e.message.includes("steps 24"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compare sweep picks lowest loss", async () => {
  await initGpu();
  const dir = await Deno.makeTempDir({ prefix: "compare_sweep_test_" });
  try {
    const model = await writeConfig(dir);
    const out = `${dir}/out`;
    const opts = parseCompareArgs([
      ...baseArgs(model, out, 10),
      "--methods",
      "bpt",
      "--lr-bpt",
      "3e-3",
      "--sweep",
    ]);
    const { results } = await runComparison(opts, () => {});
    const sweep = results[0].sweep;
    assert.deepEqual(sweep.map((s) => s.lr), [1e-3, 3e-3, 9e-3]);
    assert.ok(sweep.every((s) => s.steps === 2));
    // Each short run's loss is the last evaluation stored in its own metrics file.
    const losses: number[] = [];
    for (const s of sweep) {
      const lines = (await Deno.readTextFile(`${out}/bpt/sweep/lr-${s.lr}/metrics.jsonl`))
        .trim().split("\n").map((l) => JSON.parse(l)).filter((r) => r.kind === "eval");
      assert.equal(lines.at(-1).step, 2);
      losses.push(lines.at(-1).val_loss);
    }
    const best = sweep[losses.indexOf(Math.min(...losses))].lr;
    assert.equal(results[0].lr, best);
    const markdown = await Deno.readTextFile(`${out}/results.md`);
    assert.ok(markdown.includes("## Learning-rate sweep"));
    assert.ok(markdown.includes(`| bpt | ${best} | ${Math.min(...losses).toFixed(4)} | yes |`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseCompareArgs rejects bad flags", async () => {
  const dir = await Deno.makeTempDir({ prefix: "compare_args_test_" });
  try {
    const model = await writeConfig(dir);
    const cases: [string[], string][] = [
      [["--methods", "full,foo"], `"foo"`],
      [["--methods", "bpt,bpt"], "twice"],
      [["--lr-bpt", "-1"], "--lr-bpt"],
      [["--rank-layer", "layers.9.mlp.up_proj"], "layers.9.mlp.up_proj"],
      [["--rank", "999"], "--rank 999"],
      [["--batch", "0"], "--batch"],
      [["--nope"], "--nope"],
    ];
    for (const [extra, part] of cases) {
      assert.throws(
        () => parseCompareArgs([...baseArgs(model, `${dir}/out`, 8), ...extra]),
        (e: Error) =>
          e instanceof OptionsError && e.message.includes(part) && !e.message.includes("\n"),
        extra.join(" "),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compare CLI exits 2 on bad input", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "train/compare.ts", "--methods", "full,sgd"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 2);
  const stderr = new TextDecoder().decode(output.stderr).trim().split("\n")
    .filter((l) => l.startsWith("error:"));
  assert.equal(stderr.length, 1);
  assert.ok(stderr[0].includes(`"sgd"`), stderr[0]);
});
