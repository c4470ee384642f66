/**
 * The experiment behind the run's outer-optimizer defaults: DiLoCo against
 * single trainers on the same token budget, with real models on the WebGPU
 * device and the run's own aggregation code.
 *
 * A DiLoCo configuration here follows the embedded run step for step: every
 * trainer starts from the same seed-initialised θ_0 and reads its own shard of
 * the training stream (the run's 16 data shards), runs H AdamW steps with the
 * trainer Worker's learning-rate schedule (cosine over the whole run, a
 * warm-up of min(30, H) steps, AdamW moments kept across rounds), and sends
 * Δ = θ_r − θ_local. With int8 exchange Δ goes through the run's
 * {@linkcode ShardAggregator} (int8 with per-block scales both ways,
 * residual feedback, Nesterov step, {@linkcode applyUpdate}), exactly what the
 * aggregator actor does; with fp32 exchange the same Nesterov step is taken on
 * the exact fp32 average. Trainers take turns on one device, so this is the
 * run's math without its Workers and messages; the "diloco-run" configuration
 * runs the real thing ({@linkcode runEmbedded}) for comparison.
 *
 * A single-trainer configuration is `deno task train`: one model reading the
 * whole training stream with that task's schedule (warm-up, then cosine to
 * 10%).
 *
 * The Byzantine rows (tests/_byzantine.ts, `byz-*`) run the in-process
 * DiLoCo with five trainers of which the last sends a hostile contribution,
 * combined by the mean or a robust rule, against four honest trainers.
 *
 * Every configuration is scored the same way: the mean next-byte
 * cross-entropy ({@linkcode evaluate}, the definition of `deno task eval`) on
 * the same `evalWindows` windows spread over the validation split.
 *
 * @module
 */
import type { Gpu } from "../kernels/device.ts";
import { getConfig } from "../kernels/config.ts";
import type { Corpus } from "../kernels/data.ts";
import { batchSampler } from "../kernels/data.ts";
import { evaluate, windowCount } from "../kernels/evaluate.ts";
import { createModel, type GptModel } from "../kernels/model.ts";
import { pipelinedSteps } from "../kernels/pipeline.ts";
import { nesterovStepRef } from "../kernels/reference.ts";
import { learningRate } from "../kernels/train_main.ts";
import { ShardAggregator } from "../actors/aggregation.ts";
import { applyUpdate } from "../actors/int8_exchange.ts";
import { toWire } from "../actors/exchange.ts";
import { encodeRef, feedbackEncodeRef } from "../kernels/lowbit_reference.ts";
import { parseExchange, usesFeedback } from "../kernels/exchange_format.ts";
import { encode } from "../transport/codec.ts";
import {
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  DILOCO_PAPER_OUTER,
  outerAt,
  type OuterOptimizer,
} from "../actors/outer_optimizer.ts";
import { DEFAULT_BLOCK, shardMap } from "../actors/run_protocol.ts";
import { defaultOverlapSteps, keepsRunning, mergeRange, type SyncMode } from "../actors/overlap.ts";
import { roundRanges } from "../actors/fragments.ts";
import { engineSettings } from "../actors/run_settings.ts";
import { runEmbedded } from "../actors/embedded.ts";
import { type AggregateRule, formatAggregate } from "../actors/robust_aggregate.ts";
import { adversarialDelta, type Adversary, byzantineRows } from "./_byzantine.ts";

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
   * update is merged (0 to H; default {@linkcode defaultOverlapSteps}). A
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

