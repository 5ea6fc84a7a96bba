import assert from "node:assert/strict";
import { initGpu } from "../core/tensor.ts";
import { parseTrainArgs, resolveModelConfig } from "./options.ts";
import { Trainer } from "./trainer.ts";

await initGpu();

const MAIN = new URL("./main.ts", import.meta.url).pathname;

// The llm.c Tiny Shakespeare shards (train and val, GPT-2 tokens) when the shared
// data folder is present beside the repository, the embedded Brown Corpus otherwise.
const SHARDS = new URL("../../shared/data/llmc_bin_shard/", import.meta.url).pathname;
const DATA = await Deno.stat(SHARDS).then(() => SHARDS, () => "brown");

function options(extra: string[]) {
  return parseTrainArgs([
    "--data",
    DATA,
    "--batch",
    "4",
    "--seq-len",
    "32",
    "--eval-tokens",
    "512",
    "--out",
    Deno.makeTempDirSync(),
    ...extra,
  ]);
}

for (const method of ["full", "bpt"] as const) {
  Deno.test(`30 steps of ${method} lower the validation loss`, async () => {
    const opts = options([
      "--method",
      method,
      "--steps",
      "30",
      "--warmup",
      "3",
      "--merge-every",
      "10",
    ]);
    // Full's default 2e-4 is tuned for 100M+ models and barely moves the tiny preset in 30 steps.
    if (method === "full") opts.lr = 2e-3;
    const trainer = await Trainer.create(opts, resolveModelConfig(opts));
    try {
      const before = await trainer.evaluate();
      let merges = 0;
      for (let s = 0; s < 30; s++) if ((await trainer.trainStep()).merged) merges++;
      const after = await trainer.evaluate();
      assert.equal(merges, method === "bpt" ? 3 : 0);
      // From ~ln(50304) = 10.8 nats, 30 steps reach well below 9.
      assert.ok(after < before - 1.5, `${method}: val loss ${before} → ${after}`);
    } finally {
      trainer.close();
      trainer.dispose();
    }
  });
}

Deno.test("BPT merge keeps the validation loss", async () => {
  const opts = options([
    "--method",
    "bpt",
    "--steps",
    "8",
    "--warmup",
    "1",
    "--merge-every",
    "1000",
  ]);
  const trainer = await Trainer.create(opts, resolveModelConfig(opts));
  try {
    for (let s = 0; s < 8; s++) await trainer.trainStep();
    const before = await trainer.evaluate();
    assert.ok(await trainer.merge());
    const after = await trainer.evaluate();
    // W + UV is rounded once to bf16 on merge: a change far below the loss's own scale.
    assert.ok(Math.abs(after - before) < 2e-3, `val loss ${before} → ${after} across the merge`);
  } finally {
    trainer.close();
    trainer.dispose();
  }
});

async function metrics(dir: string): Promise<{ step: number; loss: number }[]> {
  const text = await Deno.readTextFile(`${dir}/metrics.jsonl`);
  return text.trim().split("\n").map((l) => JSON.parse(l)).filter((r) => r.kind === "train");
}

function trainArgs(out: string, extra: string[] = []): string[] {
  return [
    "run",
    "-A",
    MAIN,
    "--data",
    DATA,
    "--method",
    "bpt",
    "--dtype",
    "f32",
    "--batch",
    "2",
    "--seq-len",
    "16",
    "--steps",
    "12",
    "--merge-every",
    "5",
    "--warmup",
    "2",
    "--log-every",
    "1",
    "--eval-every",
    "100",
    "--eval-tokens",
    "64",
    "--save-every",
    "3",
    "--out",
    out,
    ...extra,
  ];
}

async function checkpointStep(out: string): Promise<number> {
  try {
    return JSON.parse(await Deno.readTextFile(`${out}/checkpoint/trainer.json`)).step;
  } catch {
    return -1;
  }
}

