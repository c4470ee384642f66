/**
 * The training engine, apart from everything else (it imports only itself):
 * GPT-2 style byte-level models whose forward and backward passes and AdamW
 * updates run as WGSL kernels on WebGPU.
 *
 * - {@linkcode acquireGpu}: a WebGPU device, with errors that say what to install.
 * - {@linkcode getConfig}, {@linkcode resolveShape}: named model configs and
 *   any shape derived from them, checked.
 * - {@linkcode createModel}: a model on the device with `step`, `evaluate`,
 *   `getParams` / `setParams`; {@linkcode pipelinedSteps} keeps steps in flight.
 * - {@linkcode loadCorpus}, {@linkcode batchSampler}: the training text and
 *   seeded, resumable batches from it.
 * - {@linkcode evaluate}: the mean next-byte cross-entropy of a model on bytes.
 * - {@linkcode generate}: text from a model, byte by byte, seeded.
 * - {@linkcode MatmulTuner}: the fastest matmul variant per shape, measured on
 *   the device (`matmulTuner` of `createModel`); {@linkcode loadTuner} and
 *   {@linkcode saveTuner} keep its table in a file.
 *
 * @example Train the tiny model a few steps on the bundled corpus and evaluate it
 * ```ts
 * import { acquireGpu, batchSampler, createModel, evaluate, getConfig, loadCorpus } from "./mod.ts";
 * import assert from "node:assert/strict";
 * const config = getConfig("tiny").model;
 * const corpus = await loadCorpus();
 * const gpu = await acquireGpu();
 * const model = await createModel(gpu, config, { seed: 1, batch: 4 });
 * const sampler = batchSampler(corpus.train, { batch: 4, blockSize: config.blockSize, seed: 1 });
 * for (let i = 0; i < 3; i++) {
 *   const { inputs, targets } = sampler.next();
 *   await model.step(inputs, targets, { lr: 3e-3 });
 * }
 * const { loss } = await evaluate(model, corpus.val, { maxWindows: 8 });
 * assert.ok(loss < Math.log(256) + 0.5, `loss ${loss}`);
 * model.dispose();
 * gpu.destroy();
 * ```
 *
 * @module
 */
export * from "./device.ts";
export * from "./config.ts";
export * from "./shape.ts";
export * from "./model.ts";
export * from "./data.ts";
export * from "./corpus.ts";
export * from "./evaluate.ts";
export { initParams, normalRng } from "./init.ts";
export type { AttentionKind, ModelOptions, Precision } from "./model_options.ts";
export { defaultKeyPass } from "./flash_attention.ts";
export type { KeyPass } from "./flash_attention.ts";
export type { Tokens } from "./tokens.ts";
export { pipelinedSteps } from "./pipeline.ts";
export type { StepInput } from "./pipeline.ts";
export {
  bytesToText,
  DEFAULT_TEXT_SAMPLE,
  generate,
  Sampler,
  sampleText,
  textSample,
} from "./sample.ts";
export type { GenerateOptions, Generation, SamplerOptions, TextSampleSpec } from "./sample.ts";
export { DEFAULT_EXCHANGE, encodedSize, exchangeName, parseExchange } from "./exchange_format.ts";
export { adapterKey, attentionKey, MatmulTuner, tuneCandidates, tuneKey } from "./matmul_tune.ts";
export type { TuneResult, TunerOptions, TunerTable, TuneShape } from "./matmul_tune.ts";
export { defaultTuningFile, loadTuner, saveTuner } from "./matmul_tune_file.ts";
export type { ExchangeFormat } from "./exchange_format.ts";
