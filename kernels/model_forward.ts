/**
 * The forward pass of the GPT-2 model as prepared dispatches, one function per
 * layer in model order, after llm.c's `gpt2_forward`: the encoder (token and
 * position embeddings), each transformer block, and the head (final
 * LayerNorm, logits against the tied token embedding, cross-entropy). The
 * builders allocate the activations the backward pass reads
 * (kernels/model_backward.ts) and return them with the dispatches.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import type { GptConfig } from "./config.ts";
import type { BlockViews, ParamLayout, ParamView } from "./layout.ts";
import { matmul, type MatmulBuffers, type MatmulShape } from "./matmul.ts";
import { embeddingForward } from "./embedding.ts";
import { layernormForward } from "./layernorm.ts";
import { attentionForward } from "./attention.ts";
import { flashAttentionForward } from "./flash_attention.ts";
import { crossEntropyForwardBackward } from "./crossentropy.ts";

/**
 * What the forward and backward builders share: the device, the shape, the
 * model's buffers seen through the parameter layout, and the model's allocator.
 */
export interface ModelGraph {
  /** The device the dispatches run on. */
  gpu: Gpu;
  /** The model shape. */
  config: GptConfig;
  /** The flat parameter layout. */
  layout: ParamLayout;
  /** Sequences per micro-batch (B). */
  batch: number;
  /** Flash attention (saves [B,NH,T] log-sum-exps) instead of blocked ([B,NH,T,T] probabilities). */
  flash: boolean;
  /** Allocates a storage buffer of `length` floats that the model owns and frees. */
  buf(length: number, label: string): GPUBuffer;
  /** A parameter tensor in the flat parameter buffer. */
  P(v: ParamView): TensorRef;
  /** A parameter's gradient in the flat gradient buffer. */
  G(v: ParamView): TensorRef;
  /** A matmul in the model's chosen variant. */
  mm(bufs: MatmulBuffers, shape: Omit<MatmulShape, "variant">): Dispatch;
}

/**
 * The {@linkcode ModelGraph} of a model whose parameters and gradients live in
 * the flat buffers `params` and `grads`.
 */
export function modelGraph(
  base: Omit<ModelGraph, "P" | "G" | "mm"> & { params: GPUBuffer; grads: GPUBuffer },
  variant: string | undefined,
): ModelGraph {
  const { params, grads, ...rest } = base;
  return {
    ...rest,
    P: (v) => ({ buffer: params, offset: v.offset * 4, length: v.length }),
    G: (v) => ({ buffer: grads, offset: v.offset * 4, length: v.length }),
    mm: (bufs, shape) => matmul(base.gpu, bufs, { ...shape, variant }),
  };
}

/** A whole buffer of `length` floats as a tensor. */
export function ref(buffer: GPUBuffer, length: number): TensorRef {
  return { buffer, offset: 0, length };
}

/** Floats of one layer's saved softmax: [B,NH,T,T] probabilities, or [B,NH,T] with flash. */
export function savedAttentionLength(g: ModelGraph): number {
  const { nHead: NH, blockSize: T } = g.config;
  const B = g.batch;
  // Flash attention keeps one float per (batch, head, row) instead of a T×T matrix.
  return g.flash ? B * NH * T : B * NH * T * T;
}