/** The result of one configuration (one JSON line with `--json`). */
export interface ExperimentResult {
  event: "config";
  name: string;
  description: string;
  kind: ExperimentKind;
  trainers: number;
  batch: number;
  inner_steps: number | null;
  rounds: number | null;
  outer_lr: number | null;
  outer_momentum: number | null;
  outer_warmup_rounds: number | null;
  exchange: string | null;
  inner_reset: boolean | null;
  inner_schedule: "run" | "round" | null;
  /** Blocking or overlapped outer step (null for single trainers). */
  sync: SyncMode | null;
  /** Fragments synchronised in turn (null for single trainers). */
  fragments: number | null;
  /** Data shards of the training stream; trainer i reads shard i (null: the whole stream). */
  data_shards: number | null;
  /** The aggregation rule ("mean": the token-weighted mean; null for single trainers). */
  aggregate: string | null;
  /** What the hostile last trainer sends, if there is one. */
  adversary: Adversary | null;
  steps_per_trainer: number;
  tokens: number;
  /**
   * Bytes one trainer sends per round: the msgpack-encoded contribution
   * message, as the run counts it (fp32: 4 bytes a value; null for "single").
   */
  bytes_up_per_round_per_trainer: number | null;
  /** What fp32 data-parallel training sends per trainer in as many steps: 4 × params × H. */
  fp32_data_parallel_bytes_per_round_per_trainer: number | null;
  /** The second over the first. */
  reduction_vs_fp32_data_parallel: number | null;
  final_train_loss: number;
  final_eval_loss: number;
  eval_windows: number;
  wall_s: number;
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
  /** τ of the overlapped rows (default {@linkcode defaultOverlapSteps}). */
  overlapSteps?: number;
}

/**
 * The experiment's configurations: the issue's four plus the paper's preset
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

/** The inner learning rate of the run's trainer Worker (kept in step with actors/trainer_worker.ts). */
export function innerLr(
  peak: number,
  opts: { globalStep: number; totalSteps: number; ownStep: number; warmup: number },
): number {
  const t = Math.min(1, opts.globalStep / Math.max(1, opts.totalSteps));
  const cosine = 0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * t));
  const warm = Math.min(1, (opts.ownStep + 1) / Math.max(1, opts.warmup));
  return peak * cosine * warm;
}

function rounds(c: ExperimentConfig, steps: number): number {
  if (!(c.innerSteps >= 1) || steps % c.innerSteps !== 0) {
    throw new RangeError(
      `Invalid experiment config "${c.name}": ${steps} steps per trainer is not a multiple of H = ${c.innerSteps}`,
    );
  }
  return steps / c.innerSteps;
}

function result(
  c: ExperimentConfig,
  s: ExperimentSettings,
  r: {
    trainLoss: number;
    evalLoss: number;
    windows: number;
    wallS: number;
    bytesUp?: number;
    params?: number;
  },
): ExperimentResult {
  const single = c.kind === "single";
  const T = getConfig(s.config).model.blockSize;
  const dp = r.params !== undefined ? 4 * r.params * c.innerSteps : undefined;
  return {
    event: "config",
    name: c.name,
    description: c.description,
    kind: c.kind,
    trainers: c.trainers,
    batch: c.batch,
    inner_steps: single ? null : c.innerSteps,
    rounds: single ? null : s.steps / c.innerSteps,
    outer_lr: single ? null : c.outer.lr,
    outer_momentum: single ? null : c.outer.momentum,
    outer_warmup_rounds: single ? null : (c.outer.warmupRounds ?? 0),
    exchange: single ? null : c.exchange,
    inner_reset: single ? null : (c.innerReset ?? false),
    inner_schedule: single ? null : (c.innerSchedule ?? "run"),
    sync: single ? null : (c.sync ?? "blocking"),
    fragments: single ? null : (c.fragments ?? 1),
    data_shards: single ? null : s.dataShards,
    aggregate: single ? null : c.aggregate ? formatAggregate(c.aggregate) : "mean",
    adversary: c.adversary ?? null,
    steps_per_trainer: s.steps,
    // A hostile trainer's tokens teach the model nothing: rows compare on honest tokens.
    tokens: (c.trainers - (c.adversary ? 1 : 0)) * s.steps * c.batch * T,
    bytes_up_per_round_per_trainer: r.bytesUp ?? null,
    fp32_data_parallel_bytes_per_round_per_trainer: dp ?? null,
    reduction_vs_fp32_data_parallel: dp !== undefined && r.bytesUp
      ? Math.round(dp / r.bytesUp * 10) / 10
      : null,
    final_train_loss: Math.round(r.trainLoss * 10_000) / 10_000,
    final_eval_loss: Math.round(r.evalLoss * 10_000) / 10_000,
    eval_windows: r.windows,
    wall_s: Math.round(r.wallS * 10) / 10,
  };
}

async function score(
  model: GptModel,
  corpus: Corpus,
  s: ExperimentSettings,
): Promise<{ loss: number; windows: number }> {
  const r = await evaluate(model, corpus.val, { maxWindows: s.evalWindows, selection: "spread" });
  return { loss: r.loss, windows: r.windows };
}

