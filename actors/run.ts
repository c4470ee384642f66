/**
 * Wiring a whole run: a supervision tree per role (tracker, aggregators,
 * trainers), the keeper slot the aggregators save to, and the run's monitor
 * that turns trainer and aggregator reports into one event per closed round.
 *
 * {@linkcode startRunHost} starts the host side (tracker, aggregators, monitor,
 * and optionally local trainers) on an {@linkcode ActorSystem}; with a
 * transport in front of it, trainers on other nodes join the same run.
 * {@linkcode runEmbedded} hosts everything in one process and trains for a
 * bounded number of rounds.
 *
 * With `checkpoint` set, checkpoint keepers (`run/keepers/<i>`, each writing
 * its own `<dir>/keeper-<i>`) and their commit coordinator
 * (`run/keepers/commit`) start before the aggregators; aggregators feed them
 * each round's state with a `tell` (never waiting on a write), trainers take
 * their start state from them (the opening round of a fresh run comes from
 * the aggregators, who hold the seed), and `<dir>/latest` points at the
 * newest round held by enough keepers. With `resume`, the run opens at the
 * resumed round with its θ, outer momentum and data cursors.
 *
 * @module
 */
import { ActorSystem, type Behavior, describeReason } from "./runtime/system.ts";
import { Supervisor, type SupervisorEvent } from "./runtime/supervisor.ts";
import { trackerBehavior, type TrackerEvent } from "./tracker.ts";
import {
  aggregatorBehavior,
  type AggregatorEvent,
  type KeeperSlot,
  MemoryKeeperSlot,
} from "./aggregator.ts";
import {
  aggregatorStateSource,
  type StartStateSource,
  trainerBehavior,
  type TrainerEvent,
  type TrainerFault,
} from "./trainer.ts";
import type { OuterOptimizer } from "./aggregation.ts";
import {
  DEFAULT_BLOCK,
  type ReportCursor,
  shardMap,
  type TrainerReportMsg,
  validateRunMessage,
  type ViewMsg,
} from "./run_protocol.ts";
import { describeConfig, getConfig, type GptConfig } from "../kernels/config.ts";
import { resolveShape, SHAPE_FIELDS, type ShapeOverrides } from "../kernels/shape.ts";
import { buildLayout } from "../kernels/layout.ts";
import type { WorkerInit } from "./trainer_worker.ts";
import type { AggregatorState } from "./aggregation.ts";
import {
  commitCoordinatorBehavior,
  type CommitEvent,
  keeperBehavior,
  type KeeperEvent,
  KeeperFeedSlot,
} from "./keeper.ts";
import { keeperStateSource, type SourceEvent } from "./keeper_transfer.ts";
import type { ResumedRun } from "../checkpoint/resume.ts";
import { aggregatorStates } from "./restore.ts";
import type { Retention } from "../checkpoint/store.ts";
import { checkDuty } from "../checkpoint/_background.ts";

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
}

/**
 * One line of the run's log (printed as JSON with `--json`).
 *
 * @example Telling the events apart
 * ```ts
 * import type { RunEvent } from "./run.ts";
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
  #view?: ViewMsg;
  /** Round events emitted so far. */
  readonly rounds: Extract<RunEvent, { event: "round" }>[] = [];
  /** Restarts seen from the supervisors. */
  restarts = 0;
  /** Restarts by "<supervisor>/<child>", e.g. "trainers/2". */
  readonly restartsBy: Record<string, number> = {};
  /** All rejections, as "reason: detail". */
  readonly rejections: string[] = [];
  #done = Promise.withResolvers<void>();
  #roundWaiters: { round: number; resolve(): void }[] = [];

  constructor(
    settings: { params: number; innerSteps: number; rounds: number; startRound?: number },
    emit: (e: RunEvent) => void,
  ) {
    this.#settings = settings;
    this.#emit = emit;
    this.#nextRound = settings.startRound ?? 0;
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
    return this.#cursors.get(round);
  }

  /** Sets the cursors of a round (a resumed run's opening round). */
  seedCursors(round: number, cursors: Record<string, ReportCursor>): void {
    this.#cursors.set(round, { ...cursors });
  }

  /** Seconds since the monitor started. */
  get wallS(): number {
    return (performance.now() - this.#start) / 1000;
  }

  /** Resolves when the last round (of a bounded run) was emitted. */
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
        this.log(`tracker evicted ${e.nodes.join(", ")} in round ${e.round}`, "warn");
        return;
      case "joined":
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
    }
    this.#flush();
  }

  /** Takes a trainer event. */
  trainer(e: TrainerEvent): void {
    if (e.type === "report") return; // reports arrive through report()
    if (e.type === "rejected") {
      this.log(`${e.trainer} was told: ${e.reason}: ${e.detail}`, "warn");
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
        this.#done.resolve();
      }
    }
  }
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
function round4(x: number): number {
  return Math.round(x * 10_000) / 10_000;
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
 * import { runModel } from "./run.ts";
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
  };
}

function isCursor(v: unknown): v is ReportCursor {
  const c = v as ReportCursor;
  return typeof c === "object" && c !== null && Number.isSafeInteger(c.seed) &&
    Number.isSafeInteger(c.step) && typeof c.shard === "object" && c.shard !== null &&
    Number.isSafeInteger(c.shard.index) && Number.isSafeInteger(c.shard.count);
}

/** The data cursors of a resumed round, one per data shard. */
export function resumeCursors(resume: Pick<ResumedRun, "cursors">): ReportCursor[] {
  const byShard = new Map<string, ReportCursor>();
  for (const v of Object.values(resume.cursors ?? {})) {
    if (!isCursor(v)) continue;
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
    dataSeed: s.seed ?? 1,
    block: DEFAULT_BLOCK,
  };
}

