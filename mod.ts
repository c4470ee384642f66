/**
 * Decentralized language-model training on Deno: DiLoCo-style local training
 * with WGSL kernels on WebGPU, and the run's roles (trainers, gradient
 * aggregators, checkpoint keepers, a membership tracker) as supervised actors
 * that talk msgpack over WebSockets.
 *
 * This module is the public entry point for embedding the system in another
 * Deno service.
 *
 * @module
 */
export * from "./kernels/device.ts";
export * from "./actors/runtime/mod.ts";
export { createModel, GptModel } from "./kernels/model.ts";
export { initParams } from "./kernels/init.ts";
export { pipelinedSteps } from "./kernels/pipeline.ts";
export type { StepOptions } from "./kernels/model.ts";
export type { Tokens } from "./kernels/tokens.ts";
export type { ModelOptions } from "./kernels/model_options.ts";
export type { StepInput } from "./kernels/pipeline.ts";
export { CONFIGS, DEFAULT_CONFIG, getConfig, validateConfig } from "./kernels/config.ts";
export type { GptConfig, NamedConfig } from "./kernels/config.ts";
export { BatchSampler, batchSampler, DataError, loadCorpus } from "./kernels/data.ts";
export type { Corpus, DataCursor, Shard } from "./kernels/data.ts";
export { evaluate } from "./kernels/evaluate.ts";
export { CheckpointMismatchError, loadGpt2, saveGpt2 } from "./checkpoint/gpt2_safetensors.ts";
export { SafetensorsError } from "./checkpoint/safetensors.ts";
export {
  CheckpointStore,
  CheckpointWriteError,
  CorruptCheckpointError,
  NothingToResumeError,
  resumeRun,
} from "./checkpoint/mod.ts";
export type { Manifest, ResumedRun, Retention, RoundState } from "./checkpoint/mod.ts";
export { keeperBehavior } from "./actors/keeper.ts";
export { commitCoordinatorBehavior } from "./actors/keeper_commit.ts";
export { KeeperFeedSlot } from "./actors/keeper_feed.ts";
export type { KeeperOptions } from "./actors/keeper.ts";
export { fetchRound } from "./actors/keeper_fetch.ts";
export { keeperStateSource } from "./actors/keeper_source.ts";
export { aggregatorStates } from "./actors/restore.ts";
export * from "./transport/mod.ts";
export { paramLength } from "./actors/run_settings.ts";
export type { RunSettings } from "./actors/run_settings.ts";
export type { SyncMode } from "./actors/overlap.ts";
export { RunMonitor } from "./actors/monitor.ts";
export type { RunEvent } from "./actors/monitor.ts";
export { startRunHost } from "./actors/host.ts";
export type { HostOptions, RunHost } from "./actors/host.ts";
export { runEmbedded } from "./actors/embedded.ts";
export type { EmbeddedOptions } from "./actors/embedded.ts";
export { summarize } from "./actors/run_summary.ts";
export type { RunSummary } from "./actors/run_summary.ts";
export { runNetworked } from "./actors/networked.ts";
export type { NetworkedOptions } from "./actors/networked.ts";
export { Membership } from "./actors/membership.ts";
export { ShardAggregator } from "./actors/aggregation.ts";
export { applyUpdate, thetaHash } from "./actors/int8_exchange.ts";
export { DEFAULT_OUTER, DILOCO_PAPER_OUTER, OUTER_PRESETS } from "./actors/outer_optimizer.ts";
export type { AggregatorState } from "./actors/aggregation.ts";
export type { OuterOptimizer } from "./actors/outer_optimizer.ts";
export { ProtocolError, shardMap } from "./actors/run_protocol.ts";
export { validateRunMessage } from "./actors/run_protocol_validate.ts";
export type { ContributionMsg, RunMessage, UpdateMsg, ViewMsg } from "./actors/run_protocol.ts";
export { trainerBehavior } from "./actors/trainer.ts";
export { aggregatorStateSource } from "./actors/start_state.ts";
export type { StartStateSource } from "./actors/start_state.ts";
export { aggregatorBehavior, MemoryKeeperSlot } from "./actors/aggregator.ts";
export type { KeeperSlot } from "./actors/aggregator.ts";
export { trackerBehavior } from "./actors/tracker.ts";
export { resumeRunDir } from "./checkpoint/resume.ts";
export { CheckpointSlot, runStateSource } from "./actors/run_checkpoint.ts";
export type { CheckpointOptions } from "./actors/run_checkpoint.ts";
export { DEFAULT_INNER_STEPS, outerAt } from "./actors/outer_optimizer.ts";
