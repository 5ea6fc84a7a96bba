/**
 * Training: the trainer behind `deno task train` and `deno task compare`, its
 * options, checkpoints, the FLOP counter and the SVG charts.
 *
 * @module
 */

export { buildSchedule, type StepResult, Trainer } from "./trainer.ts";
export { DivergedError, type EvalPoint, type RunSummary, runTraining } from "./run.ts";
export {
  CheckpointError,
  findCheckpoint,
  loadCheckpoint,
  readTrainerState,
  saveCheckpoint,
  type TrainerState,
} from "./checkpoint.ts";
export {
  methodDefaultLr,
  OptionsError,
  parseTrainArgs,
  resolveModelConfig,
  TRAIN_HELP,
  type TrainOptions,
} from "./options.ts";
export { mfu, type StepFlops, stepFlops } from "./flops.ts";
export { lineChart } from "./svg.ts";