/** Per-layer activations kept for the backward pass. */
export interface LayerActs {
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

/** The forward pass: its dispatches in order and the activations the backward pass reads. */
export interface ForwardPass {
  /** Every dispatch of the forward pass, the cross-entropy last. */
  dispatches: Dispatch[];
  /** How many of {@linkcode dispatches} compute the logits (all but the cross-entropy). */
  logitsDispatches: number;
  /** The encoder's output [N, C]: the first block's input. */
  encoded: GPUBuffer;
  /** Each block's activations. */
  acts: LayerActs[];
  /** The last block's output [N, C]: the final LayerNorm's input. */
  residual: GPUBuffer;
  /** The final LayerNorm's output [N, C], mean [N] and reciprocal std [N]. */
  lnf: GPUBuffer;
  lnfMean: GPUBuffer;
  lnfRstd: GPUBuffer;
  /** The logits [N, V]. */
  logits: GPUBuffer;
  /** The gradient of the loss with respect to the logits [N, V], from the cross-entropy. */
  dlogits: GPUBuffer;
}

/** The buffers the forward pass reads from and writes to outside its activations. */
export interface ForwardIo {
  /** Input tokens [N] (u32). */
  tokens: GPUBuffer;
  /** Target tokens [N] (u32). */
  targets: GPUBuffer;
  /** Per-position cross-entropy [N], written. */
  losses: GPUBuffer;
  /** Scale of dlogits (default: the cross-entropy kernel's, for the mean loss of this pass). */
  lossScale?: number;
}

/** The encoder: out[b,t] = wte[tokens[b,t]] + wpe[t]. */
export function encoderForward(g: ModelGraph, tokens: GPUBuffer, out: GPUBuffer): Dispatch {
  const { nEmbd: C, blockSize: T } = g.config;
  const B = g.batch;
  const N = B * T;
  return embeddingForward(g.gpu, {
    tokens: ref(tokens, N),
    wte: g.P(g.layout.wte),
    wpe: g.P(g.layout.wpe),
    out: ref(out, N * C),
  }, { b: B, t: T, c: C });
}

/** A LayerNorm over the N rows of `inp` (weight `p.w`, bias `p.b`) into `out`, `mean`, `rstd`. */
export function normForward(
  g: ModelGraph,
  inp: GPUBuffer,
  p: { w: ParamView; b: ParamView },
  out: GPUBuffer,
  mean: GPUBuffer,
  rstd: GPUBuffer,
): Dispatch {
  const C = g.config.nEmbd;
  const N = g.batch * g.config.blockSize;
  return layernormForward(g.gpu, {
    inp: ref(inp, N * C),
    weight: g.P(p.w),
    bias: g.P(p.b),
    out: ref(out, N * C),
    mean: ref(mean, N),
    rstd: ref(rstd, N),
  }, { rows: N, c: C });
}

/** Allocates block `l`'s activations. */
export function allocLayerActs(g: ModelGraph, l: number): LayerActs {
  const C = g.config.nEmbd;
  const N = g.batch * g.config.blockSize;
  const nAtt = savedAttentionLength(g);
  return {
    ln1: g.buf(N * C, `ln1_${l}`),
    ln1Mean: g.buf(N, `ln1_mean_${l}`),
    ln1Rstd: g.buf(N, `ln1_rstd_${l}`),
    qkv: g.buf(N * 3 * C, `qkv_${l}`),
    atty: g.buf(N * C, `atty_${l}`),
    att: g.buf(nAtt, `att_${l}`),
    residual2: g.buf(N * C, `residual2_${l}`),
    ln2: g.buf(N * C, `ln2_${l}`),
    ln2Mean: g.buf(N, `ln2_mean_${l}`),
    ln2Rstd: g.buf(N, `ln2_rstd_${l}`),
    fch: g.buf(N * 4 * C, `fch_${l}`),
    fchGelu: g.buf(N * 4 * C, `fch_gelu_${l}`),
    residual3: g.buf(N * C, `residual3_${l}`),
  };
}

/**
 * One transformer block: residual2 = residual + attn(ln1(residual)),
 * residual3 = residual2 + mlp(ln2(residual2)), with the activations in `a`.
 */
export function blockForward(
  g: ModelGraph,
  w: BlockViews,
  residual: GPUBuffer,
  a: LayerActs,
): Dispatch[] {
  const { gpu, P, mm } = g;
  const { nHead: NH, nEmbd: C, blockSize: T } = g.config;
  const B = g.batch;
  const N = B * T;
  const nAtt = savedAttentionLength(g);
  const attShape = { b: B, t: T, c: C, nh: NH };
  const fwd: Dispatch[] = [];
  fwd.push(normForward(g, residual, { w: w.ln1w, b: w.ln1b }, a.ln1, a.ln1Mean, a.ln1Rstd));
  fwd.push(mm(
    { a: ref(a.ln1, N * C), b: P(w.qkvw), c: ref(a.qkv, N * 3 * C), bias: P(w.qkvb) },
    { m: N, n: 3 * C, k: C },
  ));
  const attBufs = { qkv: ref(a.qkv, N * 3 * C), out: ref(a.atty, N * C) };
  fwd.push(
    g.flash
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
  fwd.push(normForward(g, a.residual2, { w: w.ln2w, b: w.ln2b }, a.ln2, a.ln2Mean, a.ln2Rstd));
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
  return fwd;
}

/**
 * The head: lnf = LayerNorm(residual), logits = lnf · wteᵀ (the tied output
 * embedding), then the cross-entropy of the logits against the targets, which
 * writes the per-position losses and the logits' gradient.
 */
export function headForward(
  g: ModelGraph,
  io: ForwardIo,
  bufs: Pick<ForwardPass, "residual" | "lnf" | "lnfMean" | "lnfRstd" | "logits" | "dlogits">,
): Dispatch[] {
  const { gpu, P, mm, layout } = g;
  const { nEmbd: C, blockSize: T, vocabSize: V } = g.config;
  const N = g.batch * T;
  return [
    normForward(
      g,
      bufs.residual,
      { w: layout.lnfw, b: layout.lnfb },
      bufs.lnf,
      bufs.lnfMean,
      bufs.lnfRstd,
    ),
    mm(
      { a: ref(bufs.lnf, N * C), b: P(layout.wte), c: ref(bufs.logits, N * V) },
      { m: N, n: V, k: C, transB: true },
    ),
    crossEntropyForwardBackward(
      gpu,
      {
        logits: ref(bufs.logits, N * V),
        targets: ref(io.targets, N),
        losses: ref(io.losses, N),
        dlogits: ref(bufs.dlogits, N * V),
      },
      io.lossScale !== undefined ? { rows: N, v: V, scale: io.lossScale } : { rows: N, v: V },
    ),
  ];
}

/** The whole forward pass in model order: encoder, every block, head. */
export function buildForward(g: ModelGraph, io: ForwardIo): ForwardPass {
  const { nLayer: L, nEmbd: C, blockSize: T, vocabSize: V } = g.config;
  const N = g.batch * T;
  const encoded = g.buf(N * C, "encoded");
  const fwd: Dispatch[] = [encoderForward(g, io.tokens, encoded)];
  const acts: LayerActs[] = [];
  let residual = encoded;
  for (let l = 0; l < L; l++) {
    const a = allocLayerActs(g, l);
    acts.push(a);
    fwd.push(...blockForward(g, g.layout.blocks[l], residual, a));
    residual = a.residual3;
  }
  const head = {
    residual,
    lnf: g.buf(N * C, "lnf"),
    lnfMean: g.buf(N, "lnf_mean"),
    lnfRstd: g.buf(N, "lnf_rstd"),
    logits: g.buf(N * V, "logits"),
    dlogits: g.buf(N * V, "dlogits"),
  };
  fwd.push(...headForward(g, io, head));
  return {
    dispatches: fwd,
    logitsDispatches: fwd.length - 1,
    encoded,
    acts,
    ...head,
  };
}