/** One trainer, `deno task train`'s schedule, on the whole training stream. */
async function runSingle(
  gpu: Gpu,
  corpus: Corpus,
  c: ExperimentConfig,
  s: ExperimentSettings,
): Promise<ExperimentResult> {
  const t0 = performance.now();
  const named = getConfig(s.config);
  const model = await createModel(gpu, named.model, { seed: s.seed, batch: c.batch });
  try {
    const sampler = batchSampler(corpus.train, {
      batch: c.batch,
      blockSize: named.model.blockSize,
      seed: s.seed,
    });
    const sched = {
      lr: named.train.lr,
      warmup: Math.min(named.train.warmup, s.steps),
      steps: s.steps,
    };
    let last = NaN;
    await pipelinedSteps(model, s.steps, (i) => ({
      ...sampler.next(),
      lr: learningRate(i, sched),
    }), (i, loss) => {
      last = loss;
      if (!Number.isFinite(loss)) {
        throw new Error(`Training diverged: loss ${loss} at step ${i + 1}`);
      }
    });
    const ev = await score(model, corpus, s);
    return result(c, s, {
      trainLoss: last,
      evalLoss: ev.loss,
      windows: ev.windows,
      wallS: (performance.now() - t0) / 1000,
    });
  } finally {
    model.dispose();
  }
}

