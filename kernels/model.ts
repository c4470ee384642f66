/**
 * The GPT-2 model on WebGPU: parameter init, forward, backward, gradient
 * norm and AdamW, after karpathy/llm.c's train_gpt2.c.
 *
 * All parameters live in ONE flat f32 GPU buffer ({@linkcode GptModel.paramBuffer})
 * in the layout of {@linkcode buildLayout}; gradients and the AdamW moments
 * use the same layout in three more buffers. Every kernel is prepared once as
 * a `Dispatch`; a training step encodes zeroing, forward, backward, grad-norm
 * and AdamW into one command buffer, submits it once and reads back 8 bytes
 * (the mean loss and the gradient norm) through a reused staging buffer.
 *
 * The pieces, in llm.c's order: parameter init in kernels/init.ts, the
 * forward pass (one function per layer) in kernels/model_forward.ts, the
 * backward pass in kernels/model_backward.ts, gradient norm and AdamW in
 * kernels/model_optimizer.ts; the pipelined training loop over
 * {@linkcode GptModel.step} is kernels/pipeline.ts.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { type GptConfig, validateConfig } from "./config.ts";
import { buildLayout, type ParamLayout } from "./layout.ts";
import { meanLoss } from "./crossentropy.ts";
import { initParams } from "./init.ts";
import {
  type AdamwOptions,
  type AttentionKind,
  type ModelOptions,
  type Precision,
  resolveModelOptions,
} from "./model_options.ts";
import { buildForward, type MatmulChoice, modelGraph, ref } from "./model_forward.ts";
import type { TuneShape } from "./matmul_tune.ts";
import { buildBackward } from "./model_backward.ts";
import { buildOptimizer } from "./model_optimizer.ts";
import { stageTokens, type Tokens } from "./tokens.ts";
import { type ModelPlan, planModel } from "./limits.ts";
import { defaultKeyPass, type KeyPass } from "./flash_attention.ts";

/** The attention shape of one micro-batch of `config`, as the tuner keys it. */
function attentionShape(config: GptConfig, batch: number) {
  return { b: batch, t: config.blockSize, c: config.nEmbd, nh: config.nHead };
}

/** Options of one training step. */
export interface StepOptions {
  /** Learning rate of this step. */
  lr: number;
}

/** One dispatch of a training step, from {@linkcode GptModel.profileDispatches}. */
export interface ProfiledDispatch {
  /** The part of the step it belongs to. */
  part: "forward" | "loss" | "backward" | "optimizer";
  /** The dispatch; its label names the kernel and its shape. */
  dispatch: Dispatch;
}

/** A GPT-2 model on the GPU with its optimizer state. Create it with {@linkcode createModel}. */
export class GptModel {
  /** The model shape. */
  readonly config: GptConfig;
  /** The flat parameter layout. */
  readonly layout: ParamLayout;
  /** Sequences per micro-batch (and per eval call). */
  readonly batch: number;
  /** Micro-batches per step: a step takes `gradAccum × batch` sequences. */
  readonly gradAccum: number;
  /** How the shape fits the device's buffer limits (chunks of the whole-vector kernels). */
  readonly plan: ModelPlan;
  /** Number of real parameters (padding excluded). */
  readonly paramCount: number;
  /**
   * Length in floats of the flat vector {@linkcode getParams} returns and
   * {@linkcode setParams} takes: the layout's padded length (padding included, always 0).
   */
  readonly paramLength: number;
  /** The attention kernels in use. */
  readonly attention: AttentionKind;
  /** How flash attention's backward sums dk and dv (unused with blocked attention). */
  readonly flashKeyPass: KeyPass;
  /** How the matmuls read their inputs: f32, or f16 copies (mixed precision). */
  readonly precision: Precision;

  /**
   * The kernel families in use, for people reading a log: e.g. "flash
   * attention (split key pass), f16 matmul inputs" or "blocked attention, f32
   * matmul inputs".
   */
  describeKernels(): string {
    const attention = this.attention === "flash"
      ? `flash attention (${this.flashKeyPass} key pass)`
      : "blocked attention";
    return `${attention}, ${this.precision} matmul inputs`;
  }
  /** The gradient norm (before clipping) of the last step. */
  lastGradNorm = NaN;

