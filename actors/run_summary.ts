/**
 * The end of a bounded run: the final evaluation ({@linkcode finalEvaluation}),
 * the final θ committed ({@linkcode finalCommit}) and the totals of the "done"
 * event ({@linkcode summarize}), shared by the embedded run and the networked
 * host.
 *
 * @module
 */
import type { RunHost } from "./host.ts";
import type { RunMonitor } from "./monitor.ts";
import { sampleProblem, type TextSampleSpec } from "../kernels/sample.ts";
import type { RunHistory } from "./dashboard/history.ts";

/** What the final evaluation found: the loss, and the text sample when one was asked for. */
export interface FinalEvaluation {
  /** Validation loss, nats/byte; NaN when no trainer could evaluate. */
  loss: number;
  /** The sample's prompt and the text the final θ continues it with. */
  sample?: { prompt: string; text: string };
}

/**
 * Evaluates the final θ on the first of `trainers` that can, and with a
 * `sample` of at least one token has it continue the sample's prompt: every
 * trainer of the last round holds the same θ, but one evicted near the end
 * may hold none (it waits, pending, for a round that will not open) or may
 * have lost its device. Each failure is logged; the loss is NaN when every
 * trainer failed. Where the run's `history` already sampled the last round
 * with the same settings (the dashboard's evaluations do), that text is the
 * final θ's, and it is not written twice.
 */
export async function finalEvaluation(
  host: RunHost,
  trainers: string[],
  options: {
    maxWindows: number;
    timeoutMs: number;
    sample?: TextSampleSpec;
    history?: Pick<RunHistory, "settled" | "evals">;
  },
): Promise<FinalEvaluation> {
  const known = options.sample?.tokens ? await lastSample(host, options) : undefined;
  if (known) {
    const { loss } = await finalEvaluation(host, trainers, { ...options, sample: undefined });
    return { loss, sample: known };
  }
  const sample = options.sample?.tokens ? { sample: options.sample } : {};
  for (const t of new Set(trainers)) {
    try {
      const reply = await host.system.ref(t).ask<{ loss: number; sample?: unknown }>(
        { type: "eval", maxWindows: options.maxWindows, ...sample },
        { timeoutMs: options.timeoutMs },
      );
      const bad = sample.sample && sampleProblem(reply.sample, sample.sample);
      if (bad) host.monitor.log(`final sample from ${t} ignored: ${bad}`, "warn");
      return {
        loss: reply.loss,
        ...(sample.sample && !bad
          ? { sample: { prompt: sample.sample.prompt, text: reply.sample as string } }
          : {}),
      };
    } catch (err) {
      host.monitor.log(`final evaluation on ${t} failed: ${err}`, "warn");
    }
  }
  return { loss: NaN };
}

/** The sample the run's history took of the last round's θ with `options.sample`, if it did. */
async function lastSample(
  host: RunHost,
  options: { sample?: TextSampleSpec; history?: Pick<RunHistory, "settled" | "evals"> },
): Promise<FinalEvaluation["sample"]> {
  if (!options.history || !options.sample) return undefined;
  await options.history.settled();
  const last = host.monitor.plannedRounds - 1;
  const point = options.history.evals.find((p) => p.round === last);
  return point?.sample?.prompt === options.sample.prompt ? point.sample : undefined;
}

/** The final θ (the start of round `rounds`) is committed before a bounded run ends. */
export async function finalCommit(host: RunHost, rounds: number): Promise<void> {
  if (host.keeperPaths.length === 0 || !(rounds > 0)) return;
  if (!(await host.committed(rounds, 60_000))) {
    host.monitor.log(`the final round ${rounds} was not committed within 60 s`, "warn");
  }
}

