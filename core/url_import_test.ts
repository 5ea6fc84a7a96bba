// Imports core/, layers/ and optim/ by URL from a directory with no deno.json,
// as another project would: proves the modules need no import map.

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));

Deno.test("core/mod.ts imports by URL without an import map", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    if (path.includes("..")) return new Response("bad path", { status: 400 });
    try {
      const body = await Deno.readFile(root + path.slice(1));
      return new Response(body, { headers: { "content-type": "application/typescript" } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  const dir = await Deno.makeTempDir();
  try {
    const host = `127.0.0.1:${server.addr.port}`;
    const base = `http://${host}`;
    await Deno.writeTextFile(
      `${dir}/main.ts`,
      `import { initGpu, fromArray, add } from "${base}/core/mod.ts";
import * as layers from "${base}/layers/mod.ts";
import * as optim from "${base}/optim/mod.ts";
await initGpu();
const y = add(fromArray([1, 2], [2]), fromArray([10, 20], [2]));
console.log(JSON.stringify([...(await y.toArray())]), Object.keys(layers).length > 0, Object.keys(optim).length > 0);
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-config",
        "--no-lock",
        "--unstable-webgpu",
        `--allow-import=${host}`,
        "main.ts",
      ],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "[11,22] true true");
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
