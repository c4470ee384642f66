/**
 * The fault suite's run ({@linkcode FaultRun}): a real run (tracker,
 * aggregators, trainers in Workers on WebGPU, real supervisors) that faults
 * are injected into (_fault_inject.ts, _fault_plan.ts), with the invariants
 * checked after them ({@linkcode FaultRun.violations}).
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
import { trainerBehavior, type TrainerEvent } from "../actors/trainer.ts";
import type { StartStateSource } from "../actors/start_state.ts";
import { engineSettings, paramLength, type RunSettings } from "../actors/run_settings.ts";
import { type RunEvent, RunMonitor } from "../actors/monitor.ts";
import type { StateMsg } from "../actors/run_protocol.ts";
import { validateRunMessage } from "../actors/run_protocol_validate.ts";
import { ActorTransport, type Listener } from "../transport/remote.ts";
import { hashSeed } from "../transport/rng.ts";
import { PhasedFaults } from "./_fault_layer.ts";
import { checkSync, syncOptions } from "../actors/overlap.ts";

const VERBOSE = Deno.env.get("FAULT_VERBOSE") === "1";

/** The run secret every node of a fault run shares. */
export const SECRET = "fault-suite-secret";
/** Run id of fault runs. */
export const RUN = "fault-run";
type Timer = ReturnType<typeof setTimeout>;

/**
 * The run settings of every fault run, also in a trainer node's own process
 * (_fault_node.ts). The inner learning-rate schedule must not depend on where
 * a run is stopped (`rounds: 0`): a faulty run and its fault-free twin use
 * the same one. The outer step is the run's default (overlapped,
 * actors/overlap.ts); `FAULT_SYNC=blocking` runs the suite blocking, and
 * child processes inherit it.
 */
export function faultSettings(innerSteps: number): RunSettings {
  const sync = Deno.env.get("FAULT_SYNC");
  return {
    run: RUN,
    config: "tiny",
    rounds: 0,
    innerSteps,
    outer: { lr: 1, momentum: 0 },
    seed: 1,
    ...(sync ? { sync: checkSync(sync, "FAULT_SYNC") } : {}),
  };
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
      // The fault layer can corrupt a handshake frame, which the peer refuses as
      // a failed authentication; these nodes hold the right secret, so they dial
      // again instead of giving up for good as a node with a wrong one should.
      retryOnAuthFailure: true,
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
    const settings = faultSettings(innerSteps);
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
              ...syncOptions(settings),
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
