/**
 * Checkpoints of a training run: the safetensors format and the Hugging Face
 * GPT-2 layout of the model file, the atomic durable store of committed
 * rounds (`runs/<name>/rounds/<round>/{model,state}.safetensors` +
 * `manifest.json`, `latest`, retention, verified loading with fallback), the
 * checkpoint keeper actor with replicated commits and catch-up, chunked and
 * resumable transfer of a round to joiners (the run's `StartStateSource`),
 * and whole-run resume.
 *
 * @example Commit a round and resume from it
 * ```ts
 * import { CheckpointStore, resumeRun } from "./mod.ts";
 * import { buildLayout } from "../kernels/layout.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const config = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };
 * const n = buildLayout(config).totalLength;
 * const params = new Float32Array(n).map((_, i) => Math.sin(i));
 * await new CheckpointStore(dir).commit({ run: "r", round: 2, config, params,
 *   momentum: new Float32Array(n) });
 * const resumed = await resumeRun(dir);
 * assert.equal(resumed.round, 2);
 * assert.deepEqual(resumed.params, params);
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */
export * from "./safetensors.ts";
export * from "./gpt2_safetensors.ts";
export * from "./store.ts";
export * from "./transfer.ts";
export * from "./keeper.ts";
export * from "./resume.ts";
