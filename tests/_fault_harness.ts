/**
 * The fault suite's harness: a real run (tracker, aggregators, trainers in
 * Workers on WebGPU, real supervisors) with faults injected at chosen rounds,
 * and the invariants checked after them.
 *
 * Two topologies:
 * - embedded: every actor on one {@linkcode ActorSystem} (no network);
 * - network: one actor system per node, joined by real WebSockets on
 *   loopback through {@linkcode PhasedFaults}, the transport's seeded fault
 *   layer: node "trk" holds the tracker, "host" the aggregators and the
 *   monitor, "n0".."nK" one trainer each. Trainers dial both "trk" and
 *   "host", the host dials "trk", so the tracker can be cut off from the
 *   trainers while the aggregators still reach it.
 *
 * Every randomized choice comes from the run's seed (`FAULT_SEED` replays it).
 *
 * @module
 */
import { ActorSystem } from "../actors/runtime/system.ts";
import { Supervisor, type SupervisorEvent } from "../actors/runtime/supervisor.ts";
import { trackerBehavior } from "../actors/tracker.ts";
import { aggregatorBehavior, type KeeperSlot, MemoryKeeperSlot } from "../actors/aggregator.ts";
import { type StartStateSource, trainerBehavior, type TrainerEvent } from "../actors/trainer.ts";
import { engineSettings, paramLength } from "../actors/run_settings.ts";
import { type RunEvent, RunMonitor } from "../actors/monitor.ts";
import { type StateMsg, validateRunMessage } from "../actors/run_protocol.ts";
import { ActorTransport, type Listener } from "../transport/remote.ts";
import { FaultInjector, type FaultRates } from "../transport/faults.ts";
import { hashSeed, mulberry32 } from "../transport/rng.ts";

Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp");

const VERBOSE = Deno.env.get("FAULT_VERBOSE") === "1";

/** The run secret every node of a fault run shares. */
export const SECRET = "fault-suite-secret";
/** Run id of fault runs. */
export const RUN = "fault-run";

/** The seed of a randomized test: `FAULT_SEED` when set, else `fallback`; printed either way. */
export function faultSeed(test: string, fallback: number): number {
  const env = Deno.env.get("FAULT_SEED");
  const seed = env !== undefined && env !== "" ? Number(env) : fallback;
  if (!Number.isSafeInteger(seed)) throw new RangeError(`Invalid FAULT_SEED: ${env}`);
  console.log(`${test}: seed ${seed} (replay with FAULT_SEED=${seed})`);
  return seed;
}

type Timer = ReturnType<typeof setTimeout>;

/**
 * The transport's {@linkcode FaultInjector} with rates that change during a
 * run (one seeded injector per phase) and an optional bandwidth limit per
 * directed link (frames queue behind each other at `bitsPerSecond`).
 */
export class PhasedFaults extends FaultInjector {
  #seed: number;
  #phase = 0;
  #current: FaultInjector | undefined;
  #all: FaultInjector[] = [];
  #bps = 0;
  #nextFree = new Map<string, number>();
  #timers = new Set<Timer>();
  #closed = false;
  /** Frames cut by a partition, and frames seen, by action. */
  readonly counts: Record<string, number> = {};

  /** Creates the layer; with no phase set it passes frames through (partitions aside). */
  constructor(seed: number) {
    super({ seed });
    this.#seed = seed;
  }

