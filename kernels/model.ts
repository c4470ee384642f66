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
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { type GptConfig, validateConfig } from "./config.ts";
import { buildLayout, type ParamLayout, type ParamView, viewOf } from "./layout.ts";
import { matmul, type MatmulBuffers, type MatmulShape } from "./matmul.ts";
import { embeddingBackward, embeddingForward } from "./embedding.ts";
import { layernormBackward, layernormForward } from "./layernorm.ts";
import { attentionBackward, attentionForward } from "./attention.ts";
import { flashAttentionBackward, flashAttentionForward } from "./flash_attention.ts";
import { crossEntropyForwardBackward, meanLoss } from "./crossentropy.ts";
import { adamwChunks, gradNorm } from "./adamw.ts";
import { type ModelPlan, planModel } from "./limits.ts";

/** Options for {@linkcode createModel}. */
export interface ModelOptions {
  /** Seed of the parameter init (default 0). */
  seed?: number;
  /** Sequences per step (default 1). Every step and eval call uses this batch size. */
  batch?: number;
  /** AdamW decoupled weight decay on 2-D tensors (default 0.1). */
  weightDecay?: number;
  /** AdamW beta1 (default 0.9). */
  beta1?: number;
  /** AdamW beta2 (default 0.95). */
  beta2?: number;
  /** AdamW epsilon (default 1e-8). */
  eps?: number;
  /** Clip the global gradient norm to this (default 1; 0 disables clipping). */
  maxGradNorm?: number;
  /** Matmul variant (default: chosen by matmul.ts from the adapter). */
  matmulVariant?: string;
  /**
   * Attention kernels: "blocked" (kernels/attention.ts, register-blocked for CPU adapters, saves
   * [B,NH,T,T] probabilities) or "flash" (kernels/flash_attention.ts, workgroup tiles for GPUs,
   * saves [B,NH,T] log-sum-exps). Default: "blocked" on CPU adapters, "flash" otherwise.
   */
  attention?: AttentionKind;
  /**
   * Micro-batches per step (default 1): a step takes `gradAccum × batch`
   * sequences, runs forward and backward on `batch` of them at a time, sums
   * their gradients on the GPU (scaled so that the sum is the gradient of the
   * mean loss over all of them) and makes one clip and AdamW update, as one
   * step on the whole batch would.
   */
  gradAccum?: number;
  /**
   * Bind at most this many bytes at once (default: the Gpu's
   * `limits.maxBindingBytes`; at most that). Whole-vector kernels are
   * dispatched in chunks of this size; tests lower it to exercise them.
   */
  maxBindingBytes?: number;
}

/** The attention kernel families a model can use (see {@linkcode ModelOptions.attention}). */
export type AttentionKind = "blocked" | "flash";

/** Options of one training step. */
export interface StepOptions {
  /** Learning rate of this step. */
  lr: number;
}

/** Token input: [B, T] row-major bytes or u32 token ids. */
export type Tokens = Uint8Array | Uint32Array;

/** A standard normal generator from a seed (xoshiro128** + Box-Muller), deterministic across runs. */
export function normalRng(seed: number): () => number {
  // splitmix32 expands the seed into the four state words.
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(), b = split(), c = split(), d = split();
  const next = () => {
    const r = Math.imul(((Math.imul(b, 5) << 7) | (Math.imul(b, 5) >>> 25)) >>> 0, 9) >>> 0;
    const t = (b << 9) >>> 0;
    c = (c ^ a) >>> 0;
    d = (d ^ b) >>> 0;
    b = (b ^ c) >>> 0;
    a = (a ^ d) >>> 0;
    c = (c ^ t) >>> 0;
    d = ((d << 11) | (d >>> 21)) >>> 0;
    return r;
  };
  let spare: number | undefined;
  return () => {
    if (spare !== undefined) {
      const v = spare;
      spare = undefined;
      return v;
    }
    const u1 = (next() + 1) / 4294967297; // (0, 1)
    const u2 = next() / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  };
}

/**
 * GPT-2 init in the flat layout: weights and embeddings ~ N(0, 0.02), the two
 * residual projections (attn.c_proj, mlp.c_proj) ~ N(0, 0.02/sqrt(2L)),
 * biases 0, LayerNorm weights 1. Padding is 0.
 *
 * @example
 * ```ts
 * import { initParams } from "./model.ts";
 * const p = initParams({ nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 }, 1);
 * console.log(p.length % 64); // 0
 * ```
 */