/** Options of {@linkcode startRunHost}. */
export interface HostOptions extends RunSettings {
  /** Trainers to run in this process (default 0). */
  localTrainers?: number;
  /** Aggregators (default 1). */
  aggregators?: number;
  /** The first round opens when this many trainers joined (default: localTrainers, at least 1). */
  minTrainers?: number;
  /** Quorum fraction at an aggregator's deadline (default 0.5). */
  quorum?: number;
  /** Minimum wait after a round's first contribution before closing with a quorum (ms). */
  minWaitMs?: number;
  /** Heartbeat interval and eviction silence, ms (defaults 2000 / 6000). */
  heartbeatMs?: number;
  evictAfterMs?: number;
  /** Checkpoint keepers of this host (none when absent: state lives in memory only). */
  checkpoint?: CheckpointOptions;
  /** Open the run at a resumed round (θ, momentum, residual, data cursors). */
  resume?: ResumedRun;
  /** Receives the run's events. */
  emit: (e: RunEvent) => void;
}

/** Checkpoint keepers of a host. */
export interface CheckpointOptions {
  /** The run directory (runs/<name>); keeper i writes `<dir>/keeper-<i>`. */
  dir: string;
  /** Keepers on this host (default 2). */
  keepers?: number;
  /** Keepers that must hold a round before it is committed (default 2 with ≥ 2 keepers). */
  minReplicas?: number;
  /** Retention of each keeper's store (default: last 3 and every 10th). */
  retention?: Partial<Retention>;
  /** Each keeper's CPU budget while trainers keep the cores busy (`KeeperOptions.backgroundDuty`). */
  backgroundDuty?: number;
  /**
   * How long a round's state waits for the trainers' data cursors before it
   * goes to the keepers without them, ms (default 5000). The aggregators
   * never wait: the slot holds the state meanwhile.
   */
  cursorWaitMs?: number;
  /**
   * Keepers also serve joiners from a low-priority thread listening on this
   * host name (see `KeeperOptions.serve` in actors/keeper.ts). Set by a
   * networked host to the name its transport listens on.
   */
  serve?: { hostname: string };
}

/**
 * The host's {@linkcode KeeperSlot}: keeps each shard's state in memory (for
 * aggregator restarts) and sends it to the checkpoint keepers once the data
 * cursors of the round are known (the trainers' reports of the round before),
 * or after `waitMs`. `save` returns at once; nothing on the aggregator's path
 * waits on a keeper or a disk.
 */
export class CheckpointSlot implements KeeperSlot {
  #memory = new MemoryKeeperSlot();
  #feed: KeeperFeedSlot;
  #monitor: RunMonitor;
  #waitMs: number;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #closed = false;

  /** Creates the slot. */
  constructor(feed: KeeperFeedSlot, monitor: RunMonitor, options: { waitMs?: number } = {}) {
    this.#feed = feed;
    this.#monitor = monitor;
    this.#waitMs = options.waitMs ?? 5000;
  }

