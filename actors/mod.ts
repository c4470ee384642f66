/**
 * The run's roles as supervised actors, and the runs they make up: trainers
 * (local DiLoCo steps in Workers on WebGPU), gradient aggregators (one shard
 * of the outer step each), checkpoint keepers, the membership tracker, and
 * the monitor that turns their reports into round events.
 *
 * - {@linkcode runEmbedded}: a whole run in this process.
 * - {@linkcode startRunHost}: the host side of a run on an actor system, for
 *   a service that embeds it; {@linkcode runNetworked}: host a run that other
 *   processes join over WebSockets, or join one.
 * - The roles' behaviors ({@linkcode trainerBehavior},
 *   {@linkcode aggregatorBehavior}, {@linkcode keeperBehavior},
 *   {@linkcode trackerBehavior}) and the run protocol they speak
 *   ({@linkcode validateRunMessage}), for runs laid out differently.
 *
 * It builds on kernels/, actors/runtime/, transport/ and checkpoint/.
 *
 * @example A whole run of the tiny model on two trainers, watched round by round
 * ```ts
 * import { type RunEvent, runEmbedded } from "./mod.ts";
 * import assert from "node:assert/strict";
 * const losses: number[] = [];
 * const summary = await runEmbedded({
 *   run: "demo",
 *   config: "tiny",
 *   trainers: 2,
 *   rounds: 2,
 *   innerSteps: 2,
 *   outer: { lr: 0.7, momentum: 0.9 },
 *   evalWindows: 8,
 *   emit: (e: RunEvent) => {
 *     if (e.event === "round") losses.push(e.loss);
 *   },
 * });
 * assert.equal(losses.length, 2);
 * assert.equal(summary.rounds, 2);
 * ```
 *
 * @example θ after a round's int8 update, bit for bit what every trainer computes
 * ```ts
 * import { applyUpdate } from "./mod.ts";
 * const theta = new Float32Array([1, 1]);
 * applyUpdate(theta, { q: new Int8Array([2, -2]), scales: new Float32Array([0.25]) });
 * console.log(theta); // Float32Array [1.5, 0.5]
 * ```
 *
 * @module
 */
export {
  CheckpointSlot,
  paramLength,
  runEmbedded,
  RunMonitor,
  runNetworked,
  runStateSource,
  startRunHost,
  summarize,
} from "./run.ts";
export type {
  CheckpointOptions,
  EmbeddedOptions,
  HostOptions,
  NetworkedOptions,
  RunEvent,
  RunHost,
  RunSettings,
  RunSummary,
} from "./run.ts";
export { commitCoordinatorBehavior, keeperBehavior, KeeperFeedSlot } from "./keeper.ts";
export type { KeeperOptions } from "./keeper.ts";
export { fetchRound, keeperStateSource } from "./keeper_transfer.ts";
export { aggregatorStates } from "./restore.ts";
export { Membership } from "./membership.ts";
export {
  applyUpdate,
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  DILOCO_PAPER_OUTER,
  OUTER_PRESETS,
  outerAt,
  ShardAggregator,
  thetaHash,
} from "./aggregation.ts";
export type { AggregatorState, OuterOptimizer } from "./aggregation.ts";
export { ProtocolError, shardMap, validateRunMessage } from "./run_protocol.ts";
export type { ContributionMsg, RunMessage, UpdateMsg, ViewMsg } from "./run_protocol.ts";
export { aggregatorStateSource, trainerBehavior } from "./trainer.ts";
export type { StartStateSource } from "./trainer.ts";
export { aggregatorBehavior, MemoryKeeperSlot } from "./aggregator.ts";
export type { KeeperSlot } from "./aggregator.ts";
export { trackerBehavior } from "./tracker.ts";