  /** Starts a new phase with these rates (or none), seeded from the run seed and the phase. */
  setRates(rates: FaultRates | undefined): void {
    this.#phase++;
    this.#current = rates
      ? new FaultInjector({ ...rates, seed: hashSeed(`phase-${this.#phase}`, this.#seed) })
      : undefined;
    if (this.#current) this.#all.push(this.#current);
  }

  /** Limits every link to `bitsPerSecond` (0: no limit). */
  setBandwidth(bitsPerSecond: number): void {
    this.#bps = bitsPerSecond;
  }

  /** Counts what the phase injectors did so far, by action. */
  actionCounts(): Record<string, number> {
    const out: Record<string, number> = { ...this.counts };
    for (const f of this.#all) {
      for (const e of f.log) for (const a of e.actions) out[a] = (out[a] ?? 0) + 1;
    }
    return out;
  }

  override transmit(
    from: string,
    to: string,
    frame: Uint8Array,
    deliver: (frame: Uint8Array) => void,
  ): void {
    if (this.#closed) return;
    if (this.isPartitioned(from, to)) {
      this.counts.partition = (this.counts.partition ?? 0) + 1;
      return;
    }
    const onward = (f: Uint8Array) => {
      if (this.#closed) return;
      if (this.#current) this.#current.transmit(from, to, f, deliver);
      else deliver(f);
    };
    if (this.#bps <= 0) {
      onward(frame);
      return;
    }
    // Bandwidth: the frame leaves once the link has sent what was queued before it.
    const key = `${from}->${to}`;
    const now = performance.now();
    const done = Math.max(now, this.#nextFree.get(key) ?? 0) +
      frame.byteLength * 8 / this.#bps * 1000;
    this.#nextFree.set(key, done);
    this.counts.throttled = (this.counts.throttled ?? 0) + 1;
    const copy = frame.slice();
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      onward(copy);
    }, done - now);
    this.#timers.add(timer);
  }

  override close(): void {
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const f of this.#all) f.close();
    super.close();
  }
}

/** Options of {@linkcode FaultRun.start}. */
export interface FaultRunOptions {
  /** Seed of everything random (faults, jitter). */
  seed: number;
  /** Trainers. */
  trainers: number;
  /** Rounds (the run ends after them). */
  rounds: number;
  /** Inner steps per round (default 3). */
  innerSteps?: number;
  /** One actor system per node over WebSockets with a fault layer (default false). */
  network?: boolean;
  /** Aggregators (default 1). */
  aggregators?: number;
  /** Minimum wait after a round's first contribution (default 1500 ms). */
  minWaitMs?: number;
  /** Heartbeat and eviction, ms (defaults 500 / 4000). */
  heartbeatMs?: number;
  evictAfterMs?: number;
  /** Where aggregators save their state (default: in memory). */
  slot?: KeeperSlot;
  /** Prints the run's log lines. */
  log?: (line: string) => void;
}

/** One trainer node of a network run. */
interface TrainerNode {
  node: string;
  system: ActorSystem;
  transport: ActorTransport;
}

/**
 * A running fault run.
 */
export class FaultRun {
  /** The run's monitor (one "round" event per closed round). */
  readonly monitor: RunMonitor;
  /** Restarts by "tracker", "aggregator:<i>", "trainer:<i>". */
  readonly restarts: Record<string, number> = {};
  /** θ hashes each trainer reported, by round then trainer (taken on the trainer's node). */
  readonly hashes = new Map<number, Map<string, string>>();
  /** Rejections named by the aggregators, "reason trainer round". */
  readonly rejections: { reason: string; trainer: string; round: number; detail: string }[] = [];
  /** Log lines, in order. */
  readonly lines: string[] = [];
  /** The fault layer between nodes (network runs). */
  readonly faults?: PhasedFaults;
  /** Trainer actor paths, by index. */
  readonly trainerPaths: string[] = [];
  /** Aggregator actor paths, by index. */
  readonly aggregatorPaths: string[] = [];
  /** The tracker's actor path. */
  readonly trackerPath: string;
  /** The host's listener (network runs). */
  hostListener?: Listener;
  /** The tracker node's listener (network runs). */
  trackerListener?: Listener;
  /** Unhandled rejections seen while the run was up. */
  readonly unhandled: string[] = [];
  #options: FaultRunOptions;
  #systems: ActorSystem[] = [];
  #transports: ActorTransport[] = [];
  #listeners: Listener[] = [];
  #host: ActorSystem;
  #trk: ActorSystem;
  #trainerNodes: TrainerNode[] = [];
  #onUnhandled = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    this.unhandled.push(String(e.reason?.stack ?? e.reason));
    this.log(`unhandled rejection: ${e.reason}`);
  };
  #incarnation = 0;

  private constructor(options: FaultRunOptions, faults?: PhasedFaults) {
    this.#options = options;
    this.faults = faults;
    const network = options.network ?? false;
    this.#host = new ActorSystem({ node: "host" });
    this.#trk = network ? new ActorSystem({ node: "trk" }) : this.#host;
    this.#systems.push(this.#host);
    if (network) this.#systems.push(this.#trk);
    this.trackerPath = `${this.#trk.node}/tracker/tracker`;
    this.monitor = new RunMonitor(
      {
        params: paramLength("tiny"),
        innerSteps: options.innerSteps ?? 3,
        rounds: options.rounds,
      },
      (e: RunEvent) => {
        if (e.event === "round") {
          this.log(
            `round ${e.round}: ${e.trainers} trainers, loss ${e.loss}, rejected [${e.rejected}]`,
          );
        } else if (e.event === "log") this.log(e.message);
      },
    );
    globalThis.addEventListener("unhandledrejection", this.#onUnhandled);
  }

  /** Appends a log line (and prints it when the options ask). */
  log(text: string): void {
    const line = `[${this.monitor.wallS.toFixed(1)}s] ${text}`;
    this.lines.push(line);
    this.#options.log?.(line);
    if (VERBOSE) console.log(line);
  }

  /** Starts the run; resolves once every trainer's engine is up and round 0 is open. */
  static async start(options: FaultRunOptions): Promise<FaultRun> {
    const network = options.network ?? false;
    const faults = network ? new PhasedFaults(options.seed) : undefined;
    const run = new FaultRun(options, faults);
    try {
      await run.#start();
    } catch (err) {
      await run.close();
      throw err;
    }
    return run;
  }

  #transport(system: ActorSystem): ActorTransport {
    const t = new ActorTransport(system, {
      run: RUN,
      secret: SECRET,
      faults: this.faults,
      pingIntervalMs: 500,
      pingTimeoutMs: 2500,
      askTimeoutMs: 5000,
      // A dial into a partition must give up soon, so the node is back soon after the heal.
      handshakeTimeoutMs: 2000,
      log: (level, message) => {
        if (level === "warn" || level === "error") this.log(`transport ${system.node}: ${message}`);
      },
    });
    this.#transports.push(t);
    return t;
  }

  #dial(t: ActorTransport, url: string, peer: string) {
    return t.connect(url, {
      expectedPeer: peer,
      seed: hashSeed(`${peer}`, this.#options.seed),
      backoffBaseMs: 50,
      backoffMaxMs: 500,
    });
  }

  #count(key: string) {
    return (e: SupervisorEvent) => {
      this.monitor.supervisor(e);
      if (e.type === "restarted") this.restarts[key] = (this.restarts[key] ?? 0) + 1;
    };
  }

  /** A start-state source like the aggregators' own, with a short ask timeout. */
  #stateSource: StartStateSource = {
    async startState(ctx, view, options): Promise<StateMsg> {
      const owner = view.shards[options.shard].aggregator;
      const reply = await ctx.system.ref(owner).ask<unknown>({
        type: "state_request",
        run: view.run,
        shard: options.shard,
        ...(options.seed ? { seed: options.seed } : {}),
      }, { timeoutMs: 4000 });
      const msg = validateRunMessage(reply);
      if (msg.type !== "state") {
        throw new Error(`Cannot fetch start state of shard ${options.shard} from ${owner}`);
      }
      return msg;
    },
  };

  async #start(): Promise<void> {
    const o = this.#options;
    const network = o.network ?? false;
    const innerSteps = o.innerSteps ?? 3;
    const settings = {
      run: RUN,
      config: "tiny",
      // The inner learning-rate schedule must not depend on where a run is
      // stopped: a faulty run and its fault-free twin use the same one.
      rounds: 0,
      innerSteps,
      outer: { lr: 1, momentum: 0 },
      seed: 1,
    };
    const params = paramLength("tiny");
    const host = this.#host;
    const monitor = this.monitor;
    await host.spawn({
      receive: (raw: unknown) => {
        try {
          const msg = validateRunMessage(raw);
          if (msg.type === "trainer_report" && msg.run === RUN) monitor.report(msg);
        } catch (err) {
          monitor.log(`monitor refused a message: ${err}`, "warn");
        }
      },
    }, { name: "monitor" });
    // Tracker.
    const trackerSup = new Supervisor({
      intensity: 20,
      periodMs: 60_000,
      children: [{
        id: "tracker",
        start: () =>
          trackerBehavior({
            run: RUN,
            params,
            rounds: o.rounds,
            minTrainers: o.trainers,
            evictAfterMs: o.evictAfterMs ?? 4000,
            tickMs: 250,
            incarnation: () => this.#incarnation++,
            onEvent: (e) => monitor.tracker(e),
          }),
      }],
      onEvent: this.#count("tracker"),
    });
    await this.#trk.spawn(trackerSup, { name: "tracker", shutdownMs: Infinity });
    if (network) {
      this.trackerListener = await this.#transport(this.#trk).listen({ port: 0 });
      this.#listeners.push(this.trackerListener);
      const ht = this.#transport(host);
      this.hostListener = await ht.listen({ port: 0 });
      this.#listeners.push(this.hostListener);
      await this.#dial(ht, this.trackerListener.url, "trk").ready();
    }
    // Aggregators.
    const slot = o.slot ?? new MemoryKeeperSlot();
    const nAgg = o.aggregators ?? 1;
    for (let i = 0; i < nAgg; i++) this.aggregatorPaths.push(`host/aggregators/${i}`);
    const aggSup = new Supervisor({
      intensity: 20,
      periodMs: 60_000,
      children: this.aggregatorPaths.map((path, i) => ({
        id: String(i),
        start: () =>
          aggregatorBehavior({
            run: RUN,
            id: path,
            tracker: this.trackerPath,
            outer: settings.outer,
            quorum: 0.5,
            minWaitMs: o.minWaitMs ?? 1500,
            heartbeatMs: o.heartbeatMs ?? 500,
            slot,
            onEvent: (e) => {
              if (e.type === "rejected") {
                const r = e.rejection;
                this.rejections.push({
                  reason: r.reason,
                  trainer: r.trainer,
                  round: r.round,
                  detail: r.detail,
                });
              }
              monitor.aggregator(e);
            },
          }),
      })),
      onEvent: (e) => {
        this.monitor.supervisor(e);
        if (e.type === "restarted") {
          const key = `aggregator:${e.child}`;
          this.restarts[key] = (this.restarts[key] ?? 0) + 1;
        }
      },
    });
    await host.spawn(aggSup, { name: "aggregators", shutdownMs: Infinity });
    // Trainers.
    const engine = engineSettings(settings);
    const starts: Promise<void>[] = [];
    for (let i = 0; i < o.trainers; i++) {
      const system = network ? new ActorSystem({ node: `n${i}` }) : host;
      if (network) this.#systems.push(system);
      const name = network ? "node" : `t${i}`;
      const path = `${system.node}/${name}/trainer`;
      this.trainerPaths.push(path);
      if (network) {
        const t = this.#transport(system);
        this.#trainerNodes.push({ node: system.node, system, transport: t });
        await this.#dial(t, this.hostListener!.url, "host").ready();
        await this.#dial(t, this.trackerListener!.url, "trk").ready();
      }
      const ready = Promise.withResolvers<void>();
      const sup = new Supervisor({
        intensity: 20,
        periodMs: 60_000,
        children: [{
          id: "trainer",
          shutdownMs: 5000,
          start: () =>
            trainerBehavior({
              run: RUN,
              id: path,
              tracker: this.trackerPath,
              monitor: "host/monitor",
              engine,
              dataShards: 16,
              innerSteps,
              heartbeatMs: o.heartbeatMs ?? 500,
              stateSource: this.#stateSource,
              onEvent: (e: TrainerEvent) => {
                if (e.type === "report") {
                  const r = e.report;
                  let m = this.hashes.get(r.round);
                  if (!m) this.hashes.set(r.round, m = new Map());
                  m.set(r.trainer, r.hash);
                } else if (e.type === "log" && e.message.startsWith("engine ready")) {
                  ready.resolve();
                }
                monitor.trainer(e);
              },
            }),
        }],
        onEvent: this.#count(`trainer:${i}`),
      });
      await system.spawn(sup, { name, shutdownMs: Infinity });
      starts.push(ready.promise);
    }
    await Promise.all(starts);
  }

  #timers = new Set<Timer>();

  /** Rounds of the run (0: unbounded). */
  get rounds(): number {
    return this.#options.rounds;
  }

  /** Resolves after `ms` (at once when the run closed). */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.later(ms, resolve));
  }

