/**
 * The settings of a run and what follows from them: the model shape
 * ({@linkcode runModel}, {@linkcode paramLength}), the trainers' engine
 * ({@linkcode engineSettings}), the record kept with every checkpoint
 * ({@linkcode runSettingsOf}) and the data cursors a resumed run goes on
 * from ({@linkcode resumeCursors}).
 *
 * @module
 */
import type { OuterOptimizer } from "./outer_optimizer.ts";
import { checkSync, DEFAULT_SYNC, type SyncMode } from "./overlap.ts";
import { checkFragments, roundPiece } from "./fragments.ts";
import { DEFAULT_BLOCK, type ReportCursor } from "./run_protocol.ts";
import type { WorkerInit } from "./trainer_worker.ts";
import { describeConfig, getConfig, type GptConfig } from "../kernels/config.ts";
import { DEFAULT_EXCHANGE } from "../kernels/exchange_format.ts";
import { resolveShape, SHAPE_FIELDS, type ShapeOverrides } from "../kernels/shape.ts";
import { buildLayout } from "../kernels/layout.ts";
import type { Precision } from "../kernels/model_options.ts";
import type { TunerTable } from "../kernels/matmul_tune.ts";
import type { ResumedRun } from "../checkpoint/resume.ts";

/** Settings of a run (shared by host, joiners and the embedded run). */
export interface RunSettings {
  /** Run id. */
  run: string;
  /** Model configuration name (kernels/config.ts). */
  config: string;
  /**
   * Fields of the config's shape to override (`--n-layer --n-head --n-embd
   * --block-size`); the host hands them to joiners and records them with
   * every checkpoint, so every trainer and a resumed run build this shape.
   */
  model?: ShapeOverrides;
  /** Rounds to train (0: no bound). */
  rounds: number;
  /** Inner steps H per round. */
  innerSteps: number;
  /** Outer optimizer. */
  outer: OuterOptimizer;
  /** Corpus path; the default corpus when absent. */
  dataPath?: string;
  /** Parameter init and sampling seed (default 1). */
  seed?: number;
  /** Slices of the training stream (default 16). */
  dataShards?: number;
  /** Inner learning rate (default: the config's). */
  innerLr?: number;
  /** Sequences per micro-batch of an inner step (default: the config's). */
  batch?: number;
  /**
   * Micro-batches per inner step (default 1): each inner step trains on
   * gradAccum × batch sequences with one AdamW update, and a trainer's
   * contributed tokens count all of them.
   */
  gradAccum?: number;
  /** Inner warm-up steps of each trainer's own optimizer (default: the config's). */
  innerWarmup?: number;
  /**
   * Pseudo-gradient exchange format (kernels/exchange_format.ts: "int8", the
   * default, "int4" or "topk:F"); handed to joiners and recorded with every
   * checkpoint.
   */
  exchange?: string;
  /**
   * The format of the aggregated update every trainer downloads (default
   * "int8"; "int4" or "topk:F" cut the download as `exchange` cuts the
   * upload, the aggregator keeping what the code leaves out for the next
   * round). Each update names its format, so joiners need no setting;
   * recorded with every checkpoint.
   */
  updateExchange?: string;
  /**
   * How the aggregators combine contributions, in `--aggregate` form
   * (actors/robust_aggregate.ts): "mean" (the default, token-weighted),
   * "trimmed-mean:F", "median" or "clip:TAU".
   */
  aggregate?: string;
  /**
   * The matmul inputs' precision of this node's trainers (default "f32";
   * see `ModelOptions.precision`).
   * A choice of each machine, like the corpus path: neither handed to
   * joiners nor recorded. Trainers of any precision hold bit-identical θ:
   * the pseudo-gradient is taken of the f32 master weights, and every update
   * is applied on the CPU.
   */
  precision?: Precision;
  /**
   * The matmul tuning table of this node's trainers (`--tune-matmuls`;
   * kernels/matmul_tune.ts): each trainer builds its model with the table's
   * choices and measures the shapes it lacks. Each machine's own, like the
   * precision: neither handed to joiners nor recorded.
   */
  matmulTuning?: TunerTable;
  /**
   * The outer step overlapped with the next round's inner steps (the
   * default, `DEFAULT_SYNC` of actors/overlap.ts) or blocking; every trainer
   * of the run uses the host's.
   */
  sync?: SyncMode;
  /** Fragments synchronised in turn, one per round (default 1; actors/fragments.ts). */
  fragments?: number;
  /**
   * Overlapped: τ, the inner steps of the next round that may run before a
   * round's update is merged (1 to H; default a fifth of a round).
   */
  overlapSteps?: number;
}

