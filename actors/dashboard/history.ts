/**
 * What a host shows of its run (the dashboard, `GET /status`, `GET /metrics`):
 * the history of closed rounds, periodic evaluations and committed
 * checkpoints, recorded from the run monitor's events, and the live state of
 * the members, asked of the tracker and the trainers when it is read.
 *
 * @module
 */
import type { RunEvent } from "../monitor.ts";
import type { RunHost } from "../host.ts";
import { sampleProblem, type TextSampleSpec } from "../../kernels/sample.ts";

/** One closed round, as plotted. */
export interface RoundPoint {
  round: number;
  /** The view epoch the round closed in. */
  view: number;
  /** Trainers whose contribution counted. */
  trainers: number;
  /** Mean inner training loss, nats/byte. */
  loss: number;
  tokens: number;
  bytes_up: number;
  bytes_down: number;
  /** Mean share of the round the contributors spent training (0-1). */
  utilization: number;
  /** Contributions refused in the round. */
  rejected: number;
  /** Trainers of the view that did not contribute. */
  missing: number;
  /** Seconds since the host started when the round closed. */
  wall_s: number;
}

/** An evaluation of the parameters a trainer holds after `round` closed. */
export interface EvalPoint {
  round: number;
  /** Validation loss, nats/byte. */
  eval_loss: number;
  wall_s: number;
  /** The text those parameters continue the run's sample prompt with (when it takes samples). */
  sample?: { prompt: string; text: string };
}

/** A round committed by the checkpoint keepers. */
export interface CommitPoint {
  round: number;
  params_hash: string;
  holders: string[];
  wall_s: number;
  /** Seconds from the close of the round that produced this state to its commit. */
  latency_s: number | null;
}

/**
 * What a member is doing: a trainer is `training` (inner steps), `blocked`
 * (its contribution sent, waiting for the round's update) or `idle` (between
 * rounds, fetching its start state, or done); a pending joiner is `joining`;
 * other roles are `active`; a member that does not answer is `silent`.
 */
export type MemberState = "training" | "blocked" | "idle" | "joining" | "active" | "silent";

/** A member of the tracker's list with its state. */
export interface MemberRow {
  node: string;
  roles: string[];
  /** The tracker's status: "member" or "pending". */
  status: string;
  state: MemberState;
  dataShard: number;
  silentMs: number;
  /** The fingerprint of the node's key, where the host knows keys. */
  key?: string;
}

/** Cumulative counts of commit latencies at or below each bound, seconds. */
export interface LatencyHistogram {
  bounds: number[];
  /** counts[i]: commits with latency ≤ bounds[i]; the last entry counts all (+Inf). */
  counts: number[];
  sum: number;
  count: number;
}

/** The live part of the run: what `GET /status` adds to the tracker's status. */
export interface LiveState {
  run: string;
  /**
   * The round and epoch of the newest view the run published (the monitor
   * keeps it; a tracker that just restarted knows an older one until its
   * members re-announce).
   */
  round: number;
  epoch: number;
  /** Rounds the run trains (0: no bound). */
  rounds_target: number;
  rounds_done: number;
  params: number;
  inner_steps: number;
  trainers_in_view: number;
  members: MemberRow[];
  /** Trainers evicted for silence and not back, with the round. */
  evicted: Record<string, number>;
  restarts: number;
  /** Restarts by "<supervisor>/<child>", e.g. "trainers/2". */
  restarts_by_child: Record<string, number>;
  /** Refused contributions by reason (aggregation.ts `RejectReason`). */
  rejected_by_reason: Record<string, number>;
  last_round: RoundPoint | null;
  last_eval: EvalPoint | null;
  latest_commit: CommitPoint | null;
  commit_latency: LatencyHistogram;
  totals: { tokens: number; bytes_up: number; bytes_down: number };
  /** The last round of a bounded run closed. */
  done: boolean;
  wall_s: number;
}

/** Everything the page needs on connect; later changes come as events. */
export interface DashboardSnapshot {
  live: LiveState;
  rounds: RoundPoint[];
  evals: EvalPoint[];
  commits: CommitPoint[];
}

/** A change pushed to the page (`GET /events`), named as the event type. */
export type DashboardEvent =
  | { type: "round"; data: RoundPoint }
  | { type: "eval"; data: EvalPoint }
  | { type: "commit"; data: CommitPoint }
  | { type: "live"; data: LiveState };