/** DiLoCo in this process: real models, the run's schedule and aggregation. */
async function runDiloco(
  gpu: Gpu,
  corpus: Corpus,
  c: ExperimentConfig,
  s: ExperimentSettings,
): Promise<ExperimentResult> {
  const t0 = performance.now();
  const named = getConfig(s.config);
  const R = rounds(c, s.steps);
  const H = c.innerSteps;
  const models: GptModel[] = [];
  try {
    for (let i = 0; i < c.trainers; i++) {
      models.push(await createModel(gpu, named.model, { seed: s.seed, batch: c.batch }));
    }
    const samplers = models.map((_, i) =>
      batchSampler(corpus.train, {
        batch: c.batch,
        blockSize: named.model.blockSize,
        seed: s.seed,
        shard: { index: i % s.dataShards, count: s.dataShards },
      })
    );
    // The run's Worker compiles its pipelines with one throw-away step, which
    // draws the first batch: skip it too.
    for (const sp of samplers) sp.next();
    const theta = await models[0].getParams();
    const n = theta.length;
    const names = models.map((_, i) => `t${i}`);
    const [shard] = shardMap(n, { aggregators: ["a0"] });
    if ((c.adversary || c.aggregate) && c.exchange !== "int8") {
      throw new RangeError(
        `Invalid experiment config "${c.name}": adversaries and aggregate rules need int8 exchange`,
      );
    }
    const fragments = c.fragments ?? 1;
    const agg = new ShardAggregator({
      run: "experiment",
      shard,
      theta,
      outer: c.outer,
      ...(c.exchange === "fp32" ? {} : { exchange: c.exchange }),
      ...(c.aggregate ? { aggregate: c.aggregate } : {}),
      fragments,
    });
    const momentum = new Float32Array(n);
    // The run's engine settings: peak lr, warm-up and the cosine's length.
    const eng = engineSettings({
      run: "experiment",
      config: s.config,
      rounds: R,
      innerSteps: H,
      outer: c.outer,
      seed: s.seed,
      batch: c.batch,
      ...(c.innerWarmup !== undefined ? { innerWarmup: c.innerWarmup } : {}),
    });
    const tokens = H * c.batch * named.model.blockSize;
    const ownSteps = models.map(() => 0);
    const format = c.exchange === "fp32" ? undefined : parseExchange(c.exchange);
    if (fragments !== 1 && format?.kind !== "int8") {
      throw new RangeError(`Invalid experiment config "${c.name}": fragments need int8`);
    }
    // Each trainer's error-feedback residual (what its codes have not carried yet).
    const residuals = models.map(() => new Float32Array(n));
    // Trainer 0's contributions, summed over the rounds (their pieces differ with fragments).
    let bytesSum = 0;
    // Overlapped or fragmented: each trainer's running parameters and its
    // last pseudo-gradient (the Worker's delta buffer) live across rounds.
    const keep = keepsRunning({ sync: c.sync, fragments });
    const mergeAt = c.sync === "overlapped"
      ? Math.min(H, Math.max(0, c.overlapSteps ?? defaultOverlapSteps(H)))
      : 0;
    const lastDelta = models.map(() => new Float32Array(n));
    /** θ_r of the ranges merged last: what `mergeRange` needs as "global". */
    let previousTheta = new Float32Array(theta);
    /** The ranges the last closed round synchronised (none before round 0 closes). */
    let lastRanges: { lo: number; hi: number }[] = [];
    let trainLoss = NaN;
    for (let r = 0; r < R; r++) {
      agg.setView({
        type: "view",
        run: "experiment",
        epoch: r + 1,
        round: r,
        trainers: names,
        aggregators: ["a0"],
        shards: [shard],
        params: n,
        block: DEFAULT_BLOCK,
        dataShards: names.map((_, i) => i),
        started: true,
        rounds: R,
      });
      const deltas: Float32Array[] = [];
      let lossSum = 0;
      for (let i = 0; i < models.length; i++) {
        const m = models[i];
        if (!keep || r === 0) m.setParams(theta);
        if (c.innerReset && r > 0) m.resetOptimizer();
        let sum = 0;
        const perRound = c.innerSchedule === "round";
        const steps = async (from: number, to: number) => {
          await pipelinedSteps(m, to - from, (k) => ({
            ...samplers[i].next(),
            lr: innerLr(eng.lr, {
              globalStep: perRound ? from + k : r * H + from + k,
              totalSteps: perRound ? H : eng.totalSteps,
              ownStep: ownSteps[i]++,
              warmup: eng.warmup,
            }),
          }), (_, loss) => {
            if (!Number.isFinite(loss)) {
              throw new Error(`Training diverged: trainer ${i} loss ${loss} in round ${r}`);
            }
            sum += loss;
          });
        };
        // Round r−1's update merges before inner step `mergeAt` of round r
        // (at once when blocking), replacing the local move by the global one.
        const split = keep && r > 0 ? mergeAt : 0;
        await steps(0, split);
        if (keep && r > 0) {
          const running = await m.getParams();
          const global = new Float32Array(previousTheta);
          for (const range of lastRanges) {
            mergeRange({ running, global, incoming: theta, delta: lastDelta[i] }, range);
          }
          m.setParams(running);
        }
        await steps(split, H);
        lossSum += sum / H;
        const local = await m.getParams();
        const delta = new Float32Array(n);
        for (let j = 0; j < n; j++) delta[j] = theta[j] - local[j];
        lastDelta[i] = delta;
        const hostile = c.adversary && i === models.length - 1;
        deltas.push(
          hostile ? adversarialDelta(delta, c.adversary!, { seed: s.seed, round: r }) : delta,
        );
      }
      trainLoss = lossSum / models.length;
      previousTheta = new Float32Array(theta);
      if (format) {
        const { lo, hi } = agg.piece(r);
        for (let i = 0; i < deltas.length; i++) {
          const piece = deltas[i].subarray(lo, hi);
          const coded = usesFeedback(format)
            ? feedbackEncodeRef(format, piece, residuals[i].subarray(lo, hi))
            : encodeRef(format, piece);
          const msg = {
            type: "contribution" as const,
            run: "experiment",
            round: r,
            epoch: r + 1,
            trainer: names[i],
            shard: 0,
            tokens,
            n: hi - lo,
            ...(format.kind === "int8" ? {} : { format: c.exchange }),
            ...toWire(format, coded, hi - lo),
            loss: trainLoss,
          };
          if (i === 0) bytesSum += encode(msg).byteLength;
          const res = agg.offer(msg);
          if (res.status !== "accepted") {
            throw new Error(
              `Aggregator refused trainer ${i} in round ${r}: ${JSON.stringify(res)}`,
            );
          }
        }
        const { update } = agg.close();
        applyUpdate(theta.subarray(lo, hi), update, { block: DEFAULT_BLOCK });
      } else {
        bytesSum += 4 * n;
        const avg = new Float32Array(n);
        const w = Math.fround(1 / deltas.length);
        for (const d of deltas) for (let j = 0; j < n; j++) avg[j] += Math.fround(w * d[j]);
        const step = outerAt(c.outer, r);
        nesterovStepRef({ theta, momentum, delta: avg }, { n, lr: step.lr, mu: step.momentum });
      }
      lastRanges = roundRanges([shard], r, fragments, DEFAULT_BLOCK);
    }
    models[0].setParams(theta);
    const ev = await score(models[0], corpus, s);
    return result(c, s, {
      trainLoss,
      evalLoss: ev.loss,
      windows: ev.windows,
      wallS: (performance.now() - t0) / 1000,
      bytesUp: Math.round(bytesSum / R),
      params: n,
    });
  } finally {
    for (const m of models) m.dispose();
  }
}