/** Length of the flat parameter vector of a named config or a shape (padding included). */
export function paramLength(config: string | GptConfig): number {
  return buildLayout(typeof config === "string" ? getConfig(config).model : config).totalLength;
}

/**
 * The model shape a run trains: its named config with `model`'s overrides;
 * a RangeError names the bad field.
 *
 * @example
 * ```ts
 * import { runModel } from "./run_settings.ts";
 * console.log(runModel({ config: "small", model: { nLayer: 4 } }).nLayer); // 4
 * ```
 */
export function runModel(s: Pick<RunSettings, "config" | "model">): GptConfig {
  return resolveShape(s.config, s.model ?? {}, "field");
}

/**
 * Refuses a joiner's own shape overrides that disagree with the run it joins
 * (joiners train the host's shape); undefined when they agree.
 */
export function shapeConflict(
  own: ShapeOverrides | undefined,
  run: GptConfig,
): string | undefined {
  for (const { field, flag } of SHAPE_FIELDS) {
    const want = own?.[field];
    if (want !== undefined && want !== run[field]) {
      return `--${flag} ${want} differs from the run's model ${describeConfig(run)}`;
    }
  }
  return undefined;
}

/**
 * Refuses a joiner's own `--exchange` (or, with `flag`, `--update-exchange`)
 * that differs from the run's (every trainer of a run sends one format, and
 * the host's aggregators send updates in one); undefined when they agree.
 *
 * @example
 * ```ts
 * import { exchangeConflict } from "./run_settings.ts";
 * console.log(exchangeConflict("int4", undefined)); // "--exchange int4 differs from the run's int8"
 * ```
 */
export function exchangeConflict(
  own: string | undefined,
  run: string | undefined,
  flag = "--exchange",
): string | undefined {
  const theirs = run ?? DEFAULT_EXCHANGE;
  return own !== undefined && own !== theirs
    ? `${flag} ${own} differs from the run's ${theirs}`
    : undefined;
}

/** The run settings part of host options (recorded with every checkpoint). */
export function runSettingsOf(o: RunSettings): RunSettings {
  return {
    run: o.run,
    config: o.config,
    ...(o.model && Object.keys(o.model).length ? { model: { ...o.model } } : {}),
    rounds: o.rounds,
    innerSteps: o.innerSteps,
    outer: o.outer,
    ...(o.dataPath ? { dataPath: o.dataPath } : {}),
    ...(o.seed !== undefined ? { seed: o.seed } : {}),
    ...(o.dataShards !== undefined ? { dataShards: o.dataShards } : {}),
    ...(o.innerLr !== undefined ? { innerLr: o.innerLr } : {}),
    ...(o.batch !== undefined ? { batch: o.batch } : {}),
    ...(o.gradAccum !== undefined ? { gradAccum: o.gradAccum } : {}),
    ...(o.exchange !== undefined ? { exchange: o.exchange } : {}),
    ...(o.updateExchange !== undefined ? { updateExchange: o.updateExchange } : {}),
    ...(o.aggregate !== undefined ? { aggregate: o.aggregate } : {}),
    // Recorded whatever the default: a checkpoint or a joiner never has to guess it.
    sync: o.sync ?? DEFAULT_SYNC,
    ...(o.fragments !== undefined ? { fragments: o.fragments } : {}),
    ...(o.overlapSteps !== undefined ? { overlapSteps: o.overlapSteps } : {}),
  };
}

