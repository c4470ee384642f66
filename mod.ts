/**
 * Decentralized language-model training on Deno: DiLoCo-style local training
 * with WGSL kernels on WebGPU, and the run's roles (trainers, gradient
 * aggregators, checkpoint keepers, a membership tracker) as supervised actors
 * that talk msgpack over WebSockets.
 *
 * This is the short face for embedding a run in another Deno service; the
 * rest is in the folders' modules: `kernels/mod.ts` (the engine),
 * `actors/mod.ts` (the roles and runs, with their option and event types),
 * `actors/runtime/mod.ts` (the actor library), `transport/mod.ts` (the wire),
 * `checkpoint/mod.ts` (checkpoints and resume).
 *
 * @example Two rounds of the tiny model on two trainers in this process
 * ```ts
 * import { runEmbedded } from "./mod.ts";
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
 *     if (e.event === "round") console.log(`round ${e.round}: loss ${e.loss.toFixed(3)}`);
 *   },
 * });
 * assert.ok(summary.final_eval_loss < summary.first_loss);
 * ```
 *
 * @module
 */
export { runEmbedded } from "./actors/embedded.ts";
export { runNetworked } from "./actors/networked.ts";
export { startRunHost } from "./actors/host.ts";
export type { RunEvent } from "./actors/monitor.ts";
export { acquireGpu } from "./kernels/device.ts";
export { getConfig } from "./kernels/config.ts";
export { createModel } from "./kernels/model.ts";
export { loadGpt2 } from "./checkpoint/gpt2_safetensors.ts";
export { resumeRun } from "./checkpoint/resume.ts";
