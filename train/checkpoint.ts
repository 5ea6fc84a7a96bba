// Training checkpoints: everything needed to continue a run bit for bit.
//
//   <out>/checkpoint/model.safetensors      every parameter, unmerged (names: layers/checkpoint.ts)
//   <out>/checkpoint/optimizer.safetensors  AdamW state: `<param>.exp_avg`, `<param>.exp_avg_sq`,
//                                           `<param>.master` (f32 copy of 16-bit parameters);
//                                           per-parameter step counts in the metadata
//   <out>/checkpoint/trainer.json           step, tokens, data-loader state, merge counts, options
//
// A checkpoint is written into a temporary directory and renamed into place.
// The previous one is kept as `checkpoint.prev`, so a crash at any point leaves
// a complete checkpoint, and a run that diverges right after a save can roll
// back to the one before (see `rollBack`).

import { openSafetensors, type TensorEntry, writeSafetensors } from "../core/safetensors.ts";
import { loadModelState, saveModelState } from "../layers/checkpoint.ts";
import type { AdamWParamState, AdamWState } from "../optim/adamw.ts";
import type { LoaderState } from "../data/pipeline.ts";
import type { TrainOptions } from "./options.ts";
import type { Trainer } from "./trainer.ts";

/** Raised when a resume directory contains no usable checkpoint. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
}

/** Contents of trainer.json. */
export interface TrainerState {
  version: 1;
  step: number;
  tokens: number;
  loader: LoaderState;
  merges: number[];
  options: TrainOptions;
}

/** Writes the trainer's state under `<out>/checkpoint`, atomically. */
export async function saveCheckpoint(trainer: Trainer, out: string): Promise<string> {
  const final = `${out}/checkpoint`;
  const tmp = `${out}/checkpoint.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  try {
    await saveModelState(trainer.model, `${tmp}/model.safetensors`);
    await saveOptimizer(await trainer.optimizer.stateDict(), `${tmp}/optimizer.safetensors`);
    const state: TrainerState = {
      version: 1,
      step: trainer.step,
      tokens: trainer.tokens,
      loader: trainer.loader.state(),
      merges: trainer.model.linears().map((l) => l.merges),
      options: trainer.opts,
    };
    await Deno.writeTextFile(`${tmp}/trainer.json`, JSON.stringify(state, null, 1) + "\n");

    const prev = `${out}/checkpoint.prev`;
    if (await exists(final)) {
      await Deno.remove(prev, { recursive: true }).catch(() => {});
      await Deno.rename(final, prev);
    }
    await Deno.rename(tmp, final);
    return final;
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Retires a checkpoint saved at or after `step`, whose weights produced a
 * non-finite loss: it moves to `checkpoint.diverged`, and `checkpoint.prev`
 * (when there is one) becomes current. Returns the step of the checkpoint now
 * current, or null when none is left.
 */
export async function rollBack(out: string, step: number): Promise<number | null> {
  const final = `${out}/checkpoint`;
  const prev = `${out}/checkpoint.prev`;
  const stepOf = async (dir: string) =>
    await exists(`${dir}/trainer.json`) ? (await readTrainerState(dir)).step : null;
  const current = await stepOf(final);
  if (current !== null && current >= step) {
    const diverged = `${out}/checkpoint.diverged`;
    await Deno.remove(diverged, { recursive: true }).catch(() => {});
    await Deno.rename(final, diverged);
    if ((await stepOf(prev)) !== null) await Deno.rename(prev, final);
  }
  return await stepOf(final);
}

/** Finds the checkpoint directory to resume from in `out`, or throws a one-line error. */
export async function findCheckpoint(out: string): Promise<string> {
  for (const dir of [`${out}/checkpoint`, `${out}/checkpoint.prev`]) {
    if (await exists(`${dir}/trainer.json`)) return dir;
  }
  throw new CheckpointError(
    `no checkpoint in ${out} (expected ${out}/checkpoint/trainer.json): pass the --out directory of an earlier run to --resume`,
  );
}

/** Reads trainer.json of a checkpoint. */
export async function readTrainerState(dir: string): Promise<TrainerState> {
  try {
    const state = JSON.parse(await Deno.readTextFile(`${dir}/trainer.json`)) as TrainerState;
    if (state.version !== 1) throw new Error(`unknown version ${state.version}`);
    return state;
  } catch (e) {
    throw new CheckpointError(
      `${dir}/trainer.json is unreadable (${
        (e as Error).message.split("\n")[0]
      }): resume from another checkpoint or start a new run`,
    );
  }
}

/** Loads weights, optimizer state and counters of a checkpoint into a freshly created trainer. */
export async function loadCheckpoint(trainer: Trainer, dir: string, state: TrainerState) {
  for (const file of ["model.safetensors", "optimizer.safetensors"]) {
    if (!(await exists(`${dir}/${file}`))) {
      throw new CheckpointError(
        `${dir}/${file} is missing: the checkpoint is incomplete; resume from another checkpoint or start a new run`,
      );
    }
  }
  await loadModelState(trainer.model, `${dir}/model.safetensors`);
  trainer.optimizer.loadStateDict(await loadOptimizer(`${dir}/optimizer.safetensors`));
  const linears = trainer.model.linears();
  if (state.merges.length !== linears.length) {
    throw new CheckpointError(
      `${dir}: checkpoint has ${state.merges.length} block linears, the model ${linears.length}: resume with the same --model`,
    );
  }
  linears.forEach((l, i) => l.merges = state.merges[i]);
  trainer.step = state.step;
  trainer.tokens = state.tokens;
}

async function saveOptimizer(state: AdamWState, path: string) {
  const entries: TensorEntry[] = [];
  const steps: Record<string, { step: number; stateDtype: string }> = {};
  for (const p of state.params) {
    const stateType = p.stateDtype === "f32" ? "F32" : "BF16";
    const perElem = p.stateDtype === "f32" ? 4 : 2;
    const numel = p.m.byteLength / perElem;
    entries.push({ name: `${p.name}.exp_avg`, dtype: stateType, shape: [numel], bytes: p.m });
    entries.push({ name: `${p.name}.exp_avg_sq`, dtype: stateType, shape: [numel], bytes: p.v });
    if (p.master) {
      entries.push({
        name: `${p.name}.master`,
        dtype: "F32",
        shape: [p.master.byteLength / 4],
        bytes: p.master,
      });
    }
    steps[p.name] = { step: p.step, stateDtype: p.stateDtype };
  }
  await writeSafetensors(path, entries, { steps: JSON.stringify(steps) });
}

async function loadOptimizer(path: string): Promise<AdamWState> {
  const file = await openSafetensors(path);
  try {
    const steps = JSON.parse(file.metadata.steps ?? "{}") as Record<
      string,
      { step: number; stateDtype: "f32" | "bf16" }
    >;
    const params: AdamWParamState[] = [];
    for (const [name, info] of Object.entries(steps)) {
      const master = file.tensors.has(`${name}.master`) ? await file.read(`${name}.master`) : null;
      params.push({
        name,
        step: info.step,
        stateDtype: info.stateDtype,
        m: await file.read(`${name}.exp_avg`),
        v: await file.read(`${name}.exp_avg_sq`),
        master,
      });
    }
    return { params };
  } finally {
    file.close();
  }
}