/**
 * Checks a run's sync mode and fragments against its shard map: every shard
 * must have at least one block per fragment (any exchange format: an int4 or
 * top-k trainer moves its error-feedback residual on the round's piece
 * only). The RangeError names the field.
 *
 * @example
 * ```ts
 * import { checkSyncSettings } from "./run_settings.ts";
 * import assert from "node:assert/strict";
 * checkSyncSettings({ sync: "overlapped", fragments: 2, innerSteps: 10 }, [{ length: 4096 }]);
 * assert.throws(
 *   () => checkSyncSettings({ fragments: 32, innerSteps: 10 }, [{ length: 4096 }]),
 *   /Invalid fragments/,
 * );
 * ```
 */
export function checkSyncSettings(
  s: Pick<RunSettings, "sync" | "fragments" | "overlapSteps" | "innerSteps" | "exchange">,
  shards: readonly { length: number }[],
  names: { sync: string; fragments: string; overlapSteps: string; exchange: string } = {
    sync: "sync",
    fragments: "fragments",
    overlapSteps: "overlapSteps",
    exchange: "exchange",
  },
): void {
  if (s.sync !== undefined) checkSync(s.sync, names.sync);
  if (s.overlapSteps !== undefined) {
    const t = s.overlapSteps;
    if ((s.sync ?? DEFAULT_SYNC) !== "overlapped") {
      throw new RangeError(
        `Invalid ${names.overlapSteps}: only an overlapped run (${names.sync} overlapped) merges late`,
      );
    }
    if (!Number.isSafeInteger(t) || t < 1 || t > s.innerSteps) {
      throw new RangeError(
        `Invalid ${names.overlapSteps}: expected an integer from 1 to H = ${s.innerSteps}, got ${t}`,
      );
    }
  }
  if (s.fragments === undefined) return;
  const f = checkFragments(s.fragments, names.fragments);
  try {
    for (const shard of shards) roundPiece(shard, 0, f, DEFAULT_BLOCK);
  } catch (err) {
    throw new RangeError(String((err as Error).message).replace("fragments", names.fragments));
  }
}

/** Whether a value read back from a checkpoint is a data cursor (kernels/data.ts `DataCursor`). */
export function isReportCursor(v: unknown): v is ReportCursor {
  const c = v as ReportCursor;
  return typeof c === "object" && c !== null && Number.isSafeInteger(c.seed) &&
    Number.isSafeInteger(c.step) && typeof c.shard === "object" && c.shard !== null &&
    Number.isSafeInteger(c.shard.index) && Number.isSafeInteger(c.shard.count);
}

/** The data cursors of a resumed round, one per data shard. */
export function resumeCursors(resume: Pick<ResumedRun, "cursors">): ReportCursor[] {
  const byShard = new Map<string, ReportCursor>();
  for (const v of Object.values(resume.cursors ?? {})) {
    if (!isReportCursor(v)) continue;
    const key = `${v.shard.index}/${v.shard.count}`;
    // Two trainers on one shard (a rejoin): the one further along wins.
    if ((byShard.get(key)?.step ?? -1) < v.step) byShard.set(key, v);
  }
  return [...byShard.values()];
}