export function initParams(config: GptConfig, seed = 0): Float32Array {
  const layout = buildLayout(config);
  const params = new Float32Array(layout.totalLength);
  const rand = normalRng(seed);
  const residualStd = 0.02 / Math.sqrt(2 * config.nLayer);
  for (const v of layout.views) {
    const x = viewOf(params, v);
    if (
      v.name.endsWith("ln_1.weight") || v.name.endsWith("ln_2.weight") || v.name === "ln_f.weight"
    ) {
      x.fill(1);
    } else if (v.shape.length >= 2) {
      const std = v.name.endsWith("c_proj.weight") ? residualStd : 0.02;
      for (let i = 0; i < x.length; i++) x[i] = rand() * std;
    }
  }
  return params;
}

/** One dispatch of a training step, from {@linkcode GptModel.profileDispatches}. */
export interface ProfiledDispatch {
  /** The part of the step it belongs to. */
  part: "forward" | "loss" | "backward" | "optimizer";
  /** The dispatch; its label names the kernel and its shape. */
  dispatch: Dispatch;
}

/** Per-layer activations kept for the backward pass. */
interface LayerActs {
  ln1: GPUBuffer;
  ln1Mean: GPUBuffer;
  ln1Rstd: GPUBuffer;
  qkv: GPUBuffer;
  atty: GPUBuffer;
  /** The saved softmax: probabilities [B,NH,T,T] (blocked) or log-sum-exps [B,NH,T] (flash). */
  att: GPUBuffer;
  residual2: GPUBuffer;
  ln2: GPUBuffer;
  ln2Mean: GPUBuffer;
  ln2Rstd: GPUBuffer;
  fch: GPUBuffer;
  fchGelu: GPUBuffer;
  residual3: GPUBuffer;
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
  /** The gradient norm (before clipping) of the last step. */
  lastGradNorm = NaN;

  readonly #gpu: Gpu;
  readonly #opts: Required<
    Omit<
      ModelOptions,
      "matmulVariant" | "seed" | "batch" | "attention" | "gradAccum" | "maxBindingBytes"
    >
  >;
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

  /** Use {@linkcode createModel}. */
  constructor(gpu: Gpu, config: GptConfig, options: ModelOptions = {}) {
    validateConfig(config);
    const batch = options.batch ?? 1;
    if (!Number.isInteger(batch) || batch < 1) {
      throw new RangeError(`Invalid batch: ${batch} (expected a positive integer)`);
    }
    const attention = options.attention ?? (gpu.isCpu ? "blocked" : "flash");
    if (attention !== "blocked" && attention !== "flash") {
      throw new RangeError(
        `Invalid attention: ${String(attention)} (expected "blocked" or "flash")`,
      );
    }
    this.attention = attention;
    const gradAccum = options.gradAccum ?? 1;
    if (!Number.isInteger(gradAccum) || gradAccum < 1 || gradAccum > 65536) {
      throw new RangeError(`Invalid gradAccum: ${gradAccum} (expected an integer in [1, 65536])`);
    }
    const limits = { ...gpu.limits };
    if (options.maxBindingBytes !== undefined) {
      const max = options.maxBindingBytes;
      if (!Number.isSafeInteger(max) || max < 1 || max > limits.maxBindingBytes) {
        throw new RangeError(
          `Invalid maxBindingBytes: ${max} (expected an integer in [1, ${limits.maxBindingBytes}])`,
        );
      }
      limits.maxBindingBytes = max;
    }
    // Before any allocation: a shape that cannot fit is refused with what would fit.
    this.plan = planModel(
      config,
      { batch, gradAccum, attentionScratch: attention === "blocked" },
      limits,
    );
    this.#gpu = gpu;
    this.config = config;
    this.layout = buildLayout(config);
    this.batch = batch;
    this.gradAccum = gradAccum;
    this.paramCount = this.layout.paramCount;
    this.paramLength = this.layout.totalLength;
    this.#opts = {
      weightDecay: options.weightDecay ?? 0.1,
      beta1: options.beta1 ?? 0.9,
      beta2: options.beta2 ?? 0.95,
      eps: options.eps ?? 1e-8,
      maxGradNorm: options.maxGradNorm ?? 1,
    };
    this.#tokenWords = new Uint32Array(gradAccum * batch * config.blockSize);
    this.#targetWords = new Uint32Array(gradAccum * batch * config.blockSize);
    this.#build(options.matmulVariant);
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