  /** Saves a shard's state now and sends it to the keepers when its cursors are in. */
  save(state: AggregatorState): void {
    this.#memory.save(state);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const send = () => {
      if (timer === undefined) return; // sent already
      clearTimeout(timer);
      this.#timers.delete(timer);
      timer = undefined;
      if (!this.#closed) this.#feed.save(state);
    };
    timer = setTimeout(send, this.#waitMs);
    this.#timers.add(timer);
    this.#monitor.roundEmitted(state.round - 1).then(send);
  }

  /** The last saved state of a shard. */
  load(shard: number): AggregatorState | undefined {
    return this.#memory.load(shard);
  }

  /** Puts a state in memory only (a resumed round, before the aggregators start). */
  prefill(state: AggregatorState): void {
    this.#memory.save(state);
  }

  /** Sends a state to the keepers now (a resumed round, once the keepers run). */
  announce(state: AggregatorState): void {
    if (!this.#closed) this.#feed.save(state);
  }

  /** Drops what is still waiting (the run is shutting down). */
  close(): void {
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }
}

/**
 * The start-state source of a host's trainers: the opening round of a fresh
 * run comes from the aggregators (they hold the seed θ_0; no keeper can hold
 * it before), every later round (a joiner, a restarted trainer, a resumed
 * run) from the checkpoint keepers, falling back to the aggregators when no
 * keeper holds it.
 */
export function runStateSource(options: {
  keepers: readonly string[] | (() => readonly string[]);
  /** The round the run opened at when it was fresh (no resume), else undefined. */
  freshRound?: number;
  onEvent?: (e: SourceEvent) => void;
}): StartStateSource {
  const fromKeepers = keeperStateSource({
    keepers: options.keepers,
    fallback: aggregatorStateSource,
    onEvent: options.onEvent,
  });
  return {
    startState(ctx, view, req) {
      return view.round === options.freshRound
        ? aggregatorStateSource.startState(ctx, view, req)
        : fromKeepers.startState(ctx, view, req);
    },
  };
}

/** A remote keeper that has not said hello for this long is left out of the run's keepers. */
export const REMOTE_KEEPER_TTL_MS = 10_000;

/** How long a keeper's write took, and how much of it yielded the CPU to trainers. */
function writeTime(e: Extract<KeeperEvent, { type: "written" }>): string {
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  return e.yielded_ms
    ? `in ${s(e.ms)}, ${s(e.yielded_ms)} of it yielding to trainers`
    : `in ${s(e.ms)}`;
}

/** Describes a keeper or commit event for the run's log; undefined for routine ones. */
function keeperLine(e: KeeperEvent | CommitEvent): { text: string; warn: boolean } | undefined {
  switch (e.type) {
    case "write_failed":
      return {
        text: `keeper ${e.keeper} could not write round ${e.round} (${e.code}): ${e.error}`,
        warn: true,
      };
    case "recovered":
      return { text: `keeper ${e.keeper} recovered round ${e.round} from disk`, warn: false };
    case "caught_up":
      return {
        text: `keeper ${e.keeper} caught up to round ${e.round} from ${e.from.join(", ")}`,
        warn: false,
      };
    case "skipped":
      return { text: `keeper ${e.keeper} skipped round ${e.round}: ${e.reason}`, warn: true };
    case "refused":
      return { text: `keeper ${e.keeper} refused a message: ${e.error}`, warn: true };
    case "direct_failed":
      return {
        text: `keeper ${e.keeper} serves joiners over the actor protocol only: ${e.error}`,
        warn: true,
      };
    case "conflict":
      return {
        text: `keepers disagree on round ${e.round}: ${JSON.stringify(e.hashes)}`,
        warn: true,
      };
    default:
      return undefined;
  }
}

/** Points `<dir>/latest` at a committed round of one keeper's store (atomic rename). */
async function pointLatest(dir: string, target: string): Promise<void> {
  const tmp = `${dir}/.latest-${crypto.randomUUID()}`;
  await Deno.symlink(target, tmp);
  try {
    await Deno.rename(tmp, `${dir}/latest`);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}

/** A running host: its system, monitor and the paths of its actors. */
export interface RunHost {
  system: ActorSystem;
  monitor: RunMonitor;
  trackerPath: string;
  aggregatorPaths: string[];
  trainerPaths: string[];
  /** Checkpoint keepers on this host (empty without `checkpoint`). */
  keeperPaths: string[];
  /** The keepers' commit coordinator, when there are keepers. */
  coordinatorPath?: string;
  /** The round the run opened at (the resumed round, else 0). */
  startRound: number;
  /** Where this host's trainers (and joiners) take their start state, when there are keepers. */
  stateSource?: StartStateSource;
  /**
   * Resolves true once `round` (or a later one) is committed by the keepers,
   * false after `timeoutMs` or when the host has no keepers.
   */
  committed(round: number, timeoutMs: number): Promise<boolean>;
  /** Restart counts of every supervisor of the tree. */
  supervisors: Supervisor[];
  /** Stops every actor in reverse start order. */
  shutdown(): Promise<void>;
}

/** The actor path of the run's monitor on the host. */
export const MONITOR_NAME = "monitor";

/**
 * Starts the host side of a run on `system` (a fresh one on node "host" by
 * default): the monitor, then a supervisor per role under one root supervisor
 * "run": `run/tracker`, `run/aggregators/<i>`, `run/trainers/<i>`.
 *
 * @example A host with one local trainer, until its one round closed
 * ```ts
 * import { startRunHost } from "./run.ts";
 * import assert from "node:assert/strict";
 * const host = await startRunHost({
 *   run: "demo",
 *   config: "tiny",
 *   rounds: 1,
 *   innerSteps: 2,
 *   outer: { lr: 0.7, momentum: 0.9 },
 *   localTrainers: 1,
 *   emit: () => {},
 * });
 * await host.monitor.done;
 * assert.equal(host.monitor.rounds.length, 1);
 * await host.shutdown();
 * ```
 */
export async function startRunHost(
  options: HostOptions,
  system: ActorSystem = new ActorSystem({ node: "host" }),
): Promise<RunHost> {
  const node = system.node;
  if (options.checkpoint?.backgroundDuty !== undefined) {
    // Checked here: a keeper that throws when it starts would only be restarted by its supervisor.
    checkDuty(options.checkpoint.backgroundDuty, "Invalid checkpoint options: backgroundDuty");
  }
  const model = runModel(options);
  const params = paramLength(model);
  const localTrainers = options.localTrainers ?? 0;
  const nAgg = options.aggregators ?? 1;
  const resume = options.resume;
  const startRound = resume?.round ?? 0;
  if (resume) {
    if (resume.params.length !== params) {
      throw new RangeError(
        `Cannot resume: the checkpoint holds ${resume.params.length} parameters, the model ${
          describeConfig(model)
        } ${params}`,
      );
    }
    if (options.rounds > 0 && startRound >= options.rounds) {
      throw new RangeError(
        `Cannot resume at round ${startRound}: the run trains ${options.rounds} rounds ` +
          `(pass --rounds N with N > ${startRound} to train on)`,
      );
    }
  }
  const monitor = new RunMonitor(
    { params, innerSteps: options.innerSteps, rounds: options.rounds, startRound },
    options.emit,
  );
  await system.spawn({
    receive(raw: unknown) {
      try {
        const msg = validateRunMessage(raw);
        if (msg.type === "trainer_report" && msg.run === options.run) monitor.report(msg);
      } catch (err) {
        monitor.log(`monitor refused a message: ${err}`, "warn");
      }
    },
  }, { name: MONITOR_NAME });
  const trackerPath = `${node}/run/tracker/tracker`;
  const aggregatorPaths = Array.from({ length: nAgg }, (_, i) => `${node}/run/aggregators/${i}`);
  const trainerPaths = Array.from({ length: localTrainers }, (_, i) => `${node}/run/trainers/${i}`);
  const ckpt = options.checkpoint;
  const nKeepers = ckpt ? Math.max(1, ckpt.keepers ?? 2) : 0;
  const keeperPaths = Array.from({ length: nKeepers }, (_, i) => `${node}/run/keepers/${i}`);
  const coordinatorPath = `${node}/run/keepers/commit`;
  // Keepers on other nodes (`--join --role keeper`) announce themselves to the registry.
  const remoteKeepers = new Map<string, number>();
  const allKeepers = (): string[] => {
    const now = Date.now();
    for (const [k, seen] of remoteKeepers) {
      if (now - seen > REMOTE_KEEPER_TTL_MS) remoteKeepers.delete(k);
    }
    return [...keeperPaths, ...[...remoteKeepers.keys()].sort()];
  };
  const settingsRecord: Record<string, unknown> = JSON.parse(
    JSON.stringify(runSettingsOf(options)),
  );
  let checkpointSlot: CheckpointSlot | undefined;
  let slot: KeeperSlot = new MemoryKeeperSlot();
  if (ckpt) {
    checkpointSlot = new CheckpointSlot(
      new KeeperFeedSlot({
        system,
        run: options.run,
        keepers: allKeepers,
        config: model,
        total: params,
        settings: settingsRecord,
        cursors: (round) => monitor.cursorsAt(round),
      }),
      monitor,
      { waitMs: ckpt.cursorWaitMs },
    );
    slot = checkpointSlot;
  }
  let resumedStates: AggregatorState[] = [];
  if (resume) {
    const aggregators = Array.from({ length: nAgg }, (_, i) => `${node}/run/aggregators/${i}`);
    resumedStates = aggregatorStates(
      resume,
      shardMap(params, { aggregators: [...aggregators].sort(), block: DEFAULT_BLOCK }),
    );
    for (const st of resumedStates) {
      if (checkpointSlot) checkpointSlot.prefill(st);
      else slot.save(st);
    }
    const cursors: Record<string, ReportCursor> = {};
    for (const [k, v] of Object.entries(resume.cursors ?? {})) {
      if (isCursor(v)) cursors[k] = v;
    }
    monitor.seedCursors(startRound, cursors);
  }
  let incarnation = 0;
  const onEvent = (e: SupervisorEvent) => monitor.supervisor(e);
  let latestChain = Promise.resolve();
  let committedRound = -1;
  let commitWaiters: { round: number; resolve(ok: boolean): void }[] = [];
  const onKeeperEvent = (e: KeeperEvent | CommitEvent) => {
    if (e.type === "committed") {
      committedRound = Math.max(committedRound, e.round);
      for (const w of commitWaiters.filter((w) => w.round <= committedRound)) w.resolve(true);
      commitWaiters = commitWaiters.filter((w) => w.round > committedRound);
      monitor.event({
        event: "committed",
        round: e.round,
        params_hash: e.params_hash,
        holders: e.holders,
        wall_s: round3(monitor.wallS),
      });
      const i = keeperPaths.indexOf(e.holders.find((h) => keeperPaths.includes(h)) ?? "");
      if (ckpt && i >= 0) {
        latestChain = latestChain.then(() =>
          pointLatest(ckpt.dir, `keeper-${i}/rounds/${e.round}`).catch((err) =>
            monitor.log(`cannot point ${ckpt.dir}/latest at round ${e.round}: ${err}`, "warn")
          )
        );
      }
      return;
    }
    const line = keeperLine(e);
    if (line) monitor.log(line.text, line.warn ? "warn" : "info");
  };
  const keeperSup = new Supervisor({
    intensity: 10,
    periodMs: 60_000,
    children: ckpt
      ? [
        {
          id: "commit",
          start: () =>
            commitCoordinatorBehavior({
              run: options.run,
              keepers: allKeepers,
              minReplicas: ckpt.minReplicas,
              onEvent: onKeeperEvent,
            }),
        },
        {
          id: "registry",
          start: (): Behavior => ({
            receive(raw: unknown) {
              const m = raw as { type?: string; run?: string; keeper?: unknown };
              if (m?.type === "keeper_list") return { type: "keeper_list", keepers: allKeepers() };
              if (
                m?.type !== "keeper_hello" || m.run !== options.run ||
                typeof m.keeper !== "string" || m.keeper.length > 256 || !m.keeper.includes("/")
              ) {
                return { type: "error", error: "Keeper registry: expected keeper_hello" };
              }
              if (!remoteKeepers.has(m.keeper) && !keeperPaths.includes(m.keeper)) {
                monitor.log(`keeper ${m.keeper} joined`);
              }
              if (!keeperPaths.includes(m.keeper)) remoteKeepers.set(m.keeper, Date.now());
              return { type: "keeper_list", keepers: allKeepers() };
            },
          }),
        },
        ...keeperPaths.map((path, i) => ({
          id: String(i),
          // A write in progress may finish before the keeper stops.
          shutdownMs: 10_000,
          start: () =>
            keeperBehavior({
              run: options.run,
              id: path,
              dir: `${ckpt.dir}/keeper-${i}`,
              config: model,
              settings: settingsRecord,
              coordinator: coordinatorPath,
              peers: allKeepers,
              retention: ckpt.retention,
              // Encode, hash and write on a low-priority thread: trainers keep the CPU.
              writer: "worker",
              backgroundDuty: ckpt.backgroundDuty,
              ...(ckpt.serve ? { serve: ckpt.serve } : {}),
              onEvent: onKeeperEvent,
            }),
        })),
      ]
      : [],
    onEvent,
  });
  const stateSource = ckpt
    ? runStateSource({
      keepers: allKeepers,
      freshRound: resume ? undefined : startRound,
      onEvent: (e) =>
        monitor.log(
          e.type === "fetched"
            ? `start state of round ${e.round} fetched from ${
              e.keepers.join(", ")
            }: ${e.bytes} B in ${Math.round(e.ms)} ms`
            : `start state of round ${e.round} from the aggregators: ${e.reason}`,
        ),
    })
    : undefined;
  const trackerSup = new Supervisor({
    children: [{
      id: "tracker",
      start: () =>
        trackerBehavior({
          run: options.run,
          params,
          rounds: options.rounds,
          minTrainers: options.minTrainers ?? Math.max(1, localTrainers),
          evictAfterMs: options.evictAfterMs,
          startRound,
          incarnation: () => incarnation++,
          onEvent: (e) => monitor.tracker(e),
        }),
    }],
    onEvent,
  });
  const aggSup = new Supervisor({
    children: aggregatorPaths.map((path, i) => ({
      id: String(i),
      start: () =>
        aggregatorBehavior({
          run: options.run,
          id: path,
          tracker: trackerPath,
          outer: options.outer,
          quorum: options.quorum,
          minWaitMs: options.minWaitMs,
          heartbeatMs: options.heartbeatMs,
          slot,
          onEvent: (e) => monitor.aggregator(e),
        }),
    })),
    onEvent,
  });
  const engine = engineSettings(options);
  const trainerSup = new Supervisor({
    // A trainer restart starts a Worker and compiles shaders: give it time.
    intensity: 5,
    periodMs: 60_000,
    children: trainerPaths.map((path, i) => ({
      id: String(i),
      shutdownMs: 5000,
      start: () =>
        trainerBehavior({
          run: options.run,
          id: path,
          tracker: trackerPath,
          monitor: `${node}/${MONITOR_NAME}`,
          engine,
          dataShards: options.dataShards ?? 16,
          innerSteps: options.innerSteps,
          heartbeatMs: options.heartbeatMs,
          ...(stateSource ? { stateSource } : {}),
          ...(resume ? { resume: { round: startRound, cursors: resumeCursors(resume) } } : {}),
          onEvent: (e) => monitor.trainer(e),
        }),
    })),
    onEvent,
  });
  const root = new Supervisor({
    strategy: "one_for_one",
    children: [
      { id: "tracker", start: () => trackerSup, shutdownMs: Infinity },
      // Keepers start before the aggregators that feed them.
      { id: "keepers", start: () => keeperSup, shutdownMs: Infinity },
      { id: "aggregators", start: () => aggSup, shutdownMs: Infinity },
      { id: "trainers", start: () => trainerSup, shutdownMs: Infinity },
    ],
    onEvent,
  });
  await system.spawn(root, { name: "run", shutdownMs: Infinity });
  if (resume) {
    monitor.event({
      event: "resumed",
      round: resume.round,
      params_hash: resume.paramsHash,
      dir: resume.dir,
      cursors: Object.keys(monitor.cursorsAt(startRound) ?? {}).length,
      wall_s: round3(monitor.wallS),
    });
    // Keepers that do not hold the resumed round yet (another run directory) take it now.
    for (const st of resumedStates) checkpointSlot?.announce(st);
  }
  return {
    system,
    monitor,
    trackerPath,
    aggregatorPaths,
    trainerPaths,
    keeperPaths,
    coordinatorPath: ckpt ? coordinatorPath : undefined,
    startRound,
    stateSource,
    committed(round, timeoutMs) {
      if (!ckpt) return Promise.resolve(false);
      if (committedRound >= round) return Promise.resolve(true);
      const w = Promise.withResolvers<boolean>();
      const entry = { round, resolve: w.resolve };
      commitWaiters.push(entry);
      const t = setTimeout(() => {
        commitWaiters = commitWaiters.filter((x) => x !== entry);
        w.resolve(false);
      }, timeoutMs);
      return w.promise.finally(() => clearTimeout(t));
    },
    supervisors: [root, trackerSup, keeperSup, aggSup, trainerSup],
    shutdown: async () => {
      checkpointSlot?.close();
      await system.shutdown();
      await latestChain;
    },
  };
}

/** A fault to inject during an embedded run, when a round's event is emitted. */
export interface RunFault {
  /** Inject after this round's event (i.e. during round + 1). */
  afterRound: number;
  /** "tracker", "aggregator:<i>", "keeper:<i>" or "trainer:<i>". */
  target: string;
  /** What to do. */
  fault: TrainerFault | { type: "crash"; reason: string };
}

/** The final θ (the start of round `rounds`) is committed before a bounded run ends. */
async function finalCommit(host: RunHost, rounds: number): Promise<void> {
  if (host.keeperPaths.length === 0 || !(rounds > 0)) return;
  if (!(await host.committed(rounds, 60_000))) {
    host.monitor.log(`the final round ${rounds} was not committed within 60 s`, "warn");
  }
}

/** Options of {@linkcode runEmbedded}. */
export interface EmbeddedOptions extends Omit<HostOptions, "localTrainers"> {
  /** Trainers in this process. */
  trainers: number;
  /** Faults to inject (tests, the chaos suite). */
  faults?: RunFault[];
  /** Validation windows of the final evaluation (default 64). */
  evalWindows?: number;
  /** Give up after this long, ms (default: no limit). */
  timeoutMs?: number;
}

/** The summary of a finished run (the "done" event's fields). */
export interface RunSummary {
  [k: string]: unknown;
  run: string;
  rounds: number;
  trainers: number;
  params: number;
  inner_steps: number;
  tokens: number;
  first_loss: number;
  last_loss: number;
  final_eval_loss: number;
  restarts: number;
  rejected: number;
  hashes_equal: boolean;
  bytes_up_per_round_per_trainer: number;
  bytes_down_per_round_per_trainer: number;
  fp32_exchange_bytes_per_round_per_trainer: number;
  fp32_data_parallel_bytes_per_round_per_trainer: number;
  ratio_vs_fp32_exchange: number;
  reduction_vs_data_parallel: number;
  utilization: number;
  wall_s: number;
}

/** Builds the summary from the monitor's round events. */
export function summarize(
  monitor: RunMonitor,
  options: { run: string; trainers: number; evalLoss: number },
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
    tokens: rounds.reduce((s, r) => s + r.tokens, 0),
    first_loss: rounds[0]?.loss ?? NaN,
    last_loss: rounds.at(-1)?.loss ?? NaN,
    final_eval_loss: Math.round(options.evalLoss * 10_000) / 10_000,
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
    utilization: Math.round(
      rounds.reduce((s, r) => s + r.utilization, 0) / Math.max(1, rounds.length) * 10_000,
    ) / 10_000,
    wall_s: Math.round(monitor.wallS * 1000) / 1000,
  };
}

function targetPath(host: RunHost, target: string): string {
  if (target === "tracker") return host.trackerPath;
  const [role, i] = target.split(":");
  const list = role === "aggregator"
    ? host.aggregatorPaths
    : role === "keeper"
    ? host.keeperPaths
    : host.trainerPaths;
  const path = list[Number(i)];
  if (!path) throw new RangeError(`Unknown fault target: ${target}`);
  return path;
}

/**
 * Hosts a whole run in this process (tracker, aggregators, trainers in
 * Workers), trains `rounds` rounds, evaluates the final θ on the validation
 * stream and returns the summary. Emits events as it goes.
 *
 * @example Two rounds of the tiny model on two trainers
 * ```ts
 * import { runEmbedded } from "./run.ts";
 * import assert from "node:assert/strict";
 * const summary = await runEmbedded({
 *   run: "demo",
 *   config: "tiny",
 *   trainers: 2,
 *   rounds: 2,
 *   innerSteps: 2,
 *   outer: { lr: 0.7, momentum: 0.9 },
 *   evalWindows: 8,
 *   emit: (e) => {
 *     if (e.event === "round") console.log(`round ${e.round}: loss ${e.loss}`);
 *   },
 * });
 * assert.equal(summary.rounds, 2);
 * assert.ok(summary.hashes_equal);
 * ```
 */
export async function runEmbedded(options: EmbeddedOptions): Promise<RunSummary> {
  if (!(options.rounds > 0)) throw new RangeError("Cannot run embedded: rounds must be positive");
  const host = await startRunHost({ ...options, localTrainers: options.trainers });
  const { monitor } = host;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    for (const f of options.faults ?? []) {
      monitor.roundEmitted(f.afterRound).then(() => {
        const path = targetPath(host, f.target);
        monitor.log(`injecting ${JSON.stringify(f.fault)} into ${path}`, "warn");
        host.system.ref(path).tell(f.fault);
      });
    }
    const timeout = new Promise<never>((_, reject) => {
      if (options.timeoutMs) {
        timer = setTimeout(
          () => reject(new Error(`Run did not finish within ${options.timeoutMs} ms`)),
          options.timeoutMs,
        );
      }
    });
    await Promise.race([monitor.done, timeout]);
    const evalReply = await Promise.race([
      host.system.ref(host.trainerPaths[0]).ask<{ loss: number }>(
        { type: "eval", maxWindows: options.evalWindows ?? 64 },
        { timeoutMs: 600_000 },
      ),
      timeout,
    ]);
    await finalCommit(host, options.rounds);
    const summary = summarize(monitor, {
      run: options.run,
      trainers: options.trainers,
      evalLoss: evalReply.loss,
    });
    options.emit({ event: "done", ...summary });
    return summary;
  } finally {
    clearTimeout(timer);
    await host.shutdown();
  }
}

// --------------------------------------------------------------- networked

/** Settings the host hands to joiners, so that every trainer runs the same engine. */
export interface RunInfo {
  type: "run_info";
  settings: RunSettings;
  /** The host's checkpoint keepers (joiners fetch their start state from them). */
  keepers?: string[];
  /** The round the run opened at, when it was fresh (served by the aggregators). */
  freshRound?: number;
  /** A resumed run: its opening round and the data cursors of that round. */
  resume?: { round: number; cursors: ReportCursor[] };
}

/** Options of {@linkcode runNetworked}. */
export interface NetworkedOptions extends RunSettings {
  /** `ADDR:PORT` to host on. */
  host?: string;
  /** `ws://ADDR:PORT` to join. */
  join?: string;
  /** The run secret. */
  secret?: string;
  /** Trainers in the host process. */
  trainers: number;
  /** Host: open the first round once this many trainers joined. */
  minTrainers?: number;
  /** This node's id when joining (default `trainer-<pid>`). */
  node?: string;
  /** Heartbeat interval and eviction silence, ms. */
  heartbeatMs?: number;
  evictAfterMs?: number;
  /** Host: checkpoint keepers. */
  checkpoint?: CheckpointOptions;
  /** Host: open at a resumed round. */
  resume?: ResumedRun;
  /** Joining: "trainer" (default) or "keeper" (a checkpoint keeper of the run). */
  role?: "trainer" | "keeper";
  /** Joining as a keeper: the run directory it writes (default runs/<run>/<node>). */
  runDir?: string;
  /** Joining as a keeper: its CPU budget while trainers keep the cores busy (`KeeperOptions.backgroundDuty`). */
  backgroundDuty?: number;
}

/**
 * Hosts a run on `--host ADDR:PORT` (tracker, aggregators, monitor, local
 * trainers; GET /status on the same port) or joins one as a trainer. Returns
 * the process exit code.
 *
 * @example Host a one-round run on a free port with one local trainer
 * ```ts
 * import { runNetworked } from "./run.ts";
 * import assert from "node:assert/strict";
 * const code = await runNetworked({
 *   run: "demo",
 *   config: "tiny",
 *   rounds: 1,
 *   innerSteps: 2,
 *   outer: { lr: 0.7, momentum: 0.9 },
 *   host: "127.0.0.1:0",
 *   secret: "s3cret",
 *   trainers: 1,
 * }, (e) => {
 *   if (e.event === "log") console.log(e.message); // ... hosting run "demo" on ws://127.0.0.1:...
 * });
 * assert.equal(code, 0);
 * ```
 */
export async function runNetworked(
  options: NetworkedOptions,
  emit: (e: RunEvent) => void,
): Promise<number> {
  if (options.backgroundDuty !== undefined) {
    // Before dialing anyone: a joined keeper that threw when it starts would only be restarted.
    checkDuty(options.backgroundDuty, "Invalid options: backgroundDuty");
  }
  return options.host ? await hostRun(options, emit) : await joinRun(options, emit);
}

async function hostRun(options: NetworkedOptions, emit: (e: RunEvent) => void): Promise<number> {
  const { Hono } = await import("../transport/_deps.ts");
  const { ActorTransport } = await import("../transport/remote.ts");
  const [hostname, portText] = options.host!.split(":");
  const system = new ActorSystem({ node: "host" });
  const settings = runSettingsOf(options);
  let info: RunInfo = { type: "run_info", settings };
  await system.spawn({ receive: () => info }, { name: "run_info" });
  const host = await startRunHost({
    ...settings,
    localTrainers: options.trainers,
    minTrainers: options.minTrainers ?? Math.max(1, options.trainers),
    heartbeatMs: options.heartbeatMs,
    evictAfterMs: options.evictAfterMs,
    ...(options.checkpoint ? { checkpoint: { serve: { hostname }, ...options.checkpoint } } : {}),
    ...(options.resume ? { resume: options.resume } : {}),
    emit,
  }, system);
  info = {
    type: "run_info",
    settings,
    keepers: host.keeperPaths,
    ...(options.resume
      ? { resume: { round: host.startRound, cursors: resumeCursors(options.resume) } }
      : { freshRound: host.startRound }),
  };
  const transport = new ActorTransport(system, {
    run: options.run,
    secret: options.secret!,
    log: (level, message) => {
      if (level === "warn" || level === "error") host.monitor.log(`transport: ${message}`, "warn");
    },
  });
  const app = new Hono();
  app.get("/status", async (c) => {
    const status = await system.ref(host.trackerPath).ask<Record<string, unknown>>(
      { type: "status" },
      { timeoutMs: 3000 },
    ).catch((err) => ({ error: String(err) }));
    return c.json({ ...status, rounds_done: host.monitor.rounds.length, peers: transport.peers });
  });
  transport.mount(app, "/");
  const listening = Promise.withResolvers<void>();
  const http = Deno.serve({
    hostname,
    port: Number(portText),
    onListen: (addr) => {
      host.monitor.log(`hosting run "${options.run}" on ws://${addr.hostname}:${addr.port}`);
      listening.resolve();
    },
  }, app.fetch);
  await listening.promise;
  let code = 0;
  try {
    await host.monitor.done;
    // The final evaluation runs on any trainer of the last view (they hold the same θ).
    const trainers = host.monitor.view?.trainers ?? host.trainerPaths;
    let evalLoss = NaN;
    for (const t of [...host.trainerPaths, ...trainers]) {
      try {
        evalLoss = (await system.ref(t).ask<{ loss: number }>(
          { type: "eval", maxWindows: 64 },
          { timeoutMs: 300_000 },
        )).loss;
        break;
      } catch (err) {
        host.monitor.log(`final evaluation on ${t} failed: ${err}`, "warn");
      }
    }
    await finalCommit(host, options.rounds);
    const summary = summarize(host.monitor, {
      run: options.run,
      trainers: trainers.length,
      evalLoss,
    });
    emit({ event: "done", ...summary });
  } catch (err) {
    host.monitor.log(`run failed: ${err}`, "warn");
    code = 1;
  } finally {
    await transport.close();
    await http.shutdown();
    await host.shutdown();
  }
  return code;
}

async function joinRun(options: NetworkedOptions, emit: (e: RunEvent) => void): Promise<number> {
  const { ActorTransport } = await import("../transport/remote.ts");
  const node = options.node ?? `trainer-${Deno.pid}`;
  const system = new ActorSystem({ node });
  const start = performance.now();
  const log = (message: string, level: "info" | "warn" = "info") =>
    emit({ event: "log", level, message, wall_s: Math.round(performance.now() - start) / 1000 });
  const transport = new ActorTransport(system, {
    run: options.run,
    secret: options.secret!,
    log: (level, message) => {
      if (level === "warn" || level === "error") log(`transport: ${message}`, "warn");
    },
  });
  const client = transport.connect(options.join!, { expectedPeer: "host", maxAttempts: 20 });
  try {
    await client.ready();
  } catch (err) {
    log(`Cannot join run at ${options.join}: ${err instanceof Error ? err.message : err}`, "warn");
    await transport.close();
    await system.shutdown();
    return 1;
  }
  const info = await system.ref("host/run_info").ask<RunInfo>({ type: "run_info" });
  const settings: RunSettings = {
    ...info.settings,
    // The corpus path is local to each machine.
    ...(options.dataPath ? { dataPath: options.dataPath } : {}),
  };
  // Every trainer trains the host's shape: a joiner's own shape flags must agree with it.
  const conflict = shapeConflict(options.model, runModel(settings));
  if (conflict) {
    log(`Cannot join run at ${options.join}: ${conflict}`, "warn");
    await transport.close();
    await system.shutdown();
    return 2;
  }
  if (options.role === "keeper") {
    return await keepOnJoin({ system, transport, client, info, node, options, log });
  }
  log(`joined run "${settings.run}" as ${node}/node/trainer`);
  const stateSource = info.keepers?.length
    ? runStateSource({
      keepers: info.keepers,
      freshRound: info.freshRound,
      onEvent: (e) =>
        log(
          e.type === "fetched"
            ? `start state of round ${e.round} fetched from ${
              e.keepers.join(", ")
            }: ${e.bytes} B in ${Math.round(e.ms)} ms`
            : `start state of round ${e.round} from the aggregators: ${e.reason}`,
        ),
    })
    : undefined;
  const path = `${node}/node/trainer`;
  const finished = Promise.withResolvers<void>();
  let lastRound = -1;
  const sup = new Supervisor({
    intensity: 5,
    periodMs: 60_000,
    children: [{
      id: "trainer",
      start: () =>
        trainerBehavior({
          run: settings.run,
          id: path,
          tracker: "host/run/tracker/tracker",
          monitor: `host/${MONITOR_NAME}`,
          engine: engineSettings(settings),
          dataShards: settings.dataShards ?? 16,
          innerSteps: settings.innerSteps,
          heartbeatMs: options.heartbeatMs,
          ...(stateSource ? { stateSource } : {}),
          ...(info.resume ? { resume: info.resume } : {}),
          onEvent: (e) => {
            if (e.type === "report") {
              lastRound = e.report.round;
              if (settings.rounds > 0 && lastRound + 1 >= settings.rounds) finished.resolve();
            } else if (e.type === "rejected") {
              log(`rejected: ${e.reason}: ${e.detail}`, "warn");
            } else if (e.type === "log") log(e.message);
          },
        }),
    }],
    onEvent: (e) => {
      if (e.type === "restarted") log(`trainer restarted (restart ${e.restarts})`, "warn");
    },
  });
  await system.spawn(sup, { name: "node", shutdownMs: Infinity });
  const stop = () => finished.resolve();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  // Done when the last round is applied and the host let go (it may still
  // ask this trainer for the final evaluation), or when the host went away.
  const hostGone = async () => {
    const deadline = Date.now() + 120_000;
    while (transport.peers.includes("host") && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  await Promise.race([finished.promise.then(hostGone), client.closed]);
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
  try {
    system.ref("host/run/tracker/tracker").tell({ type: "leave", run: settings.run, node: path });
  } catch {
    // The host is gone: nothing to tell.
  }
  log(`leaving after round ${lastRound}`);
  await transport.close();
  await system.shutdown();
  return 0;
}

/** A joined node that runs a checkpoint keeper of the host's run (`--join URL --role keeper`). */
async function keepOnJoin(o: {
  system: ActorSystem;
  transport: { close(): Promise<void>; peers: string[] };
  client: { closed: Promise<unknown> };
  info: RunInfo;
  node: string;
  options: NetworkedOptions;
  log: (message: string, level?: "info" | "warn") => void;
}): Promise<number> {
  const { system, info, node, log } = o;
  const settings = info.settings;
  const path = `${node}/node/keeper`;
  const dir = o.options.runDir ?? `runs/${settings.run}/${node}`;
  let hostKeepers = [...(info.keepers ?? [])];
  const sup = new Supervisor({
    intensity: 10,
    periodMs: 60_000,
    children: [{
      id: "keeper",
      shutdownMs: 10_000,
      start: () =>
        keeperBehavior({
          run: settings.run,
          id: path,
          dir,
          config: runModel(settings),
          settings: JSON.parse(JSON.stringify(settings)),
          coordinator: "host/run/keepers/commit",
          peers: () => hostKeepers,
          writer: "worker",
          backgroundDuty: o.options.backgroundDuty,
          onEvent: (e) => {
            const line = keeperLine(e);
            if (line) log(line.text, line.warn ? "warn" : "info");
            else if (e.type === "written") {
              log(`keeper wrote round ${e.round} (${e.params_hash}) ${writeTime(e)}`);
            }
          },
        }),
    }],
    onEvent: (e) => {
      if (e.type === "restarted") log(`keeper restarted (restart ${e.restarts})`, "warn");
    },
  });
  await system.spawn(sup, { name: "node", shutdownMs: Infinity });
  log(`joined run "${settings.run}" as ${path}, writing ${dir}`);
  const hello = async () => {
    try {
      const r = await system.ref("host/run/keepers/registry").ask<{ keepers?: string[] }>(
        { type: "keeper_hello", run: settings.run, keeper: path },
        { timeoutMs: 3000 },
      );
      if (Array.isArray(r?.keepers)) hostKeepers = r.keepers.filter((k) => k !== path);
    } catch (err) {
      log(`keeper registry did not answer: ${err instanceof Error ? err.message : err}`, "warn");
    }
  };
  await hello();
  const timer = setInterval(hello, REMOTE_KEEPER_TTL_MS / 4);
  const stopped = Promise.withResolvers<void>();
  const stop = () => stopped.resolve();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  await Promise.race([stopped.promise, o.client.closed]);
  clearInterval(timer);
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
  log("keeper leaving");
  await o.transport.close();
  await system.shutdown();
  return 0;
}