  readonly #gpu: Gpu;
  readonly #opts: AdamwOptions;
  readonly #buffers: GPUBuffer[] = [];
  #params!: GPUBuffer;
  #grads!: GPUBuffer;
  #m!: GPUBuffer;
  #v!: GPUBuffer;
  #tokens!: GPUBuffer;
  #targets!: GPUBuffer;
  /** A step's tokens and targets, all micro-batches (only with gradAccum > 1). */
  #stepTokens?: GPUBuffer;
  #stepTargets?: GPUBuffer;
  /** Each micro-batch's mean loss (only with gradAccum > 1). */
  #microLosses?: GPUBuffer;
  #dres!: GPUBuffer;
  #losses!: GPUBuffer;
  #scalars!: GPUBuffer; // [0] mean loss, [64] grad norm (256-byte apart so each can be bound)
  #hyper!: GPUBuffer;
  /** Free 8-byte loss/norm readback buffers: one per step in flight, reused. */
  #stagingPool: GPUBuffer[] = [];
  #evalStaging!: GPUBuffer;
  #forward: Dispatch[] = [];
  /** The forward pass up to the logits (the cross-entropy left out), for sampling. */
  #logitsPart: Dispatch[] = [];
  #logits!: GPUBuffer;
  /** Readback of {@linkcode forwardLogits}, made on first use and grown as needed. */
  #logitsStaging?: GPUBuffer;
  #lossPart: Dispatch[] = [];
  #backward: Dispatch[] = [];
  #optimizer: Dispatch[] = [];
  #tokenWords: Uint32Array;
  #targetWords: Uint32Array;
  #hyperWords = new Float32Array(8);
  #t = 0;
  /** An eval or gradient readback is in flight (they share staging buffers). */
  #busy = false;
  /** Training steps submitted whose loss has not been read back yet. */
  #inFlight = 0;
  #disposed = false;

  /**
   * Use {@linkcode createModel}. With `record`, every matmul's shape is pushed
   * there as the model is built (with the default variants).
   */
  constructor(gpu: Gpu, config: GptConfig, options: ModelOptions = {}, record?: TuneShape[]) {
    validateConfig(config);
    const { batch, attention, flashKeyPass, gradAccum, limits, optimizer, precision } =
      resolveModelOptions(gpu, options);
    this.attention = attention;
    this.flashKeyPass = flashKeyPass ??
      options.matmulTuner?.keyPassFor(gpu, attentionShape(config, batch)) ??
      defaultKeyPass(config.nEmbd / config.nHead);
    this.precision = precision;
    // Before any allocation: a shape that cannot fit is refused with what would fit.
    this.plan = planModel(
      config,
      { batch, gradAccum, attentionScratch: attention === "blocked", precision },
      limits,
    );
    this.#gpu = gpu;
    this.config = config;
    this.layout = buildLayout(config);
    this.batch = batch;
    this.gradAccum = gradAccum;
    this.paramCount = this.layout.paramCount;
    this.paramLength = this.layout.totalLength;
    this.#opts = optimizer;
    this.#tokenWords = new Uint32Array(gradAccum * batch * config.blockSize);
    this.#targetWords = new Uint32Array(gradAccum * batch * config.blockSize);
    const tuner = options.matmulTuner;
    let choice: MatmulChoice = options.matmulVariant;
    if (record) {
      choice = (shape) => {
        record.push(shape);
        return undefined;
      };
    } else if (choice === undefined && tuner) {
      choice = (shape) => tuner.variantFor(gpu, shape);
    }
    this.#build(choice);
  }

  /** The GPU buffer of the flat parameters (for the distributed run's kernels). */
  get paramBuffer(): GPUBuffer {
    return this.#params;
  }

  /** The GPU buffer of the flat gradients of the last step. */
  get gradBuffer(): GPUBuffer {
    return this.#grads;
  }

  /** AdamW steps taken since creation or {@linkcode resetOptimizer}. */
  get optimizerStep(): number {
    return this.#t;
  }