  /** Runs `fn` after `ms` unless the run closed first. */
  later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  /** The actor system of a node: "host", "trk" or a trainer node "n<i>". */
  system(node: string): ActorSystem {
    const s = this.#systems.find((s) => s.node === node);
    if (!s) throw new RangeError(`Unknown node: ${node}`);
    return s;
  }

  /** Trainer node names (network runs). */
  get trainerNodes(): string[] {
    return this.#trainerNodes.map((t) => t.node);
  }

  /** Tells `msg` to an actor on its own node (local control, never over the fault layer). */
  tell(path: string, msg: unknown): void {
    const node = path.split("/")[0];
    this.system(node).ref(path).tell(msg);
  }

  /** Resolves once round `round` was emitted (rejects after `timeoutMs`). */
  async roundDone(round: number, timeoutMs = 120_000): Promise<void> {
    let timer: Timer | undefined;
    try {
      await Promise.race([
        this.monitor.roundEmitted(round),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeoutMs);
        }).then(async () => {
          throw new Error(
            `Round ${round} did not close within ${timeoutMs} ms; actors: ${await this
              .statuses()}; log tail:\n${this.lines.slice(-25).join("\n")}`,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Every trainer's and aggregator's status, as JSON (for stall reports). */
  async statuses(): Promise<string> {
    const out: Record<string, unknown> = {};
    for (const path of [...this.trainerPaths, ...this.aggregatorPaths]) {
      try {
        out[path] = await this.system(path.split("/")[0]).ref(path).ask({ type: "status" }, {
          timeoutMs: 2000,
        });
      } catch (err) {
        out[path] = String(err);
      }
    }
    return JSON.stringify(out);
  }

  /**
   * Evaluation loss of θ on a trainer that holds it (few windows), with the
   * round θ is at (rounds applied). In a bounded run, only a trainer past the
   * last round is asked.
   */
  async evalLoss(windows = 128): Promise<{ loss: number; round: number }> {
    let last: unknown;
    for (const path of this.trainerPaths) {
      try {
        const node = path.split("/")[0];
        const st = await this.system(node).ref(path).ask<{ round: number }>({ type: "status" }, {
          timeoutMs: 10_000,
        });
        if (st.round < Math.max(1, this.#options.rounds)) {
          last = `${path} is at round ${st.round}`;
          continue;
        }
        const r = await this.system(node).ref(path).ask<{ loss: number; round: number }>(
          { type: "eval", maxWindows: windows },
          { timeoutMs: 60_000 },
        );
        return { loss: r.loss, round: r.round };
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`Cannot evaluate on any trainer: ${last}`);
  }

  /**
   * The invariants of the whole run so far, as a list of violations (empty
   * when they all hold): rounds 0..n-1 closed once each and in order, each
   * with at least one contributor named at most once; every trainer that
   * reported a round reported the same θ hash (also as seen by the monitor);
   * no unhandled rejection.
   */
  violations(): string[] {
    const out: string[] = [];
    const rounds = this.monitor.rounds;
    rounds.forEach((r, i) => {
      if (r.round !== i) out.push(`round event ${i} is round ${r.round}`);
      if (r.contributors.length < 1) out.push(`round ${r.round} closed with no contributor`);
      if (new Set(r.contributors).size !== r.contributors.length) {
        out.push(`round ${r.round}: a contributor counted twice: ${r.contributors}`);
      }
      if (new Set(r.theta_hashes).size > 1) {
        out.push(`round ${r.round}: monitor saw θ hashes ${r.theta_hashes}`);
      }
    });
    for (const [round, m] of this.hashes) {
      if (new Set(m.values()).size > 1) {
        out.push(`round ${round}: trainers hold different θ: ${JSON.stringify([...m])}`);
      }
    }
    for (const u of this.unhandled) out.push(`unhandled rejection: ${u}`);
    return out;
  }

  /** Rounds whose θ differed between trainers. */
  divergentRounds(): number[] {
    const out = new Set<number>();
    for (const [round, m] of this.hashes) if (new Set(m.values()).size > 1) out.add(round);
    for (const r of this.monitor.rounds) {
      if (new Set(r.theta_hashes).size > 1) out.add(r.round);
    }
    return [...out].sort((a, b) => a - b);
  }

  /** Stops every node, transport and fault timer. */
  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const t of this.#transports) await t.close().catch(() => {});
    for (const l of this.#listeners) await l.shutdown().catch(() => {});
    this.faults?.close();
    for (const s of [...this.#systems].reverse()) await s.shutdown().catch(() => {});
    globalThis.removeEventListener("unhandledrejection", this.#onUnhandled);
    // Terminated Workers settle their last ops on the next turns of the loop.
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A seeded PRNG in [0, 1) for fault schedules. */
export function scheduleRandom(seed: number, label: string): () => number {
  return mulberry32(hashSeed(label, seed));
}

// ------------------------------------------------------------------ faults

/** Every fault kind the suite and the chaos soak inject. */
export const FAULT_KINDS = [
  // Crashes.
  "tracker_crash",
  "aggregator_crash",
  "trainer_crash",
  "worker_exit",
  "device_lost",
  // Hostile or broken contributions.
  "nan_update",
  "inf_update",
  "wrong_shape",
  "stale_round",
  "replay_old_round",
  "duplicate_send",
  "scaled_update",
  "sign_flip",
  "straggler",
  // Network (network runs only).
  "drop_frames",
  "delay_frames",
  "duplicate_frames",
  "reorder_frames",
  "corrupt_frames",
  "partition_node",
  "partition_tracker",
  "bandwidth_limit",
  "wrong_secret",
  "malformed_msgpack",
  "oversized_frame",
  "malformed_message",
] as const;

/** A fault kind. */
export type FaultKind = typeof FAULT_KINDS[number];

/** A fault at a chosen point of the run. */
export interface ScheduledFault {
  /** Injected once round `afterRound` closed (i.e. during round afterRound + 1). */
  afterRound: number;
  kind: FaultKind;
  /** Trainer index (trainer faults, partition_node). */
  target?: number;
  /** Wait this long after the round closed (e.g. to land mid aggregation), ms. */
  delayMs?: number;
  /** Network phases and partitions end when this round closed (default afterRound + 2). */
  untilRound?: number;
  /** Or end this long after the injection, ms (partitions: default 6000). */
  holdMs?: number;
}

/** What an injected fault led to, for the test's assertions. */
export interface FaultOutcome {
  fault: ScheduledFault;
  /** Wall time of the injection, s. */
  at: number;
  /** Short description of what happened (e.g. the close code a hostile peer got). */
  detail: string;
}

async function rawSocket(
  url: string,
  send: Uint8Array,
): Promise<{ code: number; reason: string }> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const closed = Promise.withResolvers<{ code: number; reason: string }>();
  const timer = setTimeout(() => ws.close(), 10_000);
  ws.onopen = () => ws.send(send);
  ws.onclose = (e) => closed.resolve({ code: e.code, reason: e.reason });
  ws.onerror = () => {};
  try {
    return await closed.promise;
  } finally {
    clearTimeout(timer);
  }
}

/** Rates of each network phase kind. */
const PHASE_RATES: Partial<Record<FaultKind, FaultRates>> = {
  drop_frames: { drop: 0.05 },
  delay_frames: { delay: 0.5, delayMs: [5, 120] },
  duplicate_frames: { duplicate: 0.3 },
  reorder_frames: { reorder: 0.3 },
  corrupt_frames: { corrupt: 0.05 },
};

/**
 * Injects one fault into a running fault run; resolves with what happened.
 * Network phases and partitions are undone when `untilRound` closed.
 */
export async function injectFault(run: FaultRun, f: ScheduledFault): Promise<FaultOutcome> {
  const at = Math.round(run.monitor.wallS * 1000) / 1000;
  const trainer = run.trainerPaths[(f.target ?? 0) % run.trainerPaths.length];
  const until = f.untilRound ?? f.afterRound + 2;
  /** Undoes a network fault when its round closed or its hold time passed. */
  const undo = (holdMs: number | undefined, fn: () => void) => {
    if (holdMs !== undefined) run.later(holdMs, fn);
    else run.monitor.roundEmitted(until).then(fn);
  };
  const upTo = (holdMs: number | undefined) =>
    holdMs !== undefined ? `for ${holdMs} ms` : `until round ${until}`;
  const out = (detail: string): FaultOutcome => {
    run.log(`fault ${f.kind} after round ${f.afterRound}: ${detail}`);
    return { fault: f, at, detail };
  };
  const poison = (kind: string) => {
    run.tell(trainer, { type: "poison", kind });
    return out(`${trainer} poisons its next contribution (${kind})`);
  };
  const needNet = () => {
    if (!run.faults || !run.hostListener) {
      throw new RangeError(`Fault ${f.kind} needs a network run`);
    }
    return run.faults;
  };
  switch (f.kind) {
    case "tracker_crash":
      run.tell(run.trackerPath, { type: "crash", reason: "injected" });
      return out("tracker threw");
    case "aggregator_crash":
      run.tell(run.aggregatorPaths[0], { type: "crash", reason: "injected" });
      return out("aggregator threw");
    case "trainer_crash":
      run.tell(trainer, { type: "crash", reason: "injected" });
      return out(`${trainer} threw`);
    case "worker_exit":
    case "device_lost":
      run.tell(trainer, {
        type: "worker_fault",
        kind: f.kind,
        atStep: 1,
      });
      return out(`${trainer}: ${f.kind} at inner step 1 of its next round`);
    case "straggler":
      run.tell(trainer, { type: "worker_fault", kind: "stall", atStep: 1, ms: 4000 });
      return out(`${trainer} stalls 4 s in its next inner phase`);
    case "nan_update":
      return poison("nan");
    case "inf_update":
      return poison("inf");
    case "wrong_shape":
      return poison("shape");
    case "stale_round":
      return poison("stale");
    case "replay_old_round":
      return poison("replay");
    case "duplicate_send":
      return poison("duplicate");
    case "scaled_update":
      return poison("scale");
    case "sign_flip":
      return poison("flip");
    case "drop_frames":
    case "delay_frames":
    case "duplicate_frames":
    case "reorder_frames":
    case "corrupt_frames": {
      const faults = needNet();
      faults.setRates(PHASE_RATES[f.kind]);
      undo(f.holdMs, () => faults.setRates(undefined));
      return out(`${JSON.stringify(PHASE_RATES[f.kind])} on every link ${upTo(f.holdMs)}`);
    }
    case "bandwidth_limit": {
      const faults = needNet();
      faults.setBandwidth(2_000_000);
      undo(f.holdMs, () => faults.setBandwidth(0));
      return out(`every link limited to 2 Mbit/s ${upTo(f.holdMs)}`);
    }
    case "partition_node":
    case "partition_tracker": {
      const faults = needNet();
      const nodes = run.trainerNodes;
      const cut = nodes[(f.target ?? 0) % nodes.length];
      if (f.kind === "partition_node") faults.partition([cut], ["host", "trk", ...nodes]);
      else faults.partition(["trk"], nodes);
      const hold = f.holdMs ?? 6000;
      undo(hold, () => faults.heal());
      return out(
        f.kind === "partition_node"
          ? `${cut} cut off from every node ${upTo(hold)}`
          : `tracker cut off from every trainer ${upTo(hold)}`,
      );
    }
    case "wrong_secret": {
      needNet();
      const system = new ActorSystem({ node: "intruder" });
      const t = new ActorTransport(system, { run: RUN, secret: "not-the-secret", log: () => {} });
      let detail: string;
      let timer: Timer | undefined;
      try {
        await Promise.race([
          t.connect(run.hostListener!.url, { expectedPeer: "host", maxAttempts: 1 }).ready(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error("no answer within 15 s")), 15_000);
          }),
        ]);
        detail = "ACCEPTED";
      } catch (err) {
        detail = `refused: ${err instanceof Error ? err.message : err}`;
      } finally {
        clearTimeout(timer);
        await t.close();
        await system.shutdown();
      }
      return out(detail);
    }
    case "malformed_msgpack": {
      needNet();
      // 0xc1 is never used by msgpack.
      const r = await rawSocket(run.hostListener!.url, new Uint8Array([0xc1, 0xc1, 0xff, 0x00]));
      return out(`raw peer closed with ${r.code} ${r.reason}`);
    }
    case "oversized_frame": {
      needNet();
      const r = await rawSocket(run.hostListener!.url, new Uint8Array((16 << 20) + 1));
      return out(`raw peer closed with ${r.code} ${r.reason}`);
    }
    case "malformed_message": {
      // An authenticated node sends protocol garbage to the tracker and aggregator.
      const node = run.trainerNodes[0];
      const system = run.system(node);
      const bad = [
        { type: "contribution", run: RUN, trainer: `${node}/node/trainer`, round: "x", q: 7 },
        { type: "join", run: RUN },
        { type: "no-such-type" },
        "garbage",
      ];
      const answers: string[] = [];
      for (const target of [run.aggregatorPaths[0], run.trackerPath]) {
        for (const m of bad) {
          try {
            const r = await system.ref(target).ask<{ error?: string }>(m, { timeoutMs: 5000 });
            answers.push(r?.error ? "error" : "ok");
          } catch (err) {
            answers.push(`failed: ${err instanceof Error ? err.name : err}`);
          }
        }
      }
      return out(`answers ${answers.join(", ")}`);
    }
  }
}

/**
 * Injects `faults` into a started run, group by group (faults with the same
 * `afterRound` go together, in the order given): a group goes in once its
 * round closed and the previous group's hold time passed, and (with
 * `healthy`, the default) once a round closed with every trainer
 * contributing, so that each fault hits a whole run. After the last group it
 * waits for one more such round: the run has recovered. Rejects when the run
 * reaches its last rounds first. Resolves with every outcome.
 */
export async function schedule(
  run: FaultRun,
  faults: ScheduledFault[],
  options: { healthy?: boolean } = {},
): Promise<FaultOutcome[]> {
  const groups = new Map<number, ScheduledFault[]>();
  for (const f of faults) groups.set(f.afterRound, [...groups.get(f.afterRound) ?? [], f]);
  const outcomes: FaultOutcome[] = [];
  let next = 0;
  const healthyFrom = async (from: number): Promise<number> => {
    for (let r = from;; r++) {
      if (run.rounds > 0 && r >= run.rounds - 2) {
        throw new Error(
          `The run reached round ${r} of ${run.rounds} before it was whole again; log tail:\n${
            run.lines.slice(-30).join("\n")
          }`,
        );
      }
      await run.roundDone(r, 30_000);
      const ev = run.monitor.rounds[r];
      if (options.healthy === false || ev.contributors.length >= run.trainerPaths.length) return r;
    }
  };
  for (const [afterRound, group] of [...groups].sort((a, b) => a[0] - b[0])) {
    const r = await healthyFrom(Math.max(afterRound, next));
    next = r + 1;
    const shifted = group.map((f) => ({ ...f, afterRound: r, untilRound: f.untilRound ?? r + 2 }));
    outcomes.push(
      ...await Promise.all(shifted.map(async (f) => {
        if (f.delayMs) await run.sleep(f.delayMs);
        // An injection that hangs is a finding too: name it instead of waiting forever.
        let timer: Timer | undefined;
        try {
          return await Promise.race([
            injectFault(run, f),
            new Promise<never>((_, reject) => {
              timer = setTimeout(
                () =>
                  reject(
                    new Error(
                      `Injecting ${f.kind} after round ${f.afterRound} did not finish within 60 s`,
                    ),
                  ),
                60_000,
              );
            }),
          ]);
        } finally {
          clearTimeout(timer);
        }
      })),
    );
    // Network faults run their course before the next group.
    const hold = Math.max(0, ...shifted.map((f) => f.holdMs ?? 0));
    if (hold > 0) await run.sleep(hold);
    next = Math.max(next, run.monitor.rounds.length);
  }
  if (groups.size > 0) await healthyFrom(next);
  return outcomes;
}

/** Kinds of the same class replace each other (one fault layer phase, one partition set). */
const EXCLUSIVE: Partial<Record<FaultKind, string>> = {
  drop_frames: "phase",
  delay_frames: "phase",
  duplicate_frames: "phase",
  reorder_frames: "phase",
  corrupt_frames: "phase",
  partition_node: "partition",
  partition_tracker: "partition",
  bandwidth_limit: "bandwidth",
};

/**
 * A seeded plan of `n` faults of mixed kinds, in groups of one to three
 * injected together (never two of a class that would replace each other).
 * The same seed gives the same plan.
 */
export function chaosPlan(
  seed: number,
  n: number,
  options: {
    kinds?: readonly FaultKind[];
    trainers?: number;
    phaseMs?: number;
    partitionMs?: number;
  } = {},
): ScheduledFault[] {
  const kinds = options.kinds ?? FAULT_KINDS;
  const random = scheduleRandom(seed, "chaos-plan");
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)];
  const plan: ScheduledFault[] = [];
  let round = 0;
  while (plan.length < n) {
    const size = Math.min(n - plan.length, 1 + Math.floor(random() * 3));
    const classes = new Set<string>();
    for (let i = 0; i < size; i++) {
      let kind = pick(kinds);
      for (let tries = 0; EXCLUSIVE[kind] && classes.has(EXCLUSIVE[kind]!) && tries < 20; tries++) {
        kind = pick(kinds);
      }
      if (EXCLUSIVE[kind] && classes.has(EXCLUSIVE[kind]!)) continue;
      if (EXCLUSIVE[kind]) classes.add(EXCLUSIVE[kind]!);
      const f: ScheduledFault = {
        afterRound: round,
        kind,
        target: Math.floor(random() * (options.trainers ?? 3)),
      };
      if (EXCLUSIVE[kind] === "partition") f.holdMs = options.partitionMs ?? 4500;
      else if (EXCLUSIVE[kind]) f.holdMs = options.phaseMs ?? 1000;
      if (kind === "aggregator_crash") f.delayMs = Math.floor(random() * 200);
      plan.push(f);
    }
    round++;
  }
  return plan;
}

/** The chaos summary's fields. */
export interface ChaosSummary {
  seed: number;
  faults_injected: number;
  fault_kinds: Record<string, number>;
  rounds: number;
  restarts: number;
  restarts_by: Record<string, number>;
  lost_rounds: number;
  divergent_rounds: number;
  rejections: Record<string, number>;
  fault_layer: Record<string, number>;
  unhandled_rejections: number;
  final_loss: number;
  fault_free_loss: number;
  loss_ratio: number;
  wall_s: number;
}

/**
 * The chaos soak: a network run with `faults` faults of mixed kinds from a
 * seeded plan, then a fault-free run with the same seed for as many rounds;
 * returns the summary.
 */
export async function chaos(
  options: {
    seed: number;
    faults: number;
    trainers?: number;
    innerSteps?: number;
    kinds?: readonly FaultKind[];
    log?: (line: string) => void;
  },
): Promise<ChaosSummary> {
  const t0 = performance.now();
  const trainers = options.trainers ?? 3;
  const plan = chaosPlan(options.seed, options.faults, { kinds: options.kinds, trainers });
  const run = await FaultRun.start({
    seed: options.seed,
    trainers,
    rounds: 0,
    innerSteps: options.innerSteps ?? 3,
    network: true,
    log: options.log,
  });
  let outcomes: FaultOutcome[];
  let final: { loss: number; round: number };
  let summary: Omit<ChaosSummary, "fault_free_loss" | "loss_ratio" | "wall_s">;
  try {
    outcomes = await schedule(run, plan);
    // A few whole rounds after the last fault, then θ is evaluated where it is.
    const from = run.monitor.rounds.length;
    await run.roundDone(from + 3);
    final = await run.evalLoss();
    const emitted = run.monitor.rounds.filter((r) => r.round < final.round);
    const closed = new Set(emitted.filter((r) => r.contributors.length > 0).map((r) => r.round));
    const kinds: Record<string, number> = {};
    for (const o of outcomes) kinds[o.fault.kind] = (kinds[o.fault.kind] ?? 0) + 1;
    const rejections: Record<string, number> = {};
    for (const r of run.rejections) rejections[r.reason] = (rejections[r.reason] ?? 0) + 1;
    summary = {
      seed: options.seed,
      faults_injected: outcomes.length,
      fault_kinds: kinds,
      rounds: final.round,
      restarts: Object.values(run.restarts).reduce((a, b) => a + b, 0),
      restarts_by: { ...run.restarts },
      lost_rounds: final.round - closed.size,
      divergent_rounds: run.divergentRounds().filter((r) => r < final.round).length,
      rejections,
      fault_layer: run.faults!.actionCounts(),
      unhandled_rejections: run.unhandled.length,
      final_loss: Math.round(final.loss * 10_000) / 10_000,
    };
    const v = run.violations();
    if (v.length > 0) options.log?.(`invariant violations:\n${v.join("\n")}`);
  } finally {
    await run.close();
  }
  options.log?.(`fault-free run with seed ${options.seed} for ${final.round} rounds`);
  const clean = await FaultRun.start({
    seed: options.seed,
    trainers,
    rounds: final.round,
    innerSteps: options.innerSteps ?? 3,
    network: true,
  });
  let cleanLoss: number;
  try {
    await clean.roundDone(final.round - 1, 600_000);
    cleanLoss = (await clean.evalLoss()).loss;
  } finally {
    await clean.close();
  }
  return {
    ...summary,
    fault_free_loss: Math.round(cleanLoss * 10_000) / 10_000,
    loss_ratio: Math.round(final.loss / cleanLoss * 10_000) / 10_000,
    wall_s: Math.round((performance.now() - t0) / 100) / 10,
  };
}

/** What {@linkcode runWithFaults} found. */
export interface FaultRunResult {
  /** The faulty run (closed). */
  run: FaultRun;
  /** What each injected fault led to. */
  injected: FaultOutcome[];
  /** θ's evaluation loss at the end of the faulty run, and its round. */
  final: { loss: number; round: number };
  /** The fault-free run's evaluation loss at the same round, same seed. */
  cleanLoss: number;
  /** The fault-free run (closed). */
  clean: FaultRun;
}

/**
 * Runs `faults` on an unbounded run until the run is whole again plus 15
 * rounds, evaluates θ where it is (round R), then runs the same seed without
 * faults for R rounds and evaluates it too.
 */
export async function runWithFaults(
  options: Omit<FaultRunOptions, "rounds">,
  faults: ScheduledFault[],
): Promise<FaultRunResult> {
  const run = await FaultRun.start({ ...options, rounds: 0 });
  let injected: FaultOutcome[];
  let final: { loss: number; round: number };
  try {
    injected = await schedule(run, faults);
    // Some whole rounds after the last fault: both runs leave the steep start of the curve.
    await run.roundDone(run.monitor.rounds.length + 15);
    final = await run.evalLoss();
  } finally {
    await run.close();
  }
  const clean = await FaultRun.start({ ...options, rounds: final.round });
  let cleanLoss: number;
  try {
    await clean.roundDone(final.round - 1, 300_000);
    cleanLoss = (await clean.evalLoss()).loss;
  } finally {
    await clean.close();
  }
  return { run, injected, final, cleanLoss, clean };
}