Deno.test("kill -9 and resume reproduce the uninterrupted loss curve", async () => {
  const whole = await Deno.makeTempDir();
  const cut = await Deno.makeTempDir();
  const run = await new Deno.Command(Deno.execPath(), {
    args: trainArgs(whole),
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));

  // Kill the second run once it has saved a checkpoint past a merge.
  const child = new Deno.Command(Deno.execPath(), {
    args: trainArgs(cut),
    stdout: "null",
    stderr: "null",
  }).spawn();
  const deadline = Date.now() + 120_000;
  while ((await checkpointStep(cut)) < 6 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  await child.status;
  const savedAt = await checkpointStep(cut);
  assert.ok(savedAt >= 6, `checkpoint at step ${savedAt}`);
  assert.ok(savedAt < 12, `checkpoint at step ${savedAt}`);

  const resumed = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--resume", cut],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(resumed.code, 0, new TextDecoder().decode(resumed.stderr));

  const a = await metrics(whole);
  const b = await metrics(cut);
  assert.equal(b.length, 12);
  assert.deepEqual(b.map((r) => r.step), a.map((r) => r.step));
  // Bit for bit: JSON keeps every digit of an f64, and f32 losses convert exactly.
  assert.deepEqual(b.map((r) => r.loss), a.map((r) => r.loss));
});

Deno.test("SIGINT saves a checkpoint before exiting", async () => {
  const out = await Deno.makeTempDir();
  const child = new Deno.Command(Deno.execPath(), {
    args: trainArgs(out, ["--steps", "400", "--save-every", "1000"]),
    stdout: "null",
    stderr: "null",
  }).spawn();
  const deadline = Date.now() + 120_000;
  // Wait for the first logged step so the loop is running.
  while (Date.now() < deadline) {
    try {
      if ((await metrics(out)).length >= 2) break;
    } catch { /* not yet written */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGINT");
  const status = await child.status;
  assert.equal(status.code, 130);
  const step = await checkpointStep(out);
  assert.ok(step >= 2, `checkpoint step ${step}`);
});

const BAD_INPUT: [string, string[], RegExp][] = [
  ["unknown flag", ["--stepz", "3"], /--stepz/],
  ["unknown preset", ["--model", "gpt-5"], /gpt-5/],
  ["unknown method", ["--method", "dora"], /dora/],
  ["rank too large", ["--rank", "100000"], /100000/],
  ["seq-len above the maximum", ["--seq-len", "999999"], /999999/],
  ["out not writable", ["--out", "/proc/bpt-run", "--steps", "1"], /\/proc\/bpt-run/],
  ["resume without checkpoint", ["--resume", Deno.makeTempDirSync()], /checkpoint/],
];

for (const [name, args, pattern] of BAD_INPUT) {
  Deno.test(`train CLI: ${name} is a one-line error`, async () => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr).trim();
    assert.equal(out.code, 2, stderr);
    const lines = stderr.split("\n").filter((l) => !l.includes("XDG_RUNTIME_DIR"));
    assert.equal(lines.length, 1, stderr);
    assert.match(lines[0], pattern);
  });
}

Deno.test("non-finite loss stops the run", async () => {
  const out = await Deno.makeTempDir();
  const run = await new Deno.Command(Deno.execPath(), {
    args: trainArgs(out, ["--lr", "1e12", "--warmup", "0", "--steps", "30", "--save-every", "1"]),
    stdout: "null",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(run.stderr).trim();
  const lines = stderr.split("\n").filter((l) => !l.includes("XDG_RUNTIME_DIR"));
  assert.equal(run.code, 2, stderr);
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0], /loss is (NaN|Infinity|-Infinity) at step \d+/);

  // The loss of step s comes from the weights saved at step s − 1, so the run
  // keeps only a checkpoint from before those and names its step.
  const failedAt = Number(lines[0].match(/at step (\d+)/)![1]);
  const kept = await checkpointStep(out);
  if (failedAt >= 3) {
    assert.equal(kept, failedAt - 2);
    assert.match(lines[0], new RegExp(`keeps step ${kept}; .*--resume .* --lr 1e\\+11`));
  } else {
    assert.equal(kept, -1);
    assert.match(lines[0], /no checkpoint was saved before it/);
  }
});

Deno.test("rollBack retires checkpoints from bad weights", async () => {
  const { rollBack } = await import("./checkpoint.ts");
  const out = await Deno.makeTempDir();
  const fake = async (dir: string, step: number) => {
    await Deno.mkdir(`${out}/${dir}`);
    await Deno.writeTextFile(`${out}/${dir}/trainer.json`, JSON.stringify({ version: 1, step }));
  };
  await fake("checkpoint.prev", 4);
  await fake("checkpoint", 5);
  // Weights of step 6 and later are bad: step 5 stays.
  assert.equal(await rollBack(out, 6), 5);
  // Weights of step 5 are bad: step 4 becomes current, step 5 moves aside.
  assert.equal(await rollBack(out, 5), 4);
  assert.equal(
    JSON.parse(await Deno.readTextFile(`${out}/checkpoint.diverged/trainer.json`)).step,
    5,
  );
  // Weights of step 4 are bad too and nothing older is left.
  assert.equal(await rollBack(out, 4), null);
});

Deno.test("resume changes the learning rate, not the model", async () => {
  const out = await Deno.makeTempDir();
  const first = await new Deno.Command(Deno.execPath(), {
    args: trainArgs(out, ["--steps", "2", "--warmup", "0", "--save-every", "1"]),
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(first.code, 0, new TextDecoder().decode(first.stderr));

  const resumed = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--resume", out, "--lr", "1e-4", "--steps", "4"],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(resumed.code, 0, new TextDecoder().decode(resumed.stderr));
  const state = JSON.parse(await Deno.readTextFile(`${out}/checkpoint/trainer.json`));
  assert.equal(state.options.lr, 1e-4);
  assert.equal(state.step, 4);

  const refused = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--resume", out, "--rank", "3"],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(refused.code, 2);
  assert.match(new TextDecoder().decode(refused.stderr), /--rank cannot change when resuming/);

  // A new run into the same --out must not mix with the old one unless asked to.
  const again = await new Deno.Command(Deno.execPath(), {
    args: trainArgs(out, ["--steps", "1", "--warmup", "0"]),
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(again.code, 2);
  assert.match(new TextDecoder().decode(again.stderr), /already contains a run.*--overwrite/);
  const replaced = await new Deno.Command(Deno.execPath(), {
    args: trainArgs(out, ["--steps", "1", "--warmup", "0", "--overwrite"]),
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(replaced.code, 0, new TextDecoder().decode(replaced.stderr));
  assert.equal((await metrics(out)).length, 1);
});
