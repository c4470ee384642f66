/**
 * Checkpoints of a training run, as a storage library: the safetensors
 * format and the Hugging Face GPT-2 layout of the model file, the atomic
 * durable store of committed rounds
 * (`runs/<name>/rounds/<round>/{model,state}.safetensors` + `manifest.json`,
 * `latest`, retention, verified loading with fallback), the low-priority
 * threads that write and serve rounds, and whole-run resume from disk.
 *
 * It builds on kernels/ (the model's shape and parameter layout) only. The
 * keeper role that feeds this store from the aggregators, replicates commits
 * and hands rounds to joiners is an actor like its fellow roles, so it lives
 * in actors/ (keeper.ts and its keeper_*.ts modules).
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
export * from "./resume.ts";
