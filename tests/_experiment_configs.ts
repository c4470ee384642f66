/**
 * The configurations of `deno task experiment` (tests/_experiment.ts runs
 * them): what one configuration is, the settings every configuration of one
 * experiment shares, the standard rows (DiLoCo with each exchange format,
 * single trainers, the paper's preset, plain averaging, overlapped outer
 * steps, the embedded run) and the Byzantine rows of tests/_byzantine.ts as
 * in-process int8 DiLoCo configurations.
 *
 * @module
 */
import { getConfig } from "../kernels/config.ts";
import {
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  DILOCO_PAPER_OUTER,
  type OuterOptimizer,
} from "../actors/outer_optimizer.ts";
import type { SyncMode } from "../actors/overlap.ts";
import type { AggregateRule } from "../actors/robust_aggregate.ts";
import { type Adversary, byzantineRows } from "./_byzantine.ts";

/** How a configuration trains. */
export type ExperimentKind = "diloco" | "single" | "run";

/** One configuration of the experiment. */
export interface ExperimentConfig {
  /** Name used with `--configs`. */
  name: string;
  /** One line for the table. */
  description: string;
  /** "diloco" (in-process DiLoCo), "single" (one trainer), "run" (runEmbedded). */
  kind: ExperimentKind;
  /** Trainers (1 for "single"). */
  trainers: number;
  /** Sequences per inner step. */
  batch: number;
  /** Inner steps per round H (ignored for "single"). */
  innerSteps: number;
  /** Outer optimizer (ignored for "single"). */
  outer: OuterOptimizer;
  /**
   * Pseudo-gradient exchange (ignored for "single"): "fp32", or a run's
   * format (kernels/exchange_format.ts: "int8", "int4", "topk:F"; int4 and
   * top-k with the trainers' error feedback, as in the run).
   */
  exchange: string;
  /**
   * The format of the aggregator's update (default "int8"; "int4" or
   * "topk:F" with the aggregator's error feedback, as a run's
   * `--update-exchange`). Ignored with an fp32 exchange, whose update is fp32.
   */
  updateExchange?: string;
  /** Zero each trainer's AdamW moments at every round (default false: keep them). */
  innerReset?: boolean;
  /**
   * Inner learning-rate schedule: "run" (default, the run's: one cosine over
   * all rounds) or "round" (the cosine restarts every round).
   */
  innerSchedule?: "run" | "round";
  /** Inner warm-up steps of each trainer's optimizer (default: the run's). */
  innerWarmup?: number;
  /** How the aggregator combines contributions (default: the token-weighted mean; int8 only). */
  aggregate?: AggregateRule;
  /** The last trainer is hostile and sends this instead of its Δ (in-process int8 only). */
  adversary?: Adversary;
  /** The outer step blocking (default) or overlapped with the next round's inner steps. */
  sync?: SyncMode;
  /**
   * Overlapped only: τ, the inner step of round r+1 before which round r's
   * update is merged (0 to H; default `defaultOverlapSteps` of actors/overlap.ts). A
   * real trainer merges as soon as the update arrives and waits for it at
   * step τ at the latest, so τ bounds the staleness this models.
   */
  overlapSteps?: number;
  /** Fragments synchronised in turn, one per round (default 1: the whole vector). */
  fragments?: number;
}

/** Settings shared by every configuration of one experiment. */
export interface ExperimentSettings {
  /** Model config name (default "small"). */
  config: string;
  /** Inner steps per trainer: the budget (single trainers take this many steps). */
  steps: number;
  /** Init and sampling seed. */
  seed: number;
  /** Validation windows, spread over the split, for the final loss. */
  evalWindows: number;
  /** Slices of the training stream (the run's default, 16). */
  dataShards: number;
}

/** Trainers, batch and H of the DiLoCo configurations unless overridden. */
export interface DilocoDefaults {
  trainers: number;
  innerSteps: number;
  outer: OuterOptimizer;
  innerReset?: boolean;
  innerSchedule?: "run" | "round";
  /** Fraction of each block the diloco-topk row sends (default 0.05). */
  topk?: number;
  /** τ of the overlapped rows (default `defaultOverlapSteps` of actors/overlap.ts). */
  overlapSteps?: number;
  /** The update format of the coded rows that name none (default int8). */
  updateExchange?: string;
}

/**
 * The experiment's configurations: the four plus the paper's preset
 * and plain averaging for the record, and the default through the real run.
 * `diloco` overrides the settings of the DiLoCo rows that use the defaults.
 */