/** Options of {@linkcode RunHistory}. */
export interface HistoryOptions {
  /**
   * Evaluate at most every this many rounds on a trainer of the run (default 0:
   * never); `evalShare` may space evaluations further.
   */
  evalEvery?: number;
  /**
   * The most of a trainer's training time the evaluations may take (default
   * 0.02). An evaluation runs on the trainers between their inner steps,
   * each on its part of the windows: after each one the next waits until
   * enough rounds have gone by that each part's cost (the `ms` its trainer
   * reports) is at most this share of that trainer's inner time over them.
   * The run's last round is evaluated whatever the share.
   */
  evalShare?: number;
  /** Validation windows of each evaluation (default 16). */
  evalWindows?: number;
  /**
   * With an evaluation, the first part's trainer also continues this
   * sample's prompt from the θ evaluated (kernels/sample.ts). Samples are
   * paced apart from the evaluations, each at most `evalShare` of that
   * trainer's inner time: a sample costs a forward pass a byte, many times an
   * evaluation's windows, and would otherwise space the eval curve's points
   * as far apart as the samples. The first evaluation takes none: its
   * forward pass's time (`forwardMs` of the answer) times the sample's bytes
   * paces the first sample, the samples' own times the later ones. The
   * run's last round is sampled whatever the share. Default: none.
   */
  sample?: TextSampleSpec;
  /** How long a trainer or the tracker may take to answer, ms (default 1000). */
  askTimeoutMs?: number;
  /**
   * The key fingerprint of a member's node (its `key`; "" where the node has
   * none, a peer admitted by the shared secret alone). Absent: members carry
   * no `key`.
   */
  memberKey?: (node: string) => string | undefined;
}

/** Commit latency bucket bounds, seconds: a write of a small model takes well under a second. */
export const LATENCY_BOUNDS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

interface TrackerStatus {
  run: string;
  round: number;
  epoch: number;
  view: { trainers: string[] };
  members: Omit<MemberRow, "state">[];
}

/** What a history reads of a host (a {@linkcode RunHost} has it). */
export type HistoryHost = Pick<RunHost, "system" | "monitor" | "trackerPath" | "trainerPaths">;

/**
 * Records a host's run for the dashboard. Subscribes to the monitor on
 * construction; {@linkcode close} unsubscribes.
 */