/** Worker settings for trainers of a run. */
export function engineSettings(s: RunSettings): Omit<WorkerInit, "op" | "id" | "dataShard"> {
  const c = getConfig(s.config);
  return {
    config: runModel(s),
    batch: s.batch ?? c.train.batch,
    gradAccum: s.gradAccum ?? 1,
    seed: s.seed ?? 1,
    lr: s.innerLr ?? c.train.lr,
    // The warm-up counts the trainer's own steps across rounds; clamping it to
    // H (as before) left the small model stuck on a loss plateau near 3.0.
    warmup: s.innerWarmup ??
      Math.min(c.train.warmup, Math.max(1, (s.rounds || 100) * s.innerSteps)),
    totalSteps: Math.max(1, (s.rounds || 100) * s.innerSteps),
    ...(s.dataPath ? { dataPath: s.dataPath } : {}),
    ...(s.precision ? { precision: s.precision } : {}),
    ...(s.matmulTuning ? { matmulTuning: s.matmulTuning } : {}),
    dataSeed: s.seed ?? 1,
    block: DEFAULT_BLOCK,
    ...(s.exchange !== undefined ? { exchange: s.exchange } : {}),
  };
}

/**
 * Refuses to resume at `round` a run bounded to `rounds` rounds: it would
 * have no round left to train. The RangeError names `--rounds`.
 *
 * @example
 * ```ts
 * import { checkResumeRound } from "./run_settings.ts";
 * checkResumeRound(4, 9); // trains rounds 4 to 8
 * ```
 */
export function checkResumeRound(round: number, rounds: number): void {
  if (rounds > 0 && round >= rounds) {
    throw new RangeError(
      `Cannot resume at round ${round}: the run trains ${rounds} rounds ` +
        `(pass --rounds N with N > ${round} to train on)`,
    );
  }
}

/** The actor path of a host's own trainer, `<node>/run/trainers/<i>` (joiners have other ids). */
const OWN_TRAINER = /^[^/]+\/run\/trainers\/\d+$/;

/**
 * The trainers the checkpointed host ran in its own process: the count
 * recorded with the checkpoint, else (a checkpoint written before the count
 * was recorded) the number of its own trainers that saved a data cursor;
 * undefined when neither says.
 *
 * @example
 * ```ts
 * import { resumedTrainers } from "./run_settings.ts";
 * console.log(resumedTrainers({ settings: { trainers: 2 } })); // 2
 * ```
 */
export function resumedTrainers(
  resume: Pick<ResumedRun, "settings" | "cursors">,
): number | undefined {
  const recorded = resume.settings?.trainers;
  if (typeof recorded === "number" && Number.isSafeInteger(recorded) && recorded >= 0) {
    return recorded;
  }
  const own = Object.entries(resume.cursors ?? {})
    .filter(([id, c]) => OWN_TRAINER.test(id) && isReportCursor(c));
  return own.length > 0 ? own.length : undefined;
}

/**
 * The data shards a resumed run deals before it opens (the tracker's
 * `resumedShards`): each of `trainers` (the host's own trainers, back under
 * the ids they saved their cursors with) gets its own shard back, and every
 * shard with a saved cursor is `saved`. Cursors cut into another number of
 * shards than `dataShards` name no shard of this run and are left out.
 *
 * @example
 * ```ts
 * import { savedDataShards } from "./run_settings.ts";
 * const cursors = {
 *   "host/run/trainers/0": { seed: 1, shard: { index: 1, count: 16 }, step: 40 },
 *   "trainer-7/node/trainer": { seed: 1, shard: { index: 0, count: 16 }, step: 40 },
 * };
 * console.log(savedDataShards({ cursors }, { dataShards: 16, trainers: ["host/run/trainers/0"] }));
 * // { byTrainer: { "host/run/trainers/0": 1 }, saved: [0, 1] }
 * ```
 */
export function savedDataShards(
  resume: Pick<ResumedRun, "cursors">,
  options: { dataShards: number; trainers: readonly string[] },
): { byTrainer: Record<string, number>; saved: number[] } {
  const byTrainer: Record<string, number> = {};
  const saved = new Set<number>();
  for (const [id, c] of Object.entries(resume.cursors ?? {})) {
    if (!isReportCursor(c) || c.shard.count !== options.dataShards) continue;
    saved.add(c.shard.index);
    if (options.trainers.includes(id)) byTrainer[id] = c.shard.index;
  }
  return { byTrainer, saved: [...saved].sort((a, b) => a - b) };
}
