/**
 * The run's monitor: it turns trainer, aggregator, tracker and supervisor
 * reports into the run's log, one "round" event per closed round in order,
 * and holds the trainers' data cursors of each round for the checkpoint
 * keepers. The host serves it at {@linkcode MONITOR_NAME}; `/status` and the
 * final summary read it.
 *
 * @module
 */
import { describeReason } from "./runtime/behavior.ts";
import type { SupervisorEvent } from "./runtime/supervisor.ts";
import type { TrackerEvent } from "./tracker.ts";
import type { AggregatorEvent } from "./aggregator.ts";
import type { TrainerEvent } from "./trainer.ts";
import type { ReportCursor, TrainerReportMsg, ViewMsg } from "./run_protocol.ts";

/**
 * One line of the run's log (printed as JSON with `--json`).
 *
 * @example Telling the events apart
 * ```ts
 * import type { RunEvent } from "./monitor.ts";
 * function describe(e: RunEvent): string {
 *   if (e.event === "round") return `round ${e.round}: loss ${e.loss}`;
 *   if (e.event === "committed") return `round ${e.round} committed`;
 *   return e.event;
 * }
 * console.log(describe({ event: "log", level: "info", message: "hi", wall_s: 0 })); // log
 * ```
 */
export type RunEvent =
  | {
    event: "round";
    round: number;
    view: number;
    trainers: number;
    contributors: string[];
    loss: number;
    tokens: number;
    bytes_up: number;
    bytes_down: number;
    params: number;
    inner_steps: number;
    utilization: number;
    theta_hashes: string[];
    /** Each contributing trainer's inner-phase time of the round, ms (its speed beside the others'). */
    inner_ms: Record<string, number>;
    rejected: string[];
    missing: string[];
    wall_s: number;
  }
  | { event: "log"; level: "info" | "warn"; message: string; wall_s: number }
  | {
    event: "committed";
    round: number;
    params_hash: string;
    holders: string[];
    wall_s: number;
  }
  | {
    /**
     * An evaluation during the run (actors/dashboard/history.ts): the θ the
     * contributors hold after `round` closed, on the validation windows, with
     * the text it writes when the run takes samples.
     */
    event: "eval";
    round: number;
    eval_loss: number;
    sample?: { prompt: string; text: string };
    wall_s: number;
  }
  | {
    /**
     * A joined trainer's round (`deno task node --join`): its own loss, time
     * and bytes, and the round's as its update told it.
     */
    event: "trained";
    round: number;
    /** The rounds the run trains (0: no bound). */
    rounds: number;
    /** The trainer's mean inner loss (null when its contribution did not count). */
    loss: number | null;
    /** The contributors' mean inner loss, and their number. */
    run_loss: number;
    trainers: number;
    contributed: boolean;
    /** Tokens trained, and per second of the inner phase. */
    tokens: number;
    tokens_per_s: number;
    inner_ms: number;
    blocked_ms: number;
    /** The share of the round spent training (inner over inner plus blocked). */
    utilization: number;
    bytes_up: number;
    bytes_down: number;
    /** θ's hash after the round (every trainer of the run holds the same). */
    theta_hash: string;
    wall_s: number;
  }
  | {
    event: "resumed";
    round: number;
    params_hash: string;
    dir: string;
    cursors: number;
    wall_s: number;
  }
  | { event: "done"; [k: string]: unknown };

interface ClosedShard {
  contributors: string[];
  missing: string[];
  loss: number;
  tokens: number;
  epoch: number;
  updateBytes: number;
}

/**
 * Collects reports and emits one "round" event per closed round, in order:
 * when every shard of the round closed and every contributor still in the
 * view reported its θ hash (or when the next round closed).
 */
export class RunMonitor {
  #settings: { params: number; innerSteps: number; rounds: number };
  #emit: (e: RunEvent) => void;
  #start = performance.now();
  #closed = new Map<number, Map<number, ClosedShard>>();
  #reports = new Map<number, Map<string, TrainerReportMsg>>();
  #rejected = new Map<number, string[]>();
  #nextRound: number;
  #shardCount = 1;
  #cursors = new Map<number, Record<string, ReportCursor>>();
  /** The round {@linkcode seedCursors} set (a resumed run's opening round), else -1. */
  #seededRound = -1;
  /** Seeded cursors whose data shard no trainer has reported on from yet, by trainer id. */
  #parked = new Map<string, ReportCursor>();
  #view?: ViewMsg;
  /** Round events emitted so far. */
  readonly rounds: Extract<RunEvent, { event: "round" }>[] = [];
  /** Restarts seen from the supervisors. */
  restarts = 0;
  /** Restarts by "<supervisor>/<child>", e.g. "trainers/2". */
  readonly restartsBy: Record<string, number> = {};
  /** All rejections, as "reason: detail". */
  readonly rejections: string[] = [];
  /** Trainers the tracker evicted and that have not joined again, with the round. */
  readonly evicted: Record<string, number> = {};
  #listeners = new Set<(e: RunEvent) => void>();
  #done = Promise.withResolvers<void>();
  #finished = false;
  #roundWaiters: { round: number; resolve(): void }[] = [];

