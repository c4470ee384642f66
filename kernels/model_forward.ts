/**
 * The forward pass of the GPT-2 model as prepared dispatches, one function per
 * layer in model order, after llm.c's `gpt2_forward`: the encoder (token and
 * position embeddings), each transformer block, and the head (final
 * LayerNorm, logits against the tied token embedding, cross-entropy). The
 * builders allocate the activations the backward pass reads
 * (kernels/model_backward.ts) and return them with the dispatches.
 *
 * With f16 matmul inputs (`precision: "f16"`), each activation that feeds a
 * matmul (the LayerNorm outputs, the attention output, the GELU output) gets
 * an f16 copy made by the cast kernel right after it is written, and the
 * weights an f16 copy made at the start of every forward pass
 * ({@linkcode ModelGraph.weightCasts}); the matmuls read those and sum in
 * f32. The f32 activations stay: the LayerNorm, attention and GELU backward
 * kernels read them.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import type { GptConfig } from "./config.ts";
import { type BlockViews, matmulWeights, type ParamLayout, type ParamView } from "./layout.ts";
import { matmul, type MatmulBuffers, type MatmulShape, type MatmulStorage } from "./matmul.ts";
import { cast } from "./cast.ts";
import { halfWords } from "./half.ts";
import { embeddingForward } from "./embedding.ts";
import { layernormForward } from "./layernorm.ts";
import { attentionForward } from "./attention.ts";
import { flashAttentionForward, type KeyPass } from "./flash_attention.ts";
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
  /** How the flash backward sums dk and dv. */
  keyPass: KeyPass;
  /** Allocates a storage buffer of `length` floats that the model owns and frees. */
  buf(length: number, label: string): GPUBuffer;
  /** A parameter tensor in the flat parameter buffer. */
  P(v: ParamView): TensorRef;
  /** A parameter's gradient in the flat gradient buffer. */
  G(v: ParamView): TensorRef;
  /** A matmul in the model's chosen variant. */
  mm(bufs: MatmulBuffers, shape: Omit<MatmulShape, "variant">): Dispatch;
  /** Whether the matmuls read f16 copies of their activation and weight inputs. */
  half: boolean;
  /** A matmul weight as a matmul input: the parameter itself, or its f16 copy. */
  weight(v: ParamView): Operand;
  /** The casts that make the weights' f16 copies from the parameters (none in f32). */
  weightCasts: Dispatch[];
}

/** A matmul input: a tensor and how it is stored. */
export interface Operand {
  /** The tensor; an f16 one counts its 4-byte words (`halfWords`). */
  ref: TensorRef;
  /** How its elements are stored. */
  type: MatmulStorage;
}

/**
 * The model's matmul variant: one name for every matmul, a choice per shape
 * (undefined: matmul.ts's default), or undefined (the default everywhere).
 */
export type MatmulChoice =
  | string
  | ((shape: Omit<MatmulShape, "variant">) => string | undefined)
  | undefined;

/**
 * The {@linkcode ModelGraph} of a model whose parameters and gradients live in
 * the flat buffers `params` and `grads`.
 */
export function modelGraph(
  base: Omit<ModelGraph, "P" | "G" | "mm" | "weight" | "weightCasts"> & {
    params: GPUBuffer;
    grads: GPUBuffer;
  },
  variant: MatmulChoice,
): ModelGraph {
  const { params, grads, ...rest } = base;
  const P = (v: ParamView): TensorRef => ({
    buffer: params,
    offset: v.offset * 4,
    length: v.length,
  });
  // One f16 buffer per weight: a view's offset in an f16 copy of the whole vector would be
  // only 128-byte aligned, and bindings need 256.
  const copies = new Map<ParamView, Operand>();
  const weightCasts: Dispatch[] = [];
  if (base.half) {
    for (const v of matmulWeights(base.layout)) {
      const words = halfWords(v.length);
      const copy = { ref: ref(base.buf(words, `${v.name}_f16`), words), type: "f16" as const };
      copies.set(v, copy);
      weightCasts.push(cast(base.gpu, { src: P(v), dst: copy.ref }, { n: v.length, to: "f16" }));
    }
  }
  return {
    ...rest,
    P,
    G: (v) => ({ buffer: grads, offset: v.offset * 4, length: v.length }),
    mm: (bufs, shape) =>
      matmul(base.gpu, bufs, {
        ...shape,
        variant: typeof variant === "function" ? variant(shape) : variant,
      }),
    weight: (v) => copies.get(v) ?? { ref: P(v), type: "f32" },
    weightCasts,
  };
}

/**
 * `buffer` ([count] f32) as a matmul input: itself, or with f16 inputs a new
 * f16 buffer that {@linkcode toHalf} fills.
 */
export function matmulInput(
  g: ModelGraph,
  buffer: GPUBuffer,
  count: number,
  label: string,
): Operand {
  if (!g.half) return { ref: ref(buffer, count), type: "f32" };
  const words = halfWords(count);
  return { ref: ref(g.buf(words, `${label}_f16`), words), type: "f16" };
}

