/**
 * The host side of a run ({@linkcode startRunHost}): a supervision tree per
 * role (tracker, aggregators, trainers), the checkpoint keepers and their
 * commit coordinator, the keeper registry for keepers on other nodes, and the
 * run's monitor. With a transport in front of it, trainers and keepers on
 * other nodes join the same run.
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
import { type Behavior, describeReason, isAbnormal } from "./runtime/behavior.ts";
import { ActorSystem } from "./runtime/system.ts";
import { Supervisor, type SupervisorEvent } from "./runtime/supervisor.ts";
import { trackerBehavior } from "./tracker.ts";
import { aggregatorBehavior, type KeeperSlot, MemoryKeeperSlot } from "./aggregator.ts";
import { trainerBehavior } from "./trainer.ts";
import { syncOptions } from "./overlap.ts";
import type { StartStateSource } from "./start_state.ts";
import type { AggregatorState } from "./aggregation.ts";
import { DEFAULT_BLOCK, type ReportCursor, shardMap } from "./run_protocol.ts";
import { validateRunMessage } from "./run_protocol_validate.ts";
import { keeperBehavior, type KeeperEvent } from "./keeper.ts";
import { commitCoordinatorBehavior, type CommitEvent } from "./keeper_commit.ts";
import { KeeperFeedSlot } from "./keeper_feed.ts";
import { PreparedShare } from "./keeper_share.ts";
import { aggregatorStates } from "./restore.ts";
import { MONITOR_NAME, round3, type RunEvent, RunMonitor } from "./monitor.ts";
import {
  checkResumeRound,
  checkSyncSettings,
  engineSettings,
  isReportCursor,
  paramLength,
  resumeCursors,
  runModel,
  type RunSettings,
  runSettingsOf,
  savedDataShards,
} from "./run_settings.ts";
import {
  type CheckpointOptions,
  CheckpointSlot,
  keeperLine,
  pointLatest,
  REMOTE_KEEPER_TTL_MS,
  runStateSource,
  sourceLine,
} from "./run_checkpoint.ts";
import { formatAggregate, parseAggregate } from "./robust_aggregate.ts";
import { describeConfig } from "../kernels/config.ts";
import type { ResumedRun } from "../checkpoint/resume.ts";
import { checkDuty } from "../checkpoint/_background.ts";

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

/**
 * Starts the host side of a run on `system` (a fresh one on node "host" by
 * default): the monitor, then a supervisor per role under one root supervisor
 * "run": `run/tracker`, `run/aggregators/<i>`, `run/trainers/<i>`.
 *
 * @example A host with one local trainer, until its one round closed
 * ```ts
 * import { startRunHost } from "./host.ts";
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
  const aggregate = options.aggregate === undefined ? undefined : parseAggregate(options.aggregate);
  const localTrainers = options.localTrainers ?? 0;
  const dataShards = options.dataShards ?? 16;
  const nAgg = options.aggregators ?? 1;
  const resume = options.resume;
  const startRound = resume?.round ?? 0;
  // Checked here: an aggregator that throws when it starts would only be restarted.
  checkSyncSettings(
    options,
    shardMap(params, { aggregators: Array.from({ length: nAgg }, (_, i) => `${i}`) }),
  );
  if (resume) {
    if (resume.params.length !== params) {
      throw new RangeError(
        `Cannot resume: the checkpoint holds ${resume.params.length} parameters, the model ${
          describeConfig(model)
        } ${params}`,
      );
    }
    checkResumeRound(startRound, options.rounds);
  }
  const monitor = new RunMonitor(
    { params, innerSteps: options.innerSteps, rounds: options.rounds, startRound },
    options.emit,
  );
  if (aggregate) monitor.log(`aggregators combine contributions by ${formatAggregate(aggregate)}`);
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
  const keeperShare = new PreparedShare();
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
  // The count of this host's own trainers goes with every checkpoint: a resumed run starts as many.
  const settingsRecord: Record<string, unknown> = JSON.parse(
    JSON.stringify({ ...runSettingsOf(options), trainers: localTrainers }),
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
      if (isReportCursor(v)) cursors[k] = v;
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
              // Each round the aggregators lend to every keeper here is encoded once.
              share: keeperShare,
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
      onEvent: (e) => monitor.log(sourceLine(e)),
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
          ...(resume
            ? { resumedShards: savedDataShards(resume, { dataShards, trainers: trainerPaths }) }
            : {}),
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
          exchange: options.exchange,
          updateExchange: options.updateExchange,
          ...(aggregate ? { aggregate } : {}),
          quorum: options.quorum,
          minWaitMs: options.minWaitMs,
          ...(options.fragments !== undefined ? { fragments: options.fragments } : {}),
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
          dataShards,
          // A resumed run deals the shards its checkpoint owes each trainer.
          ...(resume ? {} : { preferredDataShard: i }),
          innerSteps: options.innerSteps,
          ...syncOptions(options),
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
  const rootRef = await system.spawn(root, { name: "run", shutdownMs: Infinity });
  // Past its restart intensity the root gives up and the run is over: say so to whoever
  // awaits the run's end, instead of leaving it waiting for rounds that will never close.
  system.watch(rootRef, ({ reason }) => {
    if (isAbnormal(reason)) {
      monitor.fail(
        new Error(`Run stopped: its supervision tree failed (${describeReason(reason)})`),
      );
    }
  });
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