/** The real embedded run (trainers in Workers, actors, int8 on the GPU). */
async function runReal(
  corpus: Corpus,
  c: ExperimentConfig,
  s: ExperimentSettings,
): Promise<ExperimentResult> {
  if (c.innerReset || (c.innerSchedule ?? "run") !== "run") {
    throw new RangeError(
      `Invalid experiment config "${c.name}": the embedded run keeps AdamW state and one cosine over the run`,
    );
  }
  if (c.adversary) {
    throw new RangeError(
      `Invalid experiment config "${c.name}": adversaries run in-process only (kind "diloco")`,
    );
  }
  const t0 = performance.now();
  const R = rounds(c, s.steps);
  const summary = await runEmbedded({
    run: `experiment-${c.name}`,
    config: s.config,
    rounds: R,
    innerSteps: c.innerSteps,
    outer: c.outer,
    seed: s.seed,
    dataShards: s.dataShards,
    batch: c.batch,
    ...(c.innerWarmup !== undefined ? { innerWarmup: c.innerWarmup } : {}),
    ...(c.aggregate ? { aggregate: formatAggregate(c.aggregate) } : {}),
    trainers: c.trainers,
    evalWindows: s.evalWindows,
    emit: () => {},
  });
  if (!summary.hashes_equal) throw new Error(`Run "${c.name}": trainers' θ hashes differ`);
  return result(c, s, {
    trainLoss: summary.last_loss,
    evalLoss: summary.final_eval_loss,
    bytesUp: summary.bytes_up_per_round_per_trainer,
    params: summary.params,
    windows: Math.min(
      s.evalWindows,
      windowCount(corpus.val.length, getConfig(s.config).model.blockSize),
    ),
    wallS: (performance.now() - t0) / 1000,
  });
}

/**
 * Runs one configuration and returns its result.
 *
 * @example
 * ```ts ignore
 * const gpu = await acquireGpu();
 * const corpus = await loadCorpus();
 * const [c] = standardConfigs("tiny");
 * const r = await runConfig(gpu, corpus, c, { config: "tiny", steps: 4, seed: 1, evalWindows: 8, dataShards: 16 });
 * ```
 */
export async function runConfig(
  gpu: Gpu,
  corpus: Corpus,
  c: ExperimentConfig,
  s: ExperimentSettings,
): Promise<ExperimentResult> {
  if (c.kind === "single") return await runSingle(gpu, corpus, c, s);
  if (c.kind === "diloco") return await runDiloco(gpu, corpus, c, s);
  return await runReal(corpus, c, s);
}

/** The closing line: headline comparisons between the configurations that ran. */
export interface ExperimentSummary {
  event: "summary";
  steps_per_trainer: number;
  seed: number;
  eval_windows: number;
  losses: Record<string, number>;
  /** (int8 − fp32) / fp32 of the final eval loss, when both ran. */
  int8_vs_fp32_relative: number | null;
  /** (int4 − int8) / int8 of the final eval loss (the issue's bar: within 0.01), when both ran. */
  int4_vs_int8_relative: number | null;
  /** (top-k − int8) / int8 of the final eval loss, when both ran. */
  topk_vs_int8_relative: number | null;
  /** single − diloco-int8 (positive: DiLoCo beats one trainer alone). */
  diloco_gain_over_single: number | null;
  /** diloco-int8 − single-4x (what is left to the data-parallel bound). */
  diloco_gap_to_4x: number | null;
  /** Fraction of the single → single-4x gap DiLoCo closes. */
  diloco_gap_closed: number | null;
  /**
   * Each Byzantine row's (loss − byz-honest4) / byz-honest4, when byz-honest4
   * ran; byz-honest5-robust is also measured against byz-honest5-mean
   * (`robust_cost_no_adversary`).
   */
  byzantine_vs_honest4: Record<string, number> | null;
  /** (byz-honest5-robust − byz-honest5-mean) / byz-honest5-mean, when both ran. */
  robust_cost_no_adversary: number | null;
  /** (diloco-overlap − diloco-int8) / diloco-int8 of the final eval loss, when both ran. */
  overlap_vs_blocking_relative: number | null;
  /** (diloco-overlap-frag − diloco-int8) / diloco-int8, when both ran. */
  overlap_frag_vs_blocking_relative: number | null;
  wall_s: number;
}