  #build(variant: string | undefined): void {
    const gpu = this.#gpu;
    const { nLayer: L, nHead: NH, nEmbd: C, blockSize: T, vocabSize: V } = this.config;
    const B = this.batch;
    const N = B * T;
    const n = this.layout.totalLength;
    const ref = (buffer: GPUBuffer, length: number): TensorRef => ({ buffer, offset: 0, length });
    const flash = this.attention === "flash";
    // Flash attention keeps one float per (batch, head, row) instead of a T×T matrix.
    const nAtt = flash ? B * NH * T : B * NH * T * T;
    const attShape = { b: B, t: T, c: C, nh: NH };
    this.#params = this.#buf(n, "params");
    this.#grads = this.#buf(n, "grads");
    this.#m = this.#buf(n, "adam_m");
    this.#v = this.#buf(n, "adam_v");
    const P = (v: ParamView): TensorRef => ({
      buffer: this.#params,
      offset: v.offset * 4,
      length: v.length,
    });
    const G = (v: ParamView): TensorRef => ({
      buffer: this.#grads,
      offset: v.offset * 4,
      length: v.length,
    });
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
    const mm = (
      bufs: MatmulBuffers,
      shape: Omit<MatmulShape, "variant">,
    ) => matmul(gpu, bufs, { ...shape, variant });