/** The summary of a finished run (the "done" event's fields). */
export interface RunSummary {
  [k: string]: unknown;
  run: string;
  rounds: number;
  trainers: number;
  params: number;
  inner_steps: number;
  /** The pseudo-gradient exchange format; the byte counts below are its messages' encoded sizes. */
  exchange: string;
  /** The format of the updates trainers download. */
  update_exchange: string;
  tokens: number;
  first_loss: number;
  last_loss: number;
  final_eval_loss: number;
  /**
   * The text the final θ continues `sample_prompt` with (kernels/sample.ts
   * `TextSampleSpec`); absent when the run takes no sample.
   */
  final_sample?: string;
  sample_prompt?: string;
  restarts: number;
  rejected: number;
  hashes_equal: boolean;
  bytes_up_per_round_per_trainer: number;
  bytes_down_per_round_per_trainer: number;
  fp32_exchange_bytes_per_round_per_trainer: number;
  fp32_data_parallel_bytes_per_round_per_trainer: number;
  ratio_vs_fp32_exchange: number;
  /** fp32 data parallelism's upload per round and trainer over ours (H steps of 4 bytes a value). */
  reduction_vs_data_parallel: number;
  /**
   * Both directions: fp32 data parallelism uploads a gradient and downloads
   * the mean every step (8 bytes a value), ours a contribution and an update
   * a round.
   */
  reduction_vs_data_parallel_both_ways: number;
  utilization: number;
  wall_s: number;
}

/** Builds the summary from the monitor's round events. */
export function summarize(
  monitor: RunMonitor,
  options: {
    run: string;
    trainers: number;
    evalLoss: number;
    /** The final text sample and its prompt. */
    sample?: { prompt: string; text: string };
    exchange?: string;
    updateExchange?: string;
  },
): RunSummary {
  const rounds = monitor.rounds;
  const params = rounds[0]?.params ?? 0;
  const h = rounds[0]?.inner_steps ?? 0;
  let up = 0;
  let down = 0;
  let n = 0;
  for (const r of rounds) {
    const k = Math.max(1, r.theta_hashes.length);
    up += r.bytes_up / Math.max(1, r.trainers);
    down += r.bytes_down / k;
    n++;
  }
  const perUp = Math.round(up / Math.max(1, n));
  const perDown = Math.round(down / Math.max(1, n));
  return {
    run: options.run,
    rounds: rounds.length,
    trainers: options.trainers,
    params,
    inner_steps: h,
    exchange: options.exchange ?? "int8",
    update_exchange: options.updateExchange ?? "int8",
    tokens: rounds.reduce((s, r) => s + r.tokens, 0),
    first_loss: rounds[0]?.loss ?? NaN,
    last_loss: rounds.at(-1)?.loss ?? NaN,
    final_eval_loss: Math.round(options.evalLoss * 10_000) / 10_000,
    ...(options.sample
      ? { sample_prompt: options.sample.prompt, final_sample: options.sample.text }
      : {}),
    restarts: monitor.restarts,
    restarts_by_child: monitor.restartsBy,
    rejected: monitor.rejections.length,
    hashes_equal: rounds.every((r) => new Set(r.theta_hashes).size === 1),
    bytes_up_per_round_per_trainer: perUp,
    bytes_down_per_round_per_trainer: perDown,
    fp32_exchange_bytes_per_round_per_trainer: 4 * params,
    fp32_data_parallel_bytes_per_round_per_trainer: 4 * params * h,
    ratio_vs_fp32_exchange: Math.round(perUp / (4 * params) * 10_000) / 10_000,
    reduction_vs_data_parallel: Math.round(4 * params * h / Math.max(1, perUp) * 10) / 10,
    reduction_vs_data_parallel_both_ways:
      Math.round(8 * params * h / Math.max(1, perUp + perDown) * 10) / 10,
    utilization: Math.round(
      rounds.reduce((s, r) => s + r.utilization, 0) / Math.max(1, rounds.length) * 10_000,
    ) / 10_000,
    wall_s: Math.round(monitor.wallS * 1000) / 1000,
  };
}
