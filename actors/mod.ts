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
export { runEmbedded } from "./embedded.ts";
export type { EmbeddedOptions, RunFault } from "./embedded.ts";
export { startRunHost } from "./host.ts";
export type { HostOptions, RunHost } from "./host.ts";
export { runNetworked } from "./networked.ts";
export type { NetworkedOptions } from "./networked.ts";
export { RunMonitor } from "./monitor.ts";
export type { RunEvent } from "./monitor.ts";
export { paramLength } from "./run_settings.ts";
export type { RunSettings } from "./run_settings.ts";
export type { SyncMode } from "./overlap.ts";
export { finalEvaluation, summarize } from "./run_summary.ts";
export type { FinalEvaluation, RunSummary } from "./run_summary.ts";
export { JoinedRounds } from "./joined_rounds.ts";
export type { JoinedSummary, TrainedEvent } from "./joined_rounds.ts";
export { RunHistory } from "./dashboard/history.ts";
export type { EvalPoint, HistoryOptions } from "./dashboard/history.ts";
export { CheckpointSlot, runStateSource } from "./run_checkpoint.ts";
export type { CheckpointOptions } from "./run_checkpoint.ts";
export { mountDashboard } from "./dashboard/serve.ts";
export { keeperBehavior } from "./keeper.ts";
export type { KeeperOptions } from "./keeper.ts";
export { commitCoordinatorBehavior } from "./keeper_commit.ts";
export { KeeperFeedSlot } from "./keeper_feed.ts";
export { fetchRound } from "./keeper_fetch.ts";
export { keeperStateSource } from "./keeper_source.ts";
export { aggregatorStates } from "./restore.ts";
export { Membership } from "./membership.ts";
export { ShardAggregator } from "./aggregation.ts";
export type { AggregatorState } from "./aggregation.ts";
export { applyUpdate, thetaHash } from "./int8_exchange.ts";
export {
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  DILOCO_PAPER_OUTER,
  OUTER_PRESETS,
  outerAt,
} from "./outer_optimizer.ts";
export type { OuterOptimizer } from "./outer_optimizer.ts";
export { ProtocolError, shardMap } from "./run_protocol.ts";
export type { ContributionMsg, RunMessage, RunNews, UpdateMsg, ViewMsg } from "./run_protocol.ts";
export { validateRunMessage } from "./run_protocol_validate.ts";
export { trainerBehavior } from "./trainer.ts";
export { aggregatorStateSource } from "./start_state.ts";
export type { StartStateSource } from "./start_state.ts";
export { aggregatorBehavior, MemoryKeeperSlot } from "./aggregator.ts";
export type { KeeperSlot } from "./aggregator.ts";
export { trackerBehavior } from "./tracker.ts";
export {
  DEFAULT_AGGREGATE,
  formatAggregate,
  parseAggregate,
  robustCombine,
} from "./robust_aggregate.ts";
export type { AggregateRule } from "./robust_aggregate.ts";
