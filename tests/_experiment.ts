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
 * Δ = θ_r − θ_local. With a coded exchange (int8, int4, top-k) Δ goes
 * through the run's {@linkcode ShardAggregator} (the codes up, the update
 * down in int8 or the row's `updateExchange`, residual feedback on both
 * sides, Nesterov step, {@linkcode applyCoded}), exactly what the
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
 * The configurations are in tests/_experiment_configs.ts, the result rows,
 * summary and table in tests/_experiment_summary.ts.
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
import { applyCoded, toWire } from "../actors/exchange.ts";
import { encodeRef, feedbackEncodeRef } from "../kernels/lowbit_reference.ts";
import { parseExchange, usesFeedback } from "../kernels/exchange_format.ts";
import { encode } from "../transport/codec.ts";
import { outerAt } from "../actors/outer_optimizer.ts";
import { DEFAULT_BLOCK, shardMap } from "../actors/run_protocol.ts";
import { DEFAULT_SYNC, defaultOverlapSteps, keepsRunning, mergeRange } from "../actors/overlap.ts";
import { roundRanges } from "../actors/fragments.ts";
import { engineSettings } from "../actors/run_settings.ts";
import { runEmbedded } from "../actors/embedded.ts";
import { formatAggregate } from "../actors/robust_aggregate.ts";
import { adversarialDelta } from "./_byzantine.ts";
import type { ExperimentConfig, ExperimentSettings } from "./_experiment_configs.ts";
import type { ExperimentResult } from "./_experiment_summary.ts";

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
    bytesDown?: number;
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
    // The embedded run takes the run's default; in-process rows block unless they say otherwise.
    sync: single ? null : (c.sync ?? (c.kind === "run" ? DEFAULT_SYNC : "blocking")),
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
    update_exchange: single ? null : c.exchange === "fp32" ? "fp32" : (c.updateExchange ?? "int8"),
    bytes_down_per_round_per_trainer: r.bytesDown ?? null,
    reduction_both_ways_vs_fp32_data_parallel: dp !== undefined && r.bytesUp && r.bytesDown
      ? Math.round(2 * dp / (r.bytesUp + r.bytesDown) * 10) / 10
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
      ...(c.updateExchange ? { updateExchange: c.updateExchange } : {}),
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
    if (fragments !== 1 && !format) {
      throw new RangeError(
        `Invalid experiment config "${c.name}": fragments need a coded exchange (int8, int4, topk)`,
      );
    }
    // Each trainer's error-feedback residual (what its codes have not carried yet).
    const residuals = models.map(() => new Float32Array(n));
    // Trainer 0's contributions and the updates, summed over the rounds
    // (their pieces differ with fragments).
    let bytesSum = 0;
    let bytesDownSum = 0;
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
        bytesDownSum += encode(update).byteLength;
        applyCoded(theta.subarray(lo, hi), update, { block: DEFAULT_BLOCK });
      } else {
        bytesSum += 4 * n;
        bytesDownSum += 4 * n;
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
      bytesDown: Math.round(bytesDownSum / R),
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
    ...(c.sync ? { sync: c.sync } : {}),
    ...(c.updateExchange ? { updateExchange: c.updateExchange } : {}),
    ...(c.exchange !== "int8" ? { exchange: c.exchange } : {}),
    trainers: c.trainers,
    evalWindows: s.evalWindows,
    emit: () => {},
  });
  if (!summary.hashes_equal) throw new Error(`Run "${c.name}": trainers' θ hashes differ`);
  return result(c, s, {
    trainLoss: summary.last_loss,
    evalLoss: summary.final_eval_loss,
    bytesUp: summary.bytes_up_per_round_per_trainer,
    bytesDown: summary.bytes_down_per_round_per_trainer,
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