/** The cast of `src` ([count] f32) into its matmul input `dst`: none when `dst` is `src` itself. */
export function toHalf(g: ModelGraph, src: GPUBuffer, dst: Operand, count: number): Dispatch[] {
  if (dst.type === "f32") return [];
  return [cast(g.gpu, { src: ref(src, count), dst: dst.ref }, { n: count, to: "f16" })];
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
  /** ln1, atty, ln2 and fchGelu as the matmuls read them (f16 copies with f16 inputs). */
  ln1In: Operand;
  attyIn: Operand;
  ln2In: Operand;
  fchGeluIn: Operand;
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
  /** lnf as the logits matmul reads it. */
  lnfIn: Operand;
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
  const acts = {
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
  return {
    ...acts,
    ln1In: matmulInput(g, acts.ln1, N * C, `ln1_${l}`),
    attyIn: matmulInput(g, acts.atty, N * C, `atty_${l}`),
    ln2In: matmulInput(g, acts.ln2, N * C, `ln2_${l}`),
    fchGeluIn: matmulInput(g, acts.fchGelu, N * 4 * C, `fch_gelu_${l}`),
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
  const types = (x: Operand, wt: Operand) => ({ aType: x.type, bType: wt.type });
  const qkvw = g.weight(w.qkvw), attprojw = g.weight(w.attprojw);
  const fcw = g.weight(w.fcw), fcprojw = g.weight(w.fcprojw);
  const fwd: Dispatch[] = [];
  fwd.push(normForward(g, residual, { w: w.ln1w, b: w.ln1b }, a.ln1, a.ln1Mean, a.ln1Rstd));
  fwd.push(...toHalf(g, a.ln1, a.ln1In, N * C));
  fwd.push(mm(
    { a: a.ln1In.ref, b: qkvw.ref, c: ref(a.qkv, N * 3 * C), bias: P(w.qkvb) },
    { m: N, n: 3 * C, k: C, ...types(a.ln1In, qkvw) },
  ));
  const attBufs = { qkv: ref(a.qkv, N * 3 * C), out: ref(a.atty, N * C) };
  fwd.push(
    g.flash
      ? flashAttentionForward(gpu, { ...attBufs, lse: ref(a.att, nAtt) }, attShape)
      : attentionForward(gpu, { ...attBufs, att: ref(a.att, nAtt) }, attShape),
  );
  fwd.push(...toHalf(g, a.atty, a.attyIn, N * C));
  // residual2 = residual + atty·W + b, the residual added in the matmul's stores.
  fwd.push(mm({
    a: a.attyIn.ref,
    b: attprojw.ref,
    c: ref(a.residual2, N * C),
    bias: P(w.attprojb),
    residual: ref(residual, N * C),
  }, { m: N, n: C, k: C, ...types(a.attyIn, attprojw) }));
  fwd.push(normForward(g, a.residual2, { w: w.ln2w, b: w.ln2b }, a.ln2, a.ln2Mean, a.ln2Rstd));
  fwd.push(...toHalf(g, a.ln2, a.ln2In, N * C));
  // fch = ln2·W + b is kept for the backward pass; gelu(fch) is applied in the same stores.
  fwd.push(mm({
    a: a.ln2In.ref,
    b: fcw.ref,
    c: ref(a.fchGelu, N * 4 * C),
    bias: P(w.fcb),
    pre: ref(a.fch, N * 4 * C),
  }, { m: N, n: 4 * C, k: C, epilogue: "gelu", ...types(a.ln2In, fcw) }));
  fwd.push(...toHalf(g, a.fchGelu, a.fchGeluIn, N * 4 * C));
  fwd.push(mm({
    a: a.fchGeluIn.ref,
    b: fcprojw.ref,
    c: ref(a.residual3, N * C),
    bias: P(w.fcprojb),
    residual: ref(a.residual2, N * C),
  }, { m: N, n: C, k: 4 * C, ...types(a.fchGeluIn, fcprojw) }));
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
  bufs: Pick<
    ForwardPass,
    "residual" | "lnf" | "lnfMean" | "lnfRstd" | "lnfIn" | "logits" | "dlogits"
  >,
): Dispatch[] {
  const { gpu, mm, layout } = g;
  const { nEmbd: C, blockSize: T, vocabSize: V } = g.config;
  const N = g.batch * T;
  const wte = g.weight(layout.wte);
  return [
    normForward(
      g,
      bufs.residual,
      { w: layout.lnfw, b: layout.lnfb },
      bufs.lnf,
      bufs.lnfMean,
      bufs.lnfRstd,
    ),
    ...toHalf(g, bufs.lnf, bufs.lnfIn, N * C),
    mm(
      { a: bufs.lnfIn.ref, b: wte.ref, c: ref(bufs.logits, N * V) },
      { m: N, n: V, k: C, transB: true, aType: bufs.lnfIn.type, bType: wte.type },
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

/** The whole forward pass in model order: the weights' f16 casts (if any), encoder, every block, head. */
export function buildForward(g: ModelGraph, io: ForwardIo): ForwardPass {
  const { nLayer: L, nEmbd: C, blockSize: T, vocabSize: V } = g.config;
  const N = g.batch * T;
  const encoded = g.buf(N * C, "encoded");
  // The weights' f16 copies are made at the start of every forward pass, so that they follow
  // the parameters whatever changed them last (AdamW, setParams).
  const fwd: Dispatch[] = [...g.weightCasts, encoderForward(g, io.tokens, encoded)];
  const acts: LayerActs[] = [];
  let residual = encoded;
  for (let l = 0; l < L; l++) {
    const a = allocLayerActs(g, l);
    acts.push(a);
    fwd.push(...blockForward(g, g.layout.blocks[l], residual, a));
    residual = a.residual3;
  }
  const lnf = g.buf(N * C, "lnf");
  const head = {
    residual,
    lnf,
    lnfIn: matmulInput(g, lnf, N * C, "lnf"),
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
