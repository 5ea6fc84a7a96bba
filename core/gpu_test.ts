import assert from "node:assert/strict";

const MAIN = new URL("../train/main.ts", import.meta.url).href;

// Runs `deno task train` after `setup` has removed WebGPU (or its adapters) from the runtime.
async function trainWithout(setup: string): Promise<{ code: number; stderr: string }> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/main.ts`,
      `${setup}\nawait import(${JSON.stringify(MAIN)});\n`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${dir}/main.ts`, "--steps", "1", "--out", `${dir}/run`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr).trim() };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("missing WebGPU is a one-line error", async () => {
  const { code, stderr } = await trainWithout(
    `Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined });`,
  );
  assert.equal(code, 2, stderr);
  assert.equal(stderr.split("\n").length, 1, stderr);
  assert.match(stderr, /WebGPU is not available/);
  assert.match(stderr, /mesa-vulkan-drivers/);
});

Deno.test("missing adapter is a one-line error", async () => {
  const { code, stderr } = await trainWithout(
    `navigator.gpu.requestAdapter = () => Promise.resolve(null);`,
  );
  assert.equal(code, 2, stderr);
  assert.equal(stderr.split("\n").length, 1, stderr);
  assert.match(stderr, /no WebGPU adapter found/);
  assert.match(stderr, /GPU driver/);
});
