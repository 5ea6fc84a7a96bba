// `deno task params`: prints the total and trainable parameter counts of a model under a
// training method, without allocating the model.

import { parseArgs } from "node:util";
import {
  ConfigError,
  configFromHf,
  getPreset,
  type ModelConfig,
  PRESETS,
} from "../layers/config.ts";
import {
  countParams,
  METHODS,
  type ParamCount,
  ParamsError,
  parseMethod,
  usesRank,
} from "../layers/params.ts";

// The same defaults as `deno task train`, so a default run's counts need no flags.
const DEFAULTS = { model: "qwen2.5-tiny", method: "bpt", rank: "32" };

const HELP = `Usage: deno task params [--model M] [--method M] [--rank R] [--json]

Prints total, trainable and non-embedding parameter counts and the reduction of trainable
parameters versus full training.

  --model M   preset name or path to a Hugging Face config.json, or a folder containing one
              (default ${DEFAULTS.model}); presets:
              ${Object.keys(PRESETS).join(", ")}
  --method M  ${METHODS.join(" | ")} (default ${DEFAULTS.method})
  --rank R    adapter rank for bpt, lora and relora; ignored by the others (default ${DEFAULTS.rank})
  --json      print one JSON object instead of the table (default off)
  --help      print this help`;

class UsageError extends Error {}

function parseFlags(args: string[]) {
  try {
    return parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        model: { type: "string", default: DEFAULTS.model },
        method: { type: "string", default: DEFAULTS.method },
        rank: { type: "string", default: DEFAULTS.rank },
        json: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
    }).values;
  } catch (error) {
    // node:util's messages span several sentences, so they are replaced with one line.
    const code = (error as { code?: string }).code;
    const detail = (error as Error).message.match(/'([^']*)'/)?.[1] ?? "";
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      throw new UsageError(`unknown flag ${detail}: run with --help to list the flags`);
    }
    if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      throw new UsageError(
        `invalid value for ${detail.split(" ")[0]}: run with --help for its format`,
      );
    }
    if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
      throw new UsageError(`unexpected argument ${detail}: all inputs are flags, run with --help`);
    }
    throw error;
  }
}

function parseRank(text: string): number {
  if (!/^[0-9]+$/.test(text)) {
    throw new UsageError(`--rank "${text}" is invalid: use a positive integer`);
  }
  return Number(text);
}

async function loadModel(model: string): Promise<ModelConfig> {
  if (Object.hasOwn(PRESETS, model)) return getPreset(model);
  let path = model;
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
    if (stat.isDirectory) {
      path = `${path}/config.json`;
      stat = await Deno.stat(path);
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new UsageError(
      `--model "${model}" is neither a preset nor an existing config.json: ` +
        `use one of ${Object.keys(PRESETS).join(", ")} or a path`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    throw new UsageError(
      `${path} is not valid JSON (${
        error.message.split("\n")[0]
      }): pass a Hugging Face config.json`,
    );
  }
  return configFromHf(json);
}

const int = (n: number) => n.toLocaleString("en-US");
const percent = (fraction: number) => `${(100 * fraction).toFixed(1)} %`;

function formatTable(model: string, cfg: ModelConfig, c: ParamCount): string {
  const rank = usesRank(c.method) ? `, rank ${c.rank}` : "";
  const k = c.classes;
  const rows: [string, number, number][] = [
    ["embeddings", k.embeddings.total, k.embeddings.trainable],
    ["norms", k.norms.total, k.norms.trainable],
    ["biases", k.biases.total, k.biases.trainable],
    [`wrapped linears (${c.wrappedLinears})`, k.wrappedLinears.total, k.wrappedLinears.trainable],
    [`full linears (${c.fullLinears})`, k.fullLinears.total, k.fullLinears.trainable],
    ["all", c.total, c.trainable],
    ["non-embedding", c.nonEmbeddingTotal, c.nonEmbeddingTrainable],
  ];
  const labelWidth = Math.max(...rows.map((r) => r[0].length));
  const numberWidth = Math.max("trainable".length, ...rows.map((r) => int(r[1]).length));
  const line = (label: string, a: string, b: string) =>
    `${label.padEnd(labelWidth)}  ${a.padStart(numberWidth)}  ${b.padStart(numberWidth)}`;

  const wrappedNames = c.perLinear.filter((l) => l.wrapped).map((l) => l.name).join(", ") || "none";
  return [
    `model   ${model} (${cfg.arch}, ${cfg.numLayers} layers, hidden ${cfg.hiddenSize}, vocab ${
      int(cfg.vocabSize)
    })`,
    `method  ${c.method}${rank}; wrapped per block: ${wrappedNames}`,
    "",
    line("", "total", "trainable"),
    ...rows.map(([label, total, trainable]) => line(label, int(total), int(trainable))),
    "",
    `reduction of trainable parameters vs full: ${percent(c.reduction)} ` +
    `(non-embedding ${percent(c.nonEmbeddingReduction)})`,
  ].join("\n");
}

async function main(args: string[]): Promise<number> {
  const flags = parseFlags(args);
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const method = parseMethod(flags.method);
  const rank = parseRank(flags.rank);
  const cfg = await loadModel(flags.model);
  const count = countParams(cfg, method, rank);

  if (flags.json) {
    console.log(
      JSON.stringify({
        model: flags.model,
        config: cfg,
        ...count,
        rank: usesRank(method) ? rank : null,
      }),
    );
  } else {
    console.log(formatTable(flags.model, cfg, count));
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    if (
      error instanceof UsageError || error instanceof ConfigError || error instanceof ParamsError
    ) {
      console.error(`error: ${error.message}`);
      Deno.exit(2);
    }
    throw error;
  }
}