  constructor(
    settings: { params: number; innerSteps: number; rounds: number; startRound?: number },
    emit: (e: RunEvent) => void,
  ) {
    this.#settings = settings;
    // A run nobody awaits (a host that only serves) must not turn its failure into an
    // unhandled rejection; those who await `done` still see it.
    this.#done.promise.catch(() => {});
    this.#emit = (e) => {
      emit(e);
      for (const listen of this.#listeners) listen(e);
    };
    this.#nextRound = settings.startRound ?? 0;
  }

  /**
   * Ends the run with `err` before its last round: {@linkcode done} rejects
   * with it (its supervision tree gave up). Nothing happens after the last
   * round closed.
   */
  fail(err: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    this.log(err.message, "warn");
    this.#done.reject(err);
  }

  /** Calls `listen` with every later event of the run (the dashboard); returns the unsubscribe. */
  on(listen: (e: RunEvent) => void): () => void {
    this.#listeners.add(listen);
    return () => this.#listeners.delete(listen);
  }

  /** Emits an event of the run (commits, resume) with the monitor's clock. */
  event(e: Exclude<RunEvent, { event: "round" | "log" | "done" }>): void {
    this.#emit(e);
  }

  /**
   * The data cursors of the trainers at the start of `round`, by trainer id:
   * from their reports of round - 1 (or given by {@linkcode seedCursors}).
   */
  cursorsAt(round: number): Record<string, ReportCursor> | undefined {
    const reported = this.#cursors.get(round);
    if (!reported || round <= this.#seededRound || this.#parked.size === 0) return reported;
    // A saved cursor that no trainer read on from (a run resumed with fewer trainers) goes into
    // every later checkpoint, so that a trainer resumed onto its shard does not start it over.
    const out = { ...reported };
    for (const [id, c] of this.#parked) {
      out[id in out ? `parked/${c.shard.index}/${c.shard.count}` : id] = c;
    }
    return out;
  }

  /** Sets the cursors of a round (a resumed run's opening round). */
  seedCursors(round: number, cursors: Record<string, ReportCursor>): void {
    this.#cursors.set(round, { ...cursors });
    this.#seededRound = round;
    this.#parked = new Map(Object.entries(cursors));
  }

  /** The rounds the run is to close (0: no end). */
  get plannedRounds(): number {
    return this.#settings.rounds;
  }

  /** Seconds since the monitor started. */
  get wallS(): number {
    return (performance.now() - this.#start) / 1000;
  }

  /**
   * Resolves when the last round (of a bounded run) was emitted; rejects when
   * the run stopped before it ({@linkcode fail}).
   */
  get done(): Promise<void> {
    return this.#done.promise;
  }

  /** The latest view the tracker published. */
  get view(): ViewMsg | undefined {
    return this.#view;
  }

  /** Resolves once round `round` was emitted. */
  roundEmitted(round: number): Promise<void> {
    if (this.#nextRound > round) return Promise.resolve();
    const w = Promise.withResolvers<void>();
    this.#roundWaiters.push({ round, resolve: w.resolve });
    return w.promise;
  }

  /** Logs a line. */
  log(message: string, level: "info" | "warn" = "info"): void {
    this.#emit({ event: "log", level, message, wall_s: round3(this.wallS) });
  }

  /** Takes a tracker event. */
  tracker(e: TrackerEvent): void {
    switch (e.type) {
      case "view":
        if (!this.#view || e.view.epoch >= this.#view.epoch) this.#view = e.view;
        this.#shardCount = e.view.shards.length;
        return;
      case "evicted":
        for (const node of e.nodes) this.evicted[node] = e.round;
        this.log(`tracker evicted ${e.nodes.join(", ")} in round ${e.round}`, "warn");
        return;
      case "stalled":
        this.log(
          `tracker stalled ${(e.ms / 1000).toFixed(1)} s in round ${e.round} (its process was ` +
            "busy): that time is not counted as members' silence",
          "warn",
        );
        return;
      case "joined":
        delete this.evicted[e.node];
        this.log(`${e.node} joined (${e.status}) at round ${e.round}`);
        return;
      case "left":
        this.log(`${e.node} left`);
        return;
      case "started":
        if (e.incarnation > 0) this.log(`tracker restarted: incarnation ${e.incarnation}`, "warn");
        return;
      case "refused":
        this.log(`tracker refused a message: ${e.error}`, "warn");
        return;
    }
  }

  /** Takes an aggregator event. */
  aggregator(e: AggregatorEvent): void {
    switch (e.type) {
      case "closed": {
        let m = this.#closed.get(e.round);
        if (!m) this.#closed.set(e.round, m = new Map());
        m.set(e.shard, e);
        this.#flush();
        return;
      }
      case "rejected": {
        const r = e.rejection;
        const line = `${r.reason}: ${r.detail}`;
        this.rejections.push(line);
        const list = this.#rejected.get(r.round) ?? [];
        list.push(`${r.trainer}: ${r.reason}`);
        this.#rejected.set(r.round, list);
        this.log(`rejected contribution (${line})`, "warn");
        return;
      }
      case "restored":
        this.log(`${e.aggregator} restored shard ${e.shard} at round ${e.round}`, "warn");
        return;
      case "refused":
        this.log(`${e.aggregator} refused a message: ${e.error}`, "warn");
        return;
      case "update_resent":
        this.log(
          `${e.trainer} resent its contribution to round ${e.round} (shard ${e.shard}) after the close: sent it the update again`,
        );
        return;
    }
  }

  /** Takes a trainer's report (local callback or a message from another node). */
  report(r: TrainerReportMsg): void {
    let m = this.#reports.get(r.round);
    if (!m) this.#reports.set(r.round, m = new Map());
    m.set(r.trainer, r);
    if (r.cursor) {
      let c = this.#cursors.get(r.round + 1);
      if (!c) this.#cursors.set(r.round + 1, c = {});
      c[r.trainer] = r.cursor;
      for (const k of this.#cursors.keys()) if (k < r.round - 8) this.#cursors.delete(k);
      for (const [id, c] of this.#parked) {
        if (c.shard.index === r.cursor.shard.index && c.shard.count === r.cursor.shard.count) {
          this.#parked.delete(id);
        }
      }
    }
    this.#flush();
  }

  /** Takes a trainer event. */
  trainer(e: TrainerEvent): void {
    // Reports arrive through report(); the host's own trainers' news is the host's own evaluation.
    if (e.type === "report" || e.type === "news") return;
    if (e.type === "rejected") {
      this.log(`${e.trainer} was told: ${e.reason}: ${e.detail}`, "warn");
    } else if (e.type === "run_over") {
      this.log(`${e.trainer}: the run's ${e.rounds} rounds are over; it has nothing to train`);
    } else this.log(`${e.trainer}: ${e.message}`);
  }

  /** Takes a supervisor event (restarts are counted). */
  supervisor(e: SupervisorEvent): void {
    if (e.type === "restarted") {
      this.restarts++;
      const key = `${e.supervisor.split("/").pop()}/${e.child}`;
      this.restartsBy[key] = (this.restartsBy[key] ?? 0) + 1;
      this.log(`${e.supervisor}: restarted ${e.child} (restart ${e.restarts})`, "warn");
    } else if (e.type === "failed") {
      this.log(`${e.supervisor}: ${e.child} failed: ${describeReason(e.reason)}`, "warn");
    } else if (e.type === "gave_up") {
      this.log(`${e.supervisor} gave up: ${e.reason.message}`, "warn");
    }
  }

  #complete(round: number): boolean {
    const closed = this.#closed.get(round);
    return closed !== undefined && closed.size >= this.#shardCount;
  }

  #flush(): void {
    while (this.#complete(this.#nextRound)) {
      const round = this.#nextRound;
      const shards = [...this.#closed.get(round)!.values()];
      const contributors = shards[0].contributors;
      const reports = this.#reports.get(round) ?? new Map<string, TrainerReportMsg>();
      const alive = this.#view?.trainers ?? contributors;
      const waiting = contributors.filter((t) => alive.includes(t) && !reports.has(t));
      if (waiting.length > 0 && !this.#complete(round + 1)) return;
      const rs = [...reports.values()].sort((a, b) => a.trainer < b.trainer ? -1 : 1);
      const contributed = rs.filter((r) => r.contributed);
      const util = contributed.map((r) => r.innerMs / Math.max(1e-9, r.innerMs + r.blockedMs));
      const ev: RunEvent = {
        event: "round",
        round,
        view: Math.max(...shards.map((s) => s.epoch)),
        trainers: contributors.length,
        contributors,
        loss: round4(shards[0].loss),
        tokens: shards[0].tokens,
        bytes_up: rs.reduce((s, r) => s + r.bytesUp, 0),
        bytes_down: rs.reduce((s, r) => s + r.bytesDown, 0),
        params: this.#settings.params,
        inner_steps: this.#settings.innerSteps,
        utilization: round4(util.reduce((a, b) => a + b, 0) / Math.max(1, util.length)),
        theta_hashes: rs.map((r) => r.hash),
        inner_ms: Object.fromEntries(contributed.map((r) => [r.trainer, Math.round(r.innerMs)])),
        rejected: this.#rejected.get(round) ?? [],
        missing: [...new Set(shards.flatMap((s) => s.missing))],
        wall_s: round3(this.wallS),
      };
      this.rounds.push(ev);
      this.#emit(ev);
      this.#nextRound++;
      for (const w of this.#roundWaiters.filter((w) => w.round < this.#nextRound)) w.resolve();
      this.#roundWaiters = this.#roundWaiters.filter((w) => w.round >= this.#nextRound);
      if (this.#settings.rounds > 0 && this.#nextRound >= this.#settings.rounds) {
        this.#finished = true;
        this.#done.resolve();
      }
    }
  }
}

/** Seconds rounded to milliseconds, as the run's events carry `wall_s`. */
export function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
function round4(x: number): number {
  return Math.round(x * 10_000) / 10_000;
}

/** The actor path of the run's monitor on the host. */
export const MONITOR_NAME = "monitor";