export class RunHistory {
  #host: HistoryHost;
  #options: Required<Omit<HistoryOptions, "memberKey" | "sample">>;
  #sample?: TextSampleSpec;
  #memberKey?: (node: string) => string | undefined;
  #rounds: RoundPoint[] = [];
  #evals: EvalPoint[] = [];
  #commits: CommitPoint[] = [];
  #latency: LatencyHistogram = {
    bounds: LATENCY_BOUNDS,
    counts: LATENCY_BOUNDS.map(() => 0).concat(0),
    sum: 0,
    count: 0,
  };
  #listeners = new Set<(e: DashboardEvent) => void>();
  #unsubscribe: () => void;
  #evaluating?: Promise<void>;
  /** The first round whose close may start an evaluation (see `evalShare`). */
  #nextEvalRound = 0;
  /**
   * The first round whose evaluation may take a text sample (see `sample`):
   * none before an evaluation has measured what one would cost.
   */
  #nextSampleRound = Infinity;
  /** One forward pass of the sampling trainer's last evaluation, ms (what a sampled byte costs). */
  #forwardMs = 0;
  #closed = false;

  /** Starts recording `host`'s run. */
  constructor(host: HistoryHost, options: HistoryOptions = {}) {
    const evalEvery = options.evalEvery ?? 0;
    if (!Number.isSafeInteger(evalEvery) || evalEvery < 0) {
      throw new RangeError(`Invalid evalEvery: ${evalEvery} is not a whole number >= 0`);
    }
    this.#host = host;
    const evalShare = options.evalShare ?? 0.02;
    if (!(evalShare > 0 && evalShare <= 1)) {
      throw new RangeError(`Invalid evalShare: ${evalShare} is not in (0, 1]`);
    }
    this.#options = {
      evalEvery,
      evalShare,
      evalWindows: options.evalWindows ?? 16,
      askTimeoutMs: options.askTimeoutMs ?? 1000,
    };
    this.#memberKey = options.memberKey;
    if (options.sample?.tokens) this.#sample = options.sample;
    this.#unsubscribe = host.monitor.on((e) => this.#record(e));
    // Rounds emitted before this history started.
    for (const r of host.monitor.rounds) this.#rounds.push(roundPoint(r));
  }

  /** Closed rounds, oldest first. */
  get rounds(): readonly RoundPoint[] {
    return this.#rounds;
  }

  /** Evaluations, oldest first. */
  get evals(): readonly EvalPoint[] {
    return this.#evals;
  }

  /** Commits, oldest first. */
  get commits(): readonly CommitPoint[] {
    return this.#commits;
  }

  /** Calls `listen` with every later change; returns the unsubscribe. */
  listen(listen: (e: DashboardEvent) => void): () => void {
    this.#listeners.add(listen);
    return () => this.#listeners.delete(listen);
  }

  /** The tracker's status (run, round, view, members) as `GET /status` shows it. */
  async trackerStatus(): Promise<Record<string, unknown>> {
    const host = this.#host;
    return await host.system.ref(host.trackerPath).ask<Record<string, unknown>>(
      { type: "status" },
      { timeoutMs: 3000 },
    ).catch((err) => ({ error: String(err) }));
  }

  /** The live state, with the members' states asked of the tracker and the trainers now. */
  async live(tracker?: Record<string, unknown>): Promise<LiveState> {
    const host = this.#host;
    const monitor = host.monitor;
    const status = (tracker ?? await this.trackerStatus()) as Partial<TrackerStatus>;
    const members = await Promise.all((status.members ?? []).map((m) => this.#member(m)));
    const rejected: Record<string, number> = {};
    for (const line of monitor.rejections) {
      const reason = line.split(":")[0];
      rejected[reason] = (rejected[reason] ?? 0) + 1;
    }
    const view = monitor.view;
    const rounds = this.#rounds;
    return {
      run: status.run ?? view?.run ?? "",
      round: view?.round ?? status.round ?? 0,
      epoch: view?.epoch ?? status.epoch ?? 0,
      rounds_target: view?.rounds ?? 0,
      rounds_done: monitor.rounds.length,
      params: monitor.rounds[0]?.params ?? view?.params ?? 0,
      inner_steps: monitor.rounds[0]?.inner_steps ?? 0,
      trainers_in_view: (view?.trainers ?? status.view?.trainers ?? []).length,
      members,
      evicted: { ...monitor.evicted },
      restarts: monitor.restarts,
      restarts_by_child: { ...monitor.restartsBy },
      rejected_by_reason: rejected,
      last_round: rounds.at(-1) ?? null,
      last_eval: this.#evals.at(-1) ?? null,
      latest_commit: this.#commits.reduce<CommitPoint | null>(
        (a, c) => (a === null || c.round > a.round ? c : a),
        null,
      ),
      commit_latency: {
        ...this.#latency,
        bounds: [...this.#latency.bounds],
        counts: [...this.#latency.counts],
      },
      totals: {
        tokens: sum(rounds, (r) => r.tokens),
        bytes_up: sum(rounds, (r) => r.bytes_up),
        bytes_down: sum(rounds, (r) => r.bytes_down),
      },
      done: view !== undefined && view.rounds > 0 && monitor.rounds.length > 0 &&
        monitor.rounds.at(-1)!.round + 1 >= view.rounds,
      wall_s: Math.round(monitor.wallS * 1000) / 1000,
    };
  }

  /** The whole history and the live state. */
  async snapshot(): Promise<DashboardSnapshot> {
    return {
      live: await this.live(),
      rounds: [...this.#rounds],
      evals: [...this.#evals],
      commits: [...this.#commits],
    };
  }

  /** Resolves once the evaluation under way, if any, has answered (or failed). */
  async settled(): Promise<void> {
    await this.#evaluating;
  }

  /** Stops recording; resolves once an evaluation under way has answered. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#unsubscribe();
    this.#listeners.clear();
    await this.#evaluating;
  }

  async #member(m: Omit<MemberRow, "state">): Promise<MemberRow> {
    const row: MemberRow = { ...m, state: "active" };
    if (this.#memberKey) row.key = this.#memberKey(m.node.split("/")[0]) ?? "";
    if (m.status === "pending") row.state = "joining";
    else if (m.roles.includes("trainer")) {
      const host = this.#host;
      row.state = await host.system.ref(m.node).ask<{ phase?: string }>(
        { type: "status" },
        { timeoutMs: this.#options.askTimeoutMs },
      ).then((s) =>
        s?.phase === "inner" ? "training" : s?.phase === "blocked" ? "blocked" : "idle" as const
      ).catch(() => "silent" as const);
    }
    return row;
  }

  #record(e: RunEvent): void {
    if (this.#closed) return;
    if (e.event === "round") {
      const point = roundPoint(e);
      this.#rounds.push(point);
      this.#push({ type: "round", data: point });
      const every = this.#options.evalEvery;
      const last = e.round + 1 === this.#host.monitor.plannedRounds;
      if (
        every > 0 && (last || ((e.round + 1) % every === 0 && e.round >= this.#nextEvalRound))
      ) {
        this.#evaluate(e);
      }
    } else if (e.event === "committed") {
      // The state of round r is what round r - 1 produced.
      const closed = this.#rounds.find((r) => r.round === e.round - 1);
      const latency = closed ? Math.max(0, e.wall_s - closed.wall_s) : null;
      if (latency !== null) this.#observeLatency(latency);
      const point: CommitPoint = {
        round: e.round,
        params_hash: e.params_hash,
        holders: [...e.holders],
        wall_s: e.wall_s,
        latency_s: latency === null ? null : Math.round(latency * 1000) / 1000,
      };
      this.#commits.push(point);
      this.#push({ type: "commit", data: point });
    }
  }

  #observeLatency(s: number): void {
    const h = this.#latency;
    h.bounds.forEach((b, i) => {
      if (s <= b) h.counts[i]++;
    });
    h.counts[h.bounds.length]++;
    h.sum += s;
    h.count++;
  }

  /**
   * Evaluates the θ the contributors of the round just closed hold now, each
   * trainer a part of the windows (kernels/evaluate.ts `part`). They hold the
   * same θ (each reported it before the round's event; a trainer asked
   * before it holds θ would fail), so the parts together are one evaluation
   * of it ({@linkcode combineParts}), and each trainer pays its share. On a
   * single trainer the evaluation made that trainer the round's straggler,
   * which every other one waited for: over the netns links (tests/
   * netns_overlap_test.ts) each evaluation cost an overlapped run a round at
   * 0.85 utilization. Kept only if every part evaluated the same θ. One
   * evaluation at a time; a round that closes while one runs is skipped.
   */
  #evaluate(e: Extract<RunEvent, { event: "round" }>): void {
    if (this.#evaluating) return;
    const host = this.#host;
    const windows = this.#options.evalWindows;
    // No more parts than windows: every part evaluates at least one.
    const trainers = e.contributors.slice(0, windows);
    if (trainers.length === 0) return;
    const last = e.round + 1 === host.monitor.plannedRounds;
    const sample = this.#sample && (last || e.round >= this.#nextSampleRound)
      ? this.#sample
      : undefined;
    // A sample of a large model on a slow adapter takes minutes: its ask waits for it.
    const sampling = sample ? 3 * sample.tokens * this.#forwardMs : 0;
    this.#evaluating = Promise.all(trainers.map((t, index) =>
      host.system.ref(t).ask<EvalAnswer>(
        {
          type: "eval",
          maxWindows: windows,
          part: { index, count: trainers.length },
          ...(sample && index === 0 ? { sample } : {}),
        },
        { timeoutMs: 120_000 + (index === 0 ? sampling : 0) },
      )
    )).then((parts) => {
      const share = this.#options.evalShare;
      // Each part's evaluation alone (the sample is paced on its own).
      this.#nextEvalRound = e.round + Math.max(
        ...parts.map((r, i) =>
          evalGap(r.ms && r.ms - (r.sampleMs ?? 0), e.inner_ms?.[trainers[i]], share)
        ),
      );
      // What a sample costs: as measured, or until one is scheduled, a forward pass a byte.
      const first = parts[0];
      if (first.forwardMs) this.#forwardMs = first.forwardMs;
      const unscheduled = this.#nextSampleRound === Infinity;
      const sampleMs = first.sampleMs ??
        (this.#sample && unscheduled && first.forwardMs
          ? this.#sample.tokens * first.forwardMs
          : undefined);
      if (sampleMs !== undefined) {
        this.#nextSampleRound = e.round + evalGap(sampleMs, e.inner_ms?.[trainers[0]], share);
      }
      if (new Set(parts.map((r) => `${r.round}/${r.hash}`)).size > 1) {
        host.monitor.log(`dashboard evaluation skipped: the trainers held different θ`);
        return;
      }
      const loss = combineParts(parts);
      const round = parts[0].round - 1;
      if (this.#closed || !Number.isFinite(loss) || this.#evals.some((p) => p.round === round)) {
        return;
      }
      let text = parts[0].sample;
      const bad = sample && text !== undefined ? sampleProblem(text, sample) : undefined;
      if (bad) {
        host.monitor.log(`dashboard sample from ${trainers[0]} ignored: ${bad}`, "warn");
        text = undefined;
      }
      const point: EvalPoint = {
        round,
        eval_loss: Math.round(loss * 10_000) / 10_000,
        wall_s: Math.round(host.monitor.wallS * 1000) / 1000,
        ...(sample && typeof text === "string" ? { sample: { prompt: sample.prompt, text } } : {}),
      };
      this.#evals.push(point);
      this.#push({ type: "eval", data: point });
      // In the run's log and on the node's terminal too, and on its members' (heartbeat acks).
      host.monitor.event({ event: "eval", ...point });
      const { wall_s: _, ...news } = point;
      host.system.ref(host.trackerPath).tell({ type: "_news", news });
    }).catch((err) => {
      if (!this.#closed) {
        host.monitor.log(`dashboard evaluation on ${trainers.join(", ")} failed: ${err}`);
      }
    }).finally(() => {
      this.#evaluating = undefined;
    });
  }

  #push(e: DashboardEvent): void {
    for (const listen of this.#listeners) listen(e);
  }
}

/** A trainer's answer to an evaluation (actors/trainer.ts "eval"). */
interface EvalAnswer {
  loss: number;
  tokens: number;
  round: number;
  hash: string;
  ms?: number;
  /** The text sample, when asked for, and what it took of `ms`. */
  sample?: string;
  sampleMs?: number;
  /** One forward pass of the evaluation (what a sampled byte costs), ms. */
  forwardMs?: number;
}

/**
 * The loss of an evaluation made in parts: the token-weighted mean of the
 * parts' losses (a part with no tokens counts for nothing), the whole
 * evaluation's loss up to float rounding; NaN with no tokens at all.
 *
 * @example
 * ```ts
 * import { combineParts } from "./history.ts";
 * console.log(combineParts([{ loss: 2, tokens: 300 }, { loss: 4, tokens: 100 }])); // 2.5
 * ```
 */
export function combineParts(parts: readonly { loss: number; tokens: number }[]): number {
  let sum = 0;
  let tokens = 0;
  for (const p of parts) {
    if (!(p.tokens > 0)) continue;
    sum += p.loss * p.tokens;
    tokens += p.tokens;
  }
  return tokens > 0 ? sum / tokens : NaN;
}

/**
 * Rounds from one evaluation to the next so that an evaluation of `evalMs`
 * costs at most `share` of the evaluator's inner time (`innerMs` a round): at
 * least 1, and 1 where either time is unknown.
 *
 * @example
 * ```ts
 * import { evalGap } from "./history.ts";
 * console.log(evalGap(110, 250, 0.02)); // 22: a 110 ms evaluation beside 250 ms rounds
 * ```
 */
export function evalGap(
  evalMs: number | undefined,
  innerMs: number | undefined,
  share: number,
): number {
  if (!(evalMs && evalMs > 0 && innerMs && innerMs > 0)) return 1;
  return Math.max(1, Math.ceil(evalMs / (share * innerMs)));
}

function roundPoint(e: Extract<RunEvent, { event: "round" }>): RoundPoint {
  return {
    round: e.round,
    view: e.view,
    trainers: e.trainers,
    loss: e.loss,
    tokens: e.tokens,
    bytes_up: e.bytes_up,
    bytes_down: e.bytes_down,
    utilization: e.utilization,
    rejected: e.rejected.length,
    missing: e.missing.length,
    wall_s: e.wall_s,
  };
}

function sum<T>(xs: readonly T[], f: (x: T) => number): number {
  return xs.reduce((s, x) => s + f(x), 0);
}
