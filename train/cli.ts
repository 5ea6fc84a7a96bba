// Error handling shared by the CLIs: bad input (flags, files, configs, a
// missing GPU or a device limit) prints one line and exits with code 2;
// anything else is a bug and keeps its stack trace.

import { GpuError, NoGpuError } from "../core/gpu.ts";
import { SafetensorsError } from "../core/safetensors.ts";
import { ShapeError } from "../core/tensor.ts";
import { ConfigError } from "../layers/config.ts";
import { ParamsError } from "../layers/params.ts";
import { DataError } from "../data/errors.ts";
import { OptionsError } from "./options.ts";
import { CheckpointError } from "./checkpoint.ts";
import { DivergedError } from "./run.ts";

const USER_ERRORS = [
  NoGpuError,
  GpuError,
  ShapeError,
  SafetensorsError,
  ConfigError,
  ParamsError,
  DataError,
  OptionsError,
  CheckpointError,
  DivergedError,
];

/** Runs a CLI's main function, turning user errors into one line on stderr and exit code 2. */
export async function runCli(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (USER_ERRORS.some((cls) => e instanceof cls)) {
      console.error(`error: ${(e as Error).message.split("\n")[0]}`);
      Deno.exit(2);
    }
    throw e;
  }
}