/** Builds the summary line from the results. */
export function summarizeExperiment(
  results: ExperimentResult[],
  s: ExperimentSettings,
  wallS: number,
): ExperimentSummary {
  const by = Object.fromEntries(results.map((r) => [r.name, r.final_eval_loss]));
  const r4 = (x: number) => Math.round(x * 10_000) / 10_000;
  const has = (...k: string[]) => k.every((x) => typeof by[x] === "number");
  return {
    event: "summary",
    steps_per_trainer: s.steps,
    seed: s.seed,
    eval_windows: results[0]?.eval_windows ?? 0,
    losses: by,
    int8_vs_fp32_relative: has("diloco-int8", "diloco-fp32")
      ? r4((by["diloco-int8"] - by["diloco-fp32"]) / by["diloco-fp32"])
      : null,
    int4_vs_int8_relative: has("diloco-int4", "diloco-int8")
      ? r4((by["diloco-int4"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    topk_vs_int8_relative: has("diloco-topk", "diloco-int8")
      ? r4((by["diloco-topk"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    diloco_gain_over_single: has("diloco-int8", "single")
      ? r4(by["single"] - by["diloco-int8"])
      : null,
    diloco_gap_to_4x: has("diloco-int8", "single-4x")
      ? r4(by["diloco-int8"] - by["single-4x"])
      : null,
    diloco_gap_closed: has("diloco-int8", "single-4x", "single")
      ? r4((by["single"] - by["diloco-int8"]) / (by["single"] - by["single-4x"]))
      : null,
    byzantine_vs_honest4: has("byz-honest4")
      ? Object.fromEntries(
        results.filter((r) => r.name.startsWith("byz-") && r.name !== "byz-honest4").map((
          r,
        ) => [r.name, r4((r.final_eval_loss - by["byz-honest4"]) / by["byz-honest4"])]),
      )
      : null,
    robust_cost_no_adversary: has("byz-honest5-mean", "byz-honest5-robust")
      ? r4((by["byz-honest5-robust"] - by["byz-honest5-mean"]) / by["byz-honest5-mean"])
      : null,
    overlap_vs_blocking_relative: has("diloco-overlap", "diloco-int8")
      ? r4((by["diloco-overlap"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    overlap_frag_vs_blocking_relative: has("diloco-overlap-frag", "diloco-int8")
      ? r4((by["diloco-overlap-frag"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    wall_s: Math.round(wallS * 10) / 10,
  };
}

/** The results as a markdown table. */
export function markdownTable(results: ExperimentResult[]): string {
  const head =
    "| configuration | trainers × batch | H | outer lr | momentum | warm-up rounds | exchange | sync | fragments | bytes up per round and trainer | vs fp32 data parallel | final eval loss | tokens | wall s |";
  const sep =
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";
  const dash = (x: number | string | null) => x === null ? "–" : String(x);
  const rows = results.map((r) =>
    `| ${r.name}: ${r.description} | ${r.trainers} × ${r.batch} | ${dash(r.inner_steps)} | ${
      dash(r.outer_lr)
    } | ${dash(r.outer_momentum)} | ${dash(r.outer_warmup_rounds)} | ${dash(r.exchange)} | ${
      dash(r.sync)
    } | ${dash(r.fragments)} | ${
      dash(r.bytes_up_per_round_per_trainer?.toLocaleString("en-US") ?? null)
    } | ${
      r.reduction_vs_fp32_data_parallel === null ? "–" : `${r.reduction_vs_fp32_data_parallel}×`
    } | ${r.final_eval_loss.toFixed(4)} | ${r.tokens.toLocaleString("en-US")} | ${r.wall_s} |`
  );
  return [head, sep, ...rows].join("\n");
}
