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
 * @module
 */
import { ActorSystem, describeReason } from "./system.ts";
import { Supervisor, type SupervisorEvent } from "./supervisor.ts";
import { trackerBehavior, type TrackerEvent } from "./tracker.ts";
import { aggregatorBehavior, type AggregatorEvent, MemoryKeeperSlot } from "./aggregator.ts";
import { trainerBehavior, type TrainerEvent, type TrainerFault } from "./trainer.ts";
import type { OuterOptimizer } from "./aggregation.ts";
import {
  DEFAULT_BLOCK,
  type TrainerReportMsg,
  validateRunMessage,
  type ViewMsg,
} from "./run_protocol.ts";
import { getConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";
import type { WorkerInit } from "./trainer_worker.ts";

/** Settings of a run (shared by host, joiners and the embedded run). */
export interface RunSettings {
  /** Run id. */
  run: string;
  /** Model configuration name (kernels/config.ts). */
  config: string;
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
  /** Sequences per inner step (default: the config's). */
  batch?: number;
}

/** One line of the run's log (printed as JSON with `--json`). */
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
  #nextRound = 0;
  #shardCount = 1;
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
    settings: { params: number; innerSteps: number; rounds: number },
    emit: (e: RunEvent) => void,
  ) {
    this.#settings = settings;
    this.#emit = emit;
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

/** Length of the flat parameter vector of a named config (padding included). */
export function paramLength(config: string): number {
  return buildLayout(getConfig(config).model).totalLength;
}

/** Worker settings for trainers of a run. */
export function engineSettings(s: RunSettings): Omit<WorkerInit, "op" | "id" | "dataShard"> {
  const c = getConfig(s.config);
  return {
    config: c.model,
    batch: s.batch ?? c.train.batch,
    seed: s.seed ?? 1,
    lr: s.innerLr ?? c.train.lr,
    warmup: Math.min(c.train.warmup, Math.max(1, s.innerSteps)),
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
  /** Receives the run's events. */
  emit: (e: RunEvent) => void;
}

/** A running host: its system, monitor and the paths of its actors. */
export interface RunHost {
  system: ActorSystem;
  monitor: RunMonitor;
  trackerPath: string;
  aggregatorPaths: string[];
  trainerPaths: string[];
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
 */
export async function startRunHost(
  options: HostOptions,
  system: ActorSystem = new ActorSystem({ node: "host" }),
): Promise<RunHost> {
  const node = system.node;
  const params = paramLength(options.config);
  const localTrainers = options.localTrainers ?? 0;
  const nAgg = options.aggregators ?? 1;
  const monitor = new RunMonitor(
    { params, innerSteps: options.innerSteps, rounds: options.rounds },
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
  const slot = new MemoryKeeperSlot();
  let incarnation = 0;
  const onEvent = (e: SupervisorEvent) => monitor.supervisor(e);
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
          onEvent: (e) => monitor.trainer(e),
        }),
    })),
    onEvent,
  });
  const root = new Supervisor({
    strategy: "one_for_one",
    children: [
      { id: "tracker", start: () => trackerSup, shutdownMs: Infinity },
      { id: "aggregators", start: () => aggSup, shutdownMs: Infinity },
      { id: "trainers", start: () => trainerSup, shutdownMs: Infinity },
    ],
    onEvent,
  });
  await system.spawn(root, { name: "run", shutdownMs: Infinity });
  return {
    system,
    monitor,
    trackerPath,
    aggregatorPaths,
    trainerPaths,
    supervisors: [root, trackerSup, aggSup, trainerSup],
    shutdown: () => system.shutdown(),
  };
}

/** A fault to inject during an embedded run, when a round's event is emitted. */
export interface RunFault {
  /** Inject after this round's event (i.e. during round + 1). */
  afterRound: number;
  /** "tracker", "aggregator:<i>" or "trainer:<i>". */
  target: string;
  /** What to do. */
  fault: TrainerFault | { type: "crash"; reason: string };
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
  const list = role === "aggregator" ? host.aggregatorPaths : host.trainerPaths;
  const path = list[Number(i)];
  if (!path) throw new RangeError(`Unknown fault target: ${target}`);
  return path;
}

/**
 * Hosts a whole run in this process (tracker, aggregators, trainers in
 * Workers), trains `rounds` rounds, evaluates the final θ on the validation
 * stream and returns the summary. Emits events as it goes.
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
}

/**
 * Hosts a run on `--host ADDR:PORT` (tracker, aggregators, monitor, local
 * trainers; GET /status on the same port) or joins one as a trainer. Returns
 * the process exit code.
 */
export async function runNetworked(
  options: NetworkedOptions,
  emit: (e: RunEvent) => void,
): Promise<number> {
  return options.host ? await hostRun(options, emit) : await joinRun(options, emit);
}

async function hostRun(options: NetworkedOptions, emit: (e: RunEvent) => void): Promise<number> {
  const { Hono } = await import("hono");
  const { ActorTransport } = await import("../transport/remote.ts");
  const [hostname, portText] = options.host!.split(":");
  const system = new ActorSystem({ node: "host" });
  const settings: RunSettings = {
    run: options.run,
    config: options.config,
    rounds: options.rounds,
    innerSteps: options.innerSteps,
    outer: options.outer,
    seed: options.seed,
    dataShards: options.dataShards,
    innerLr: options.innerLr,
    batch: options.batch,
    ...(options.dataPath ? { dataPath: options.dataPath } : {}),
  };
  await system.spawn({ receive: () => ({ type: "run_info", settings }) }, { name: "run_info" });
  const host = await startRunHost({
    ...settings,
    localTrainers: options.trainers,
    minTrainers: options.minTrainers ?? Math.max(1, options.trainers),
    heartbeatMs: options.heartbeatMs,
    evictAfterMs: options.evictAfterMs,
    emit,
  }, system);
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
  log(`joined run "${settings.run}" as ${node}/node/trainer`);
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