export function standardConfigs(
  config: string,
  diloco: Partial<DilocoDefaults> = {},
): ExperimentConfig[] {
  const batch = getConfig(config).train.batch;
  const d: DilocoDefaults = {
    trainers: diloco.trainers ?? 4,
    innerSteps: diloco.innerSteps ?? DEFAULT_INNER_STEPS,
    outer: diloco.outer ?? { ...DEFAULT_OUTER },
    innerReset: diloco.innerReset ?? false,
    innerSchedule: diloco.innerSchedule ?? "run",
  };
  const k = d.trainers;
  const topk = diloco.topk ?? 0.05;
  const base = {
    trainers: k,
    batch,
    innerSteps: d.innerSteps,
    innerReset: d.innerReset,
    innerSchedule: d.innerSchedule,
    ...(diloco.updateExchange ? { updateExchange: diloco.updateExchange } : {}),
  };
  return [
    {
      ...base,
      name: "diloco-int8",
      description: `DiLoCo, ${k} trainers, int8 exchange`,
      kind: "diloco",
      outer: d.outer,
      exchange: "int8",
    },
    {
      ...base,
      name: "diloco-int4",
      description: `DiLoCo, ${k} trainers, int4 exchange with error feedback`,
      kind: "diloco",
      outer: d.outer,
      exchange: "int4",
    },
    {
      ...base,
      name: "diloco-topk",
      description: `DiLoCo, ${k} trainers, top-${topk * 100}% exchange with error feedback`,
      kind: "diloco",
      outer: d.outer,
      exchange: `topk:${topk}`,
    },
    {
      ...base,
      name: "diloco-1000x",
      description: `DiLoCo, ${k} trainers, top-2% up and top-3% down with error feedback at H = ${
        2 * d.innerSteps
      } (over 1,000× fewer bytes both ways than fp32 data parallel at H = 20)`,
      kind: "diloco",
      // Twice the rounds' length halves the bytes a token costs; top-2% up
      // and top-3% down keep both directions together over 1,000× below fp32
      // data parallelism with the least loss measured (README, "Fewer bits").
      innerSteps: 2 * d.innerSteps,
      outer: d.outer,
      exchange: "topk:0.02",
      updateExchange: "topk:0.03",
    },
    {
      ...base,
      name: "diloco-fp32",
      description: `DiLoCo, ${k} trainers, fp32 exchange`,
      kind: "diloco",
      outer: d.outer,
      exchange: "fp32",
    },
    {
      name: "single-4x",
      description: `one trainer, ${k}x batch (data-parallel equivalent)`,
      kind: "single",
      trainers: 1,
      batch: batch * k,
      innerSteps: 0,
      outer: { lr: 1, momentum: 0 },
      exchange: "fp32",
    },
    {
      name: "single",
      description: "one trainer, same batch (a volunteer alone)",
      kind: "single",
      trainers: 1,
      batch,
      innerSteps: 0,
      outer: { lr: 1, momentum: 0 },
      exchange: "fp32",
    },
    {
      ...base,
      name: "diloco-paper",
      description: `DiLoCo, ${k} trainers, int8, paper's outer Nesterov`,
      kind: "diloco",
      outer: { ...DILOCO_PAPER_OUTER },
      exchange: "int8",
    },
    {
      ...base,
      name: "diloco-average",
      description: `DiLoCo, ${k} trainers, int8, plain averaging`,
      kind: "diloco",
      outer: { lr: 1, momentum: 0 },
      exchange: "int8",
    },
    {
      ...base,
      name: "diloco-overlap",
      description: `DiLoCo, ${k} trainers, int8, overlapped outer step`,
      kind: "diloco",
      outer: d.outer,
      exchange: "int8",
      sync: "overlapped",
      ...(diloco.overlapSteps !== undefined ? { overlapSteps: diloco.overlapSteps } : {}),
    },
    {
      ...base,
      name: "diloco-overlap-late",
      description: `DiLoCo, ${k} trainers, int8, overlapped, merged a full round late`,
      kind: "diloco",
      outer: d.outer,
      exchange: "int8",
      sync: "overlapped",
      overlapSteps: d.innerSteps,
    },
    {
      ...base,
      name: "diloco-overlap-frag",
      description: `DiLoCo, ${k} trainers, int8, overlapped, 2 fragments`,
      kind: "diloco",
      outer: d.outer,
      exchange: "int8",
      sync: "overlapped",
      fragments: 2,
      ...(diloco.overlapSteps !== undefined ? { overlapSteps: diloco.overlapSteps } : {}),
    },
    {
      ...base,
      name: "diloco-run",
      description: `the embedded run (deno task node): ${k} trainers in Workers, int8`,
      kind: "run",
      outer: d.outer,
      exchange: "int8",
    },
  ];
}

/**
 * The Byzantine rows (tests/_byzantine.ts) as in-process int8 DiLoCo
 * configurations with the defaults of `diloco`; `robust` is the rule of the
 * robust rows.
 */
export function byzantineConfigs(
  config: string,
  robust: AggregateRule,
  diloco: Partial<DilocoDefaults> = {},
): ExperimentConfig[] {
  const batch = getConfig(config).train.batch;
  return byzantineRows(robust).map((row) => ({
    ...row,
    kind: "diloco",
    batch,
    innerSteps: diloco.innerSteps ?? DEFAULT_INNER_STEPS,
    outer: diloco.outer ?? { ...DEFAULT_OUTER },
    exchange: "int8",
    innerReset: diloco.innerReset ?? false,
    innerSchedule: diloco.innerSchedule ?? "run",
  }));
}