    // ---- forward
    const encoded = this.#buf(N * C, "encoded");
    const fwd: Dispatch[] = [];
    fwd.push(embeddingForward(gpu, {
      tokens: ref(this.#tokens, N),
      wte: P(this.layout.wte),
      wpe: P(this.layout.wpe),
      out: ref(encoded, N * C),
    }, { b: B, t: T, c: C }));
    const acts: LayerActs[] = [];
    let residual = encoded;
    for (let l = 0; l < L; l++) {
      const w = this.layout.blocks[l];
      const a: LayerActs = {
        ln1: this.#buf(N * C, `ln1_${l}`),
        ln1Mean: this.#buf(N, `ln1_mean_${l}`),
        ln1Rstd: this.#buf(N, `ln1_rstd_${l}`),
        qkv: this.#buf(N * 3 * C, `qkv_${l}`),
        atty: this.#buf(N * C, `atty_${l}`),
        att: this.#buf(nAtt, `att_${l}`),
        residual2: this.#buf(N * C, `residual2_${l}`),
        ln2: this.#buf(N * C, `ln2_${l}`),
        ln2Mean: this.#buf(N, `ln2_mean_${l}`),
        ln2Rstd: this.#buf(N, `ln2_rstd_${l}`),
        fch: this.#buf(N * 4 * C, `fch_${l}`),
        fchGelu: this.#buf(N * 4 * C, `fch_gelu_${l}`),
        residual3: this.#buf(N * C, `residual3_${l}`),
      };
      acts.push(a);
      fwd.push(layernormForward(gpu, {
        inp: ref(residual, N * C),
        weight: P(w.ln1w),
        bias: P(w.ln1b),
        out: ref(a.ln1, N * C),
        mean: ref(a.ln1Mean, N),
        rstd: ref(a.ln1Rstd, N),
      }, { rows: N, c: C }));
      fwd.push(mm(
        { a: ref(a.ln1, N * C), b: P(w.qkvw), c: ref(a.qkv, N * 3 * C), bias: P(w.qkvb) },
        { m: N, n: 3 * C, k: C },
      ));
      const attBufs = { qkv: ref(a.qkv, N * 3 * C), out: ref(a.atty, N * C) };
      fwd.push(
        flash
          ? flashAttentionForward(gpu, { ...attBufs, lse: ref(a.att, nAtt) }, attShape)
          : attentionForward(gpu, { ...attBufs, att: ref(a.att, nAtt) }, attShape),
      );
      // residual2 = residual + atty·W + b, the residual added in the matmul's stores.
      fwd.push(mm({
        a: ref(a.atty, N * C),
        b: P(w.attprojw),
        c: ref(a.residual2, N * C),
        bias: P(w.attprojb),
        residual: ref(residual, N * C),
      }, { m: N, n: C, k: C }));
      fwd.push(layernormForward(gpu, {
        inp: ref(a.residual2, N * C),
        weight: P(w.ln2w),
        bias: P(w.ln2b),
        out: ref(a.ln2, N * C),
        mean: ref(a.ln2Mean, N),
        rstd: ref(a.ln2Rstd, N),
      }, { rows: N, c: C }));
      // fch = ln2·W + b is kept for the backward pass; gelu(fch) is applied in the same stores.
      fwd.push(mm({
        a: ref(a.ln2, N * C),
        b: P(w.fcw),
        c: ref(a.fchGelu, N * 4 * C),
        bias: P(w.fcb),
        pre: ref(a.fch, N * 4 * C),
      }, { m: N, n: 4 * C, k: C, epilogue: "gelu" }));
      fwd.push(mm({
        a: ref(a.fchGelu, N * 4 * C),
        b: P(w.fcprojw),
        c: ref(a.residual3, N * C),
        bias: P(w.fcprojb),
        residual: ref(a.residual2, N * C),
      }, { m: N, n: C, k: 4 * C }));
      residual = a.residual3;
    }
    const lnf = this.#buf(N * C, "lnf");
    const lnfMean = this.#buf(N, "lnf_mean");
    const lnfRstd = this.#buf(N, "lnf_rstd");
    const logits = this.#buf(N * V, "logits");
    const dlogits = this.#buf(N * V, "dlogits");
    fwd.push(layernormForward(gpu, {
      inp: ref(residual, N * C),
      weight: P(this.layout.lnfw),
      bias: P(this.layout.lnfb),
      out: ref(lnf, N * C),
      mean: ref(lnfMean, N),
      rstd: ref(lnfRstd, N),
    }, { rows: N, c: C }));
    fwd.push(mm(
      { a: ref(lnf, N * C), b: P(this.layout.wte), c: ref(logits, N * V) },
      { m: N, n: V, k: C, transB: true },
    ));
    fwd.push(crossEntropyForwardBackward(
      gpu,
      {
        logits: ref(logits, N * V),
        targets: ref(this.#targets, N),
        losses: ref(this.#losses, N),
        dlogits: ref(dlogits, N * V),
      },
      this.gradAccum > 1 ? { rows: N, v: V, scale: 1 / (N * this.gradAccum) } : { rows: N, v: V },
    ));
    this.#forward = fwd;
    this.#lossPart = [meanLoss(gpu, { losses: ref(this.#losses, N), out: lossRef }, { rows: N })];

    // ---- backward (grads and dres are cleared before the pass; the kernels accumulate)
    const bwd: Dispatch[] = [];
    this.#dres = this.#buf(N * C, "dresidual");
    const dres = ref(this.#dres, N * C);
    const dln = ref(this.#buf(N * C, "dln"), N * C);
    const datty = ref(this.#buf(N * C, "datty"), N * C);
    const dqkv = ref(this.#buf(N * 3 * C, "dqkv"), N * 3 * C);
    const dfch = ref(this.#buf(N * 4 * C, "dfch"), N * 4 * C);
    // Scratch of the attention backward: datt [B,NH,T,T] (blocked) or D [B,NH,T] (flash).
    const datt = ref(this.#buf(nAtt, "datt"), nAtt);
    const dl = ref(dlogits, N * V);
    // logits = lnf · wteᵀ: dwte += dlogitsᵀ · lnf, dlnf = dlogits · wte.
    bwd.push(mm({ a: dl, b: ref(lnf, N * C), c: G(this.layout.wte) }, {
      m: V,
      n: C,
      k: N,
      transA: true,
      accumulate: true,
    }));
    bwd.push(mm({ a: dl, b: P(this.layout.wte), c: dln }, { m: N, n: C, k: V }));
    bwd.push(...layernormBackward(gpu, {
      dinp: dres,
      dweight: G(this.layout.lnfw),
      dbias: G(this.layout.lnfb),
      dout: dln,
      inp: ref(residual, N * C),
      weight: P(this.layout.lnfw),
      mean: ref(lnfMean, N),
      rstd: ref(lnfRstd, N),
    }, { rows: N, c: C }));
    // Linear backward: dx = dy·Wᵀ (written; times gelu'(geluPre) when the layer's input was
    // gelu(geluPre)), dW += xᵀ·dy, and db += colsum(dy) from the same matmul's loads of dy.
    const linearBackward = (
      x: TensorRef,
      dy: TensorRef,
      dx: TensorRef,
      wv: ParamView,
      bv: ParamView,
      ic: number,
      oc: number,
      geluPre?: TensorRef,
    ) => {
      bwd.push(mm({ a: dy, b: P(wv), c: dx, pre: geluPre }, {
        m: N,
        n: ic,
        k: oc,
        transB: true,
        epilogue: geluPre ? "geluBackward" : "none",
      }));
      bwd.push(mm({ a: x, b: dy, c: G(wv), colSum: G(bv) }, {
        m: ic,
        n: oc,
        k: N,
        transA: true,
        accumulate: true,
      }));
    };
    for (let l = L - 1; l >= 0; l--) {
      const w = this.layout.blocks[l];
      const a = acts[l];
      const inp = l === 0 ? encoded : acts[l - 1].residual3;
      // residual3 = residual2 + fcproj: dres is the gradient of both. fcproj's input was
      // gelu(fch), so its dx comes out as dfch.
      linearBackward(
        ref(a.fchGelu, N * 4 * C),
        dres,
        dfch,
        w.fcprojw,
        w.fcprojb,
        4 * C,
        C,
        ref(a.fch, N * 4 * C),
      );
      linearBackward(ref(a.ln2, N * C), dfch, dln, w.fcw, w.fcb, C, 4 * C);
      bwd.push(...layernormBackward(gpu, {
        dinp: dres,
        dweight: G(w.ln2w),
        dbias: G(w.ln2b),
        dout: dln,
        inp: ref(a.residual2, N * C),
        weight: P(w.ln2w),
        mean: ref(a.ln2Mean, N),
        rstd: ref(a.ln2Rstd, N),
      }, { rows: N, c: C }));
      // residual2 = residual + attproj.
      linearBackward(ref(a.atty, N * C), dres, datty, w.attprojw, w.attprojb, C, C);
      // Written whole by the attention backward: no clearing needed.
      const attGrad = { dqkv, dout: datty, qkv: ref(a.qkv, N * 3 * C) };
      bwd.push(
        ...(flash
          ? flashAttentionBackward(
            gpu,
            {
              ...attGrad,
              out: ref(a.atty, N * C),
              lse: ref(a.att, nAtt),
              dsum: datt,
            },
            attShape,
            { accumulate: false },
          )
          : attentionBackward(gpu, { ...attGrad, datt, att: ref(a.att, nAtt) }, attShape, {
            accumulate: false,
          })),
      );
      linearBackward(ref(a.ln1, N * C), dqkv, dln, w.qkvw, w.qkvb, C, 3 * C);
      bwd.push(...layernormBackward(gpu, {
        dinp: dres,
        dweight: G(w.ln1w),
        dbias: G(w.ln1b),
        dout: dln,
        inp: ref(inp, N * C),
        weight: P(w.ln1w),
        mean: ref(a.ln1Mean, N),
        rstd: ref(a.ln1Rstd, N),
      }, { rows: N, c: C }));
    }
    bwd.push(...embeddingBackward(gpu, {
      tokens: ref(this.#tokens, N),
      dout: dres,
      dwte: G(this.layout.wte),
      dwpe: G(this.layout.wpe),
    }, { b: B, t: T, c: C, v: V }));
    this.#backward = bwd;

    // ---- optimizer: global grad norm, then AdamW over all parameters, with weight decay on
    // the decayed region, which the layout puts first; one dispatch each per chunk of at most
    // one binding (one chunk unless the vectors exceed maxStorageBufferBindingSize).
    const opt: Dispatch[] = [];
    const chunk = this.plan.chunk;
    opt.push(...gradNorm(gpu, { grads: ref(this.#grads, n), out: normRef }, { n, chunk }));
    const { decayRegion } = this.layout;
    if (decayRegion.offset !== 0) {
      throw new Error(
        `Cannot build the optimizer: the decayed region starts at ${decayRegion.offset}, not 0`,
      );
    }
    opt.push(...adamwChunks(gpu, {
      params: ref(this.#params, n),
      grads: ref(this.#grads, n),
      m: ref(this.#m, n),
      v: ref(this.#v, n),
      norm: normRef,
      hyper: ref(this.#hyper, 8),
    }, { n, weightDecay: this.#opts.weightDecay, decayEnd: decayRegion.length, chunk }));
    this.#optimizer = opt;
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
    const V = this.config.vocabSize;
    const rows = inputs.length / T;
    const most = whole ? this.batch * this.gradAccum : this.batch;
    if (!Number.isInteger(rows) || rows < 1 || rows > most) {
      throw new RangeError(
        `Invalid ${what} inputs: ${inputs.length} tokens is not 1..${most} rows of T=${T}`,
      );
    }
    if (targets && targets.length !== inputs.length) {
      throw new RangeError(
        `Invalid ${what} targets: ${targets.length} tokens, inputs have ${inputs.length}`,
      );
    }
    // Micro-batches reach the GPU as one upload and are copied into place by the step.
    const staged = whole && this.#stepTokens !== undefined;
    const length = most * T;
    const tw = this.#tokenWords.subarray(0, length);
    const gw = this.#targetWords.subarray(0, length);
    tw.fill(0);
    gw.fill(0);
    for (let i = 0; i < inputs.length; i++) {
      const x = inputs[i];
      if (x >= V) {
        throw new RangeError(`Invalid ${what} inputs: token ${x} at ${i} >= vocabulary ${V}`);
      }
      tw[i] = x;
    }
    if (targets) {
      for (let i = 0; i < targets.length; i++) {
        const y = targets[i];
        if (y >= V) {
          throw new RangeError(`Invalid ${what} targets: token ${y} at ${i} >= vocabulary ${V}`);
        }
        gw[i] = y;
      }
    }
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

/** The batch and learning rate of one step of {@linkcode pipelinedSteps}. */
export interface StepInput {
  /** [batch, T] input tokens. */
  inputs: Tokens;
  /** [batch, T] target tokens. */
  targets: Tokens;
  /** The learning rate of this step. */
  lr: number;
}

/**
 * Runs `count` training steps keeping up to `depth` of them submitted ahead
 * (default {@linkcode GptModel.pipelineDepth}: 2, 1 on GL), so the device works on the next step while the previous loss
 * is read back: on CPU adapters every readback costs ~10 ms of polling, a
 * tenth of a small model's step. `next(i)` gives step i's batch when it is
 * submitted; `done(i, loss)` sees the losses in order. When `done` throws
 * (a diverged loss, say) or a step fails, no further step is submitted, the
 * steps in flight finish, and the error is rethrown: at most `depth - 1`
 * steps run past the one that failed.
 *
 * @example
 * ```ts ignore
 * await pipelinedSteps(model, 100, () => ({ ...sampler.next(), lr: 3e-3 }), (i, loss) => {
 *   if (!Number.isFinite(loss)) throw new Error(`diverged at step ${i}`);
 * });
 * ```
 */
export async function pipelinedSteps(
  model: GptModel,
  count: number,
  next: (i: number) => StepInput | Promise<StepInput>,
  done?: (i: number, loss: number) => void,
  depth: number = model.pipelineDepth,
): Promise<void> {
  if (!Number.isInteger(depth) || depth < 1) {
    throw new RangeError(`Invalid pipeline depth: ${depth} (expected a positive integer)`);
  }
  const pending: Promise<number>[] = [];
  let finished = 0;
  try {
    for (let i = 0; i < count; i++) {
      const s = await next(i);
      pending.push(model.step(s.inputs, s.targets, { lr: s.lr }));
      if (pending.length >= depth) {
        // Not `done?.(i, await ...)`: an absent `done` would skip the await with the call.
        const loss = await pending.shift()!;
        done?.(finished++, loss);
      }
    }
    while (pending.length > 0) {
      const loss = await pending.shift()!;
      done?.(finished++, loss);
    }
  } finally {
    // On failure, let the steps in flight finish before the error leaves (no stray rejection).
    await Promise.allSettled(pending);
  }
}