  #buf(length: number, label: string): GPUBuffer {
    const b = this.#gpu.storage(length, label);
    this.#buffers.push(b);
    return b;
  }

  #build(variant: MatmulChoice): void {
    const gpu = this.#gpu;
    const { blockSize: T } = this.config;
    const N = this.batch * T;
    const n = this.layout.totalLength;
    this.#params = this.#buf(n, "params");
    this.#grads = this.#buf(n, "grads");
    this.#m = this.#buf(n, "adam_m");
    this.#v = this.#buf(n, "adam_v");
    this.#tokens = this.#buf(N, "tokens");
    this.#targets = this.#buf(N, "targets");
    if (this.gradAccum > 1) {
      this.#stepTokens = this.#buf(this.gradAccum * N, "step_tokens");
      this.#stepTargets = this.#buf(this.gradAccum * N, "step_targets");
      this.#microLosses = this.#buf(this.gradAccum, "micro_losses");
    }
    this.#losses = this.#buf(N, "losses");
    this.#scalars = this.#buf(128, "scalars");
    this.#hyper = this.#buf(8, "hyper");
    const lossRef: TensorRef = { buffer: this.#scalars, offset: 0, length: 1 };
    const normRef: TensorRef = { buffer: this.#scalars, offset: 256, length: 1 };
    this.#evalStaging = gpu.device.createBuffer({
      label: "eval_staging",
      size: Math.max(16, N * 4),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.#buffers.push(this.#evalStaging);
    const graph = modelGraph({
      gpu,
      config: this.config,
      layout: this.layout,
      batch: this.batch,
      flash: this.attention === "flash",
      keyPass: this.flashKeyPass,
      half: this.precision === "f16",
      buf: (length, label) => this.#buf(length, label),
      params: this.#params,
      grads: this.#grads,
    }, variant);
    const forward = buildForward(graph, {
      tokens: this.#tokens,
      targets: this.#targets,
      losses: this.#losses,
      lossScale: this.gradAccum > 1 ? 1 / (N * this.gradAccum) : undefined,
    });
    this.#forward = forward.dispatches;
    this.#logitsPart = forward.dispatches.slice(0, forward.logitsDispatches);
    this.#logits = forward.logits;
    this.#lossPart = [meanLoss(gpu, { losses: ref(this.#losses, N), out: lossRef }, { rows: N })];
    // Grads and dres are cleared before the pass; the kernels accumulate.
    const backward = buildBackward(graph, forward, this.#tokens);
    this.#dres = backward.dres;
    this.#backward = backward.dispatches;
    this.#optimizer = buildOptimizer(gpu, {
      params: ref(this.#params, n),
      grads: ref(this.#grads, n),
      m: ref(this.#m, n),
      v: ref(this.#v, n),
      norm: normRef,
      hyper: ref(this.#hyper, 8),
    }, { layout: this.layout, weightDecay: this.#opts.weightDecay, chunk: this.plan.chunk });
  }

  #check(): void {
    if (this.#disposed) throw new Error("Cannot use model: it was disposed");
    if (this.#busy) throw new Error("Cannot use model: another step or eval is in flight");
  }

  /**
   * Copies [rows, T] tokens into the reused u32 arrays (rows <= batch, or for a
   * whole step rows <= gradAccum × batch; the rest 0) and on to the GPU.
   */
  #stage(inputs: Tokens, targets: Tokens | undefined, what: string, whole = false): number {
    const T = this.config.blockSize;
    const most = whole ? this.batch * this.gradAccum : this.batch;
    const words = { inputs: this.#tokenWords, targets: this.#targetWords };
    const rows = stageTokens(inputs, targets, words, { T, V: this.config.vocabSize, most, what });
    // Micro-batches reach the GPU as one upload and are copied into place by the step.
    const staged = whole && this.#stepTokens !== undefined;
    const tw = this.#tokenWords.subarray(0, most * T);
    const gw = this.#targetWords.subarray(0, most * T);
    this.#gpu.write(staged ? this.#stepTokens! : this.#tokens, tw);
    this.#gpu.write(staged ? this.#stepTargets! : this.#targets, gw);
    return rows;
  }

  #encode(parts: Dispatch[][], clearGrads: boolean): GPUCommandEncoder {
    const enc = this.#gpu.device.createCommandEncoder({ label: "gpt_step" });
    if (clearGrads) {
      enc.clearBuffer(this.#grads);
      enc.clearBuffer(this.#dres);
    }
    const pass = enc.beginComputePass({ label: "gpt" });
    for (const list of parts) for (const d of list) d.encode(pass);
    pass.end();
    return enc;
  }

  /**
   * A training step's commands: zeroed gradients, then per micro-batch its
   * tokens copied into place, the residual gradient zeroed, forward, loss and
   * backward (the gradient kernels add into the gradients), its loss kept;
   * then, with `optimizer`, the gradient norm and AdamW once.
   */
  #encodeStep(optimizer: boolean): GPUCommandEncoder {
    const tail = optimizer ? [this.#optimizer] : [];
    const parts = [this.#forward, this.#lossPart, this.#backward];
    if (this.gradAccum === 1) return this.#encode([...parts, ...tail], true);
    const enc = this.#gpu.device.createCommandEncoder({ label: "gpt_step" });
    const bytes = this.batch * this.config.blockSize * 4;
    enc.clearBuffer(this.#grads);
    for (let m = 0; m < this.gradAccum; m++) {
      enc.copyBufferToBuffer(this.#stepTokens!, m * bytes, this.#tokens, 0, bytes);
      enc.copyBufferToBuffer(this.#stepTargets!, m * bytes, this.#targets, 0, bytes);
      enc.clearBuffer(this.#dres);
      const pass = enc.beginComputePass({ label: `gpt micro-batch ${m}` });
      for (const list of parts) for (const d of list) d.encode(pass);
      pass.end();
      enc.copyBufferToBuffer(this.#scalars, 0, this.#microLosses!, m * 4, 4);
    }
    if (optimizer) {
      const pass = enc.beginComputePass({ label: "gpt optimizer" });
      for (const d of this.#optimizer) d.encode(pass);
      pass.end();
    }
    return enc;
  }

  /**
   * Submits `enc` with a copy of the loss and gradient norm into a staging
   * buffer of its own, so that several steps can be in flight, and reads them
   * back once the queue reaches them.
   */
  async #readScalars(enc: GPUCommandEncoder): Promise<[number, number]> {
    // The loss, or each micro-batch's, then the gradient norm.
    const losses = this.gradAccum;
    let staging = this.#stagingPool.pop();
    if (!staging) {
      staging = this.#gpu.device.createBuffer({
        label: "loss_staging",
        size: 4 * (losses + 1),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      this.#buffers.push(staging);
    }
    if (this.#microLosses) enc.copyBufferToBuffer(this.#microLosses, 0, staging, 0, 4 * losses);
    else enc.copyBufferToBuffer(this.#scalars, 0, staging, 0, 4);
    enc.copyBufferToBuffer(this.#scalars, 256, staging, 4 * losses, 4);
    this.#gpu.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const f = new Float32Array(staging.getMappedRange(0, 4 * (losses + 1)));
    // Micro-batches hold equally many positions: the step's loss is the mean of theirs.
    let loss = f[0];
    for (let m = 1; m < losses; m++) loss += f[m];
    const out: [number, number] = [losses === 1 ? f[0] : loss / losses, f[losses]];
    staging.unmap();
    this.#stagingPool.push(staging);
    return out;
  }

  /**
   * One training step on a full batch (gradAccum × batch rows, run as gradAccum
   * micro-batches of batch rows): forward, backward, gradient clipping and
   * AdamW, in one submit. Resolves to the mean loss (nats/token) before the update.
   *
   * The step is queued when the call returns (its batch and learning rate are
   * copied), so a training loop may call `step` again before awaiting the
   * previous loss: the device then starts the next step while this one's loss
   * travels back, which hides the ~10 ms readback floor of CPU adapters (see
   * {@linkcode pipelinedSteps}). Steps run in call order; reads and writes of
   * the parameters queue behind them.
   *
   * @example
   * ```ts ignore
   * const loss = await model.step(batch.inputs, batch.targets, { lr: 3e-3 });
   * ```
   */
  async step(inputs: Tokens, targets: Tokens, options: StepOptions): Promise<number> {
    this.#check();
    const { lr } = options;
    if (!Number.isFinite(lr) || lr < 0) throw new RangeError(`Invalid learning rate: ${lr}`);
    const rows = this.#stage(inputs, targets, "step", true);
    if (rows !== this.batch * this.gradAccum) {
      throw new RangeError(
        `Invalid step inputs: ${rows} rows, ${this.#stepRows()}`,
      );
    }
    this.#t++;
    const h = this.#hyperWords;
    h[0] = lr;
    h[1] = this.#opts.beta1;
    h[2] = this.#opts.beta2;
    h[3] = this.#opts.eps;
    h[4] = this.#t;
    h[5] = this.#opts.maxGradNorm;
    this.#gpu.write(this.#hyper, h);
    this.#inFlight++;
    try {
      const [loss, norm] = await this.#readScalars(this.#encodeStep(true));
      this.lastGradNorm = norm;
      return loss;
    } finally {
      this.#inFlight--;
    }
  }

  /**
   * One training step as {@linkcode step} encodes it, for profilers that time
   * its dispatches one by one (kernels/step_profile.ts): the buffers the step
   * clears first (`clearBuffer`, outside any pass) and every dispatch in step
   * order with the part of the step it belongs to. Encoding them replays a
   * step on the batch and hyper-parameters last staged, updating the
   * parameters and optimizer state like a step does.
   */
  profileDispatches(): { clears: GPUBuffer[]; dispatches: ProfiledDispatch[] } {
    const parts: [ProfiledDispatch["part"], Dispatch[]][] = [
      ["forward", this.#forward],
      ["loss", this.#lossPart],
      ["backward", this.#backward],
      ["optimizer", this.#optimizer],
    ];
    return {
      clears: [this.#grads, this.#dres],
      dispatches: parts.flatMap(([part, list]) => list.map((dispatch) => ({ part, dispatch }))),
    };
  }

  /** "the model's batch is 16" or "a step takes 8 rows (batch 4 × 2 micro-batches)". */
  #stepRows(): string {
    const { batch, gradAccum } = this;
    return gradAccum === 1
      ? `the model's batch is ${batch}`
      : `a step takes ${batch * gradAccum} rows (batch ${batch} × ${gradAccum} micro-batches)`;
  }

  /** Tokens one step trains on: gradAccum × batch × blockSize. */
  get tokensPerStep(): number {
    return this.gradAccum * this.batch * this.config.blockSize;
  }

  /** Training steps submitted and not yet read back. */
  get stepsInFlight(): number {
    return this.#inFlight;
  }

  /**
   * How many steps {@linkcode pipelinedSteps} keeps in flight by default: 2,
   * or 1 on the GL backend, whose `queue.submit` runs the work on the calling
   * thread, so a second step cannot start while the first one's loss travels
   * back (measured there: 99 ms a step with two in flight against 80 ms one
   * at a time).
   */
  get pipelineDepth(): number {
    return this.#gpu.adapter.backend.startsWith("gl") ? 1 : 2;
  }

  /**
   * Forward and backward without an update: the mean loss and the flat gradient
   * (the layout's padded length). For gradient checks and tests.
   */
  async computeGradients(
    inputs: Tokens,
    targets: Tokens,
  ): Promise<{ loss: number; grads: Float32Array }> {
    this.#check();
    const rows = this.#stage(inputs, targets, "gradient", true);
    if (rows !== this.batch * this.gradAccum) {
      throw new RangeError(
        `Invalid gradient inputs: ${rows} rows, ${this.#stepRows()}`,
      );
    }
    this.#busy = true;
    try {
      const [loss] = await this.#readScalars(this.#encodeStep(false));
      const grads = await this.#gpu.read(this.#grads, this.paramLength);
      return { loss, grads };
    } finally {
      this.#busy = false;
    }
  }

  /**
   * The cross-entropy (nats) of each of the first rows*T positions for [rows, T]
   * inputs, rows <= batch; forward only.
   */
  async evalLosses(inputs: Tokens, targets: Tokens): Promise<Float32Array> {
    this.#check();
    const rows = this.#stage(inputs, targets, "eval");
    const n = rows * this.config.blockSize;
    this.#busy = true;
    try {
      const enc = this.#encode([this.#forward], false);
      enc.copyBufferToBuffer(this.#losses, 0, this.#evalStaging, 0, n * 4);
      this.#gpu.device.queue.submit([enc.finish()]);
      await this.#evalStaging.mapAsync(GPUMapMode.READ, 0, n * 4);
      const out = new Float32Array(this.#evalStaging.getMappedRange(0, n * 4).slice(0));
      this.#evalStaging.unmap();
      return out;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Forward only, up to the logits: for [rows, T] inputs (rows <= batch), the
   * logits [V] of each position in `positions` (flat: row × T + t), one after
   * the other. Causal attention makes the logits at t depend on tokens 0..t of
   * the row alone, so a context shorter than T may be padded with anything.
   *
   * @example
   * ```ts ignore
   * const next = await model.forwardLogits(contextPaddedToT, [contextLength - 1]);
   * ```
   */
  async forwardLogits(inputs: Tokens, positions: readonly number[]): Promise<Float32Array> {
    this.#check();
    const rows = this.#stage(inputs, undefined, "logits");
    const V = this.config.vocabSize;
    const n = rows * this.config.blockSize;
    if (positions.length < 1 || positions.some((p) => !Number.isInteger(p) || p < 0 || p >= n)) {
      throw new RangeError(
        `Invalid logits positions: [${positions}] (expected 1 or more integers in [0, ${n}))`,
      );
    }
    const bytes = positions.length * V * 4;
    if (!this.#logitsStaging || this.#logitsStaging.size < bytes) {
      this.#logitsStaging?.destroy();
      this.#logitsStaging = this.#gpu.device.createBuffer({
        label: "logits_staging",
        size: bytes,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
    }
    const staging = this.#logitsStaging;
    this.#busy = true;
    try {
      const enc = this.#encode([this.#logitsPart], false);
      positions.forEach((p, i) => {
        enc.copyBufferToBuffer(this.#logits, p * V * 4, staging, i * V * 4, V * 4);
      });
      this.#gpu.device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ, 0, bytes);
      const out = new Float32Array(staging.getMappedRange(0, bytes).slice(0));
      staging.unmap();
      return out;
    } finally {
      this.#busy = false;
    }
  }

  /** The mean cross-entropy (nats/token) of [rows, T] inputs (rows <= batch); forward only. */
  async evalLoss(inputs: Tokens, targets: Tokens): Promise<number> {
    const losses = await this.evalLosses(inputs, targets);
    let s = 0;
    for (let i = 0; i < losses.length; i++) s += losses[i];
    return s / losses.length;
  }

  /** A copy of the flat parameters ({@linkcode paramLength} floats, padding included). */
  async getParams(): Promise<Float32Array> {
    this.#check();
    return await this.#gpu.read(this.#params, this.paramLength);
  }

  /** Overwrites the flat parameters ({@linkcode paramLength} floats); the optimizer state is kept. */
  setParams(params: Float32Array): void {
    this.#check();
    if (!(params instanceof Float32Array) || params.length !== this.paramLength) {
      throw new RangeError(
        `Invalid params: expected a Float32Array of ${this.paramLength} floats, got ${
          params?.length ?? params
        }`,
      );
    }
    this.#gpu.write(this.#params, params);
  }

  /** Zeroes the AdamW moments and step count (e.g. at an outer round, if wanted). */
  resetOptimizer(): void {
    this.#check();
    const enc = this.#gpu.device.createCommandEncoder();
    enc.clearBuffer(this.#m);
    enc.clearBuffer(this.#v);
    this.#gpu.device.queue.submit([enc.finish()]);
    this.#t = 0;
  }

  /** Releases the GPU buffers; the Gpu itself stays with its owner. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const b of this.#buffers) b.destroy();
    this.#buffers.length = 0;
    for (const d of [...this.#forward, ...this.#lossPart, ...this.#backward, ...this.#optimizer]) {
      d.release?.();
    }
    this.#logitsStaging?.destroy();
  }
}

/**
 * Creates a GPT-2 model on `gpu` with GPT-2 init from `options.seed`.
 *
 * @example One training step of the tiny model
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * import { getConfig } from "./config.ts";
 * import { createModel } from "./model.ts";
 * import assert from "node:assert/strict";
 * const config = getConfig("tiny").model;
 * const gpu = await acquireGpu();
 * const model = await createModel(gpu, config, { seed: 1, batch: 2 });
 * const inputs = Uint8Array.from({ length: 2 * config.blockSize }, (_, i) => i % 256);
 * const targets = inputs.map((t) => (t + 1) % 256);
 * const loss = await model.step(inputs, targets, { lr: 1e-3 });
 * assert.ok(Math.abs(loss - Math.log(256)) < 0.5, `loss ${loss}`); // about ln 256 at init
 * model.dispose();
 * gpu.destroy();
 * ```
 */
export async function createModel(
  gpu: Gpu,
  config: GptConfig,
  options: ModelOptions = {},
): Promise<GptModel> {
  const tuner = options.matmulTuner;
  if (tuner && options.matmulVariant === undefined) {
    // The shapes come from building the model once with the default variants (the same
    // code builds the real one, so no shape is missed); those new to the tuner are measured.
    const shapes: TuneShape[] = [];
    const probe = new GptModel(gpu, config, options, shapes);
    probe.dispose();
    await tuner.tune(gpu, shapes);
    if (probe.attention === "flash" && options.flashKeyPass === undefined) {
      await tuner.tuneAttention(gpu, attentionShape(config, probe.batch));
    }
  }
  gpu.device.pushErrorScope("validation");
  let model: GptModel | undefined;
  let failure: unknown;
  try {
    model = new GptModel(gpu, config, options);
    model.setParams(initParams(config, options.seed ?? 0));
  } catch (err) {
    failure = err;
  }
  const gpuError = await gpu.device.popErrorScope();
  if (failure !== undefined || gpuError) {
    model?.dispose();
    throw failure ??
      new Error(`Cannot create model: WebGPU validation failed: ${gpuError!.message}`);
  }
  return model!;
}
