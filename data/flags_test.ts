import assert from "node:assert/strict";
import { parseArgs } from "node:util";
import { nearestName, parseArgsMessage, parseTokenCount } from "./flags.ts";

const OPTIONS = {
  steps: { type: "string" },
  out: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Returns parseArgsMessage's text for the error parseArgs throws on `args`. */
function messageFor(args: string[]): string | null {
  try {
    parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false });
  } catch (error) {
    return parseArgsMessage(error, Object.keys(OPTIONS), "bench");
  }
  assert.fail(`parseArgs accepted ${args.join(" ")}`);
}

Deno.test("parseArgs errors become one line", () => {
  const help = "run deno task bench --help to list the flags";
  const cases: [string[], string][] = [
    [["--stepz", "3"], "unknown flag --stepz: did you mean --steps? Run deno task bench --help"],
    [["--zzzzzzzz"], `unknown flag --zzzzzzzz: ${help}`],
    [["--out"], `--out is missing its value: ${help} and their formats`],
    [["--out", "-x"], '--out is followed by a value that starts with "-"'],
    [["--help=yes"], "--help takes no value"],
    [["extra"], `unexpected argument "extra": every input is given with a flag, ${help}`],
  ];
  for (const [args, expected] of cases) {
    const message = messageFor(args);
    assert.ok(message?.startsWith(expected), `${args.join(" ")}: ${message}`);
    assert.ok(!message?.includes("\n"), `${args.join(" ")}: ${message}`);
  }
});

Deno.test("parseArgsMessage ignores other errors", () => {
  assert.equal(parseArgsMessage(new Error("boom"), ["out"], "bench"), null);
  assert.equal(parseArgsMessage(undefined, ["out"], "bench"), null);
});

Deno.test("nearestName skips unrelated names", () => {
  assert.equal(nearestName("dta", ["data", "out", "name"]), "data");
  assert.equal(nearestName("shard-tokns", ["val-tokens", "shard-tokens"]), "shard-tokens");
  assert.equal(nearestName("zzzzzzzz", ["data", "out"]), null);
  assert.equal(nearestName("x", []), null);
});

Deno.test("token counts take K/M/B suffixes", () => {
  const cases: [string, number, number | null][] = [
    ["1000000", 1, 1_000_000],
    ["1_000_000", 1, 1_000_000],
    ["1M", 1, 1_000_000],
    ["1m", 1, 1_000_000],
    ["2.5k", 1, 2500],
    ["1.1K", 1, 1100],
    ["3B", 1, 3_000_000_000],
    ["1e3", 1, 1000],
    ["0", 0, 0],
    ["0", 1, null],
    ["1.5", 1, null],
    ["-3", 0, null],
    ["1G", 1, null],
    ["", 0, null],
    ["1e30", 1, null],
  ];
  for (const [text, min, expected] of cases) {
    assert.equal(parseTokenCount(text, min), expected, `"${text}" with min ${min}`);
  }
});
