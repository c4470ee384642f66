/**
 * The backward pass of the GPT-2 model as prepared dispatches, one function
 * per layer in reverse model order, after llm.c's `gpt2_backward`: the head
 * (logits and final LayerNorm), each transformer block from the last, then
 * the encoder. The parameter-gradient kernels add into the flat gradient
 * buffer and the residual gradient `dres` is added to by every block, so the
 * model clears both before the pass (kernels/model.ts).
 *
 * @module
 */
import type { Dispatch, TensorRef } from "./device.ts";
import type { BlockViews, ParamView } from "./layout.ts";
import { embeddingBackward } from "./embedding.ts";
import { layernormBackward } from "./layernorm.ts";
import { attentionBackward } from "./attention.ts";
import { flashAttentionBackward } from "./flash_attention.ts";
import {
  type ForwardPass,
  type LayerActs,
  type ModelGraph,
  type Operand,
  ref,
  savedAttentionLength,
} from "./model_forward.ts";

/** Gradient buffers of the activations, shared by every layer's backward. */
export interface BackwardScratch {
  /** The residual stream's gradient [N, C], accumulated (cleared before the pass). */
  dres: TensorRef;
  /** A LayerNorm output's gradient [N, C]. */
  dln: TensorRef;
  /** The attention output's gradient [N, C]. */
  datty: TensorRef;
  /** The qkv gradient [N, 3C]. */
  dqkv: TensorRef;
  /** The MLP hidden layer's gradient [N, 4C]. */
  dfch: TensorRef;
  /** Scratch of the attention backward: datt [B,NH,T,T] (blocked) or D [B,NH,T] (flash). */
  datt: TensorRef;
}

/**
 * Linear backward: dx = dy·Wᵀ (written; times gelu'(geluPre) when the layer's
 * input was gelu(geluPre)), dW += xᵀ·dy, and db += colsum(dy) from the same
 * matmul's loads of dy. `ic` and `oc` are the layer's input and output widths.
 * `x` and W are read as the forward matmul read them (f16 copies with f16
 * inputs), so the gradients are those of the function the forward computed;
 * dy, dx and dW are f32.
 */
export function linearBackward(
  g: ModelGraph,
  io: { x: Operand; dy: TensorRef; dx: TensorRef; geluPre?: TensorRef },
  p: { w: ParamView; b: ParamView; ic: number; oc: number },
): Dispatch[] {
  const N = g.batch * g.config.blockSize;
  const { x, dy, dx, geluPre } = io;
  const w = g.weight(p.w);
  return [
    g.mm({ a: dy, b: w.ref, c: dx, pre: geluPre }, {
      m: N,
      n: p.ic,
      k: p.oc,
      transB: true,
      epilogue: geluPre ? "geluBackward" : "none",
      bType: w.type,
    }),
    g.mm({ a: x.ref, b: dy, c: g.G(p.w), colSum: g.G(p.b) }, {
      m: p.ic,
      n: p.oc,
      k: N,
      transA: true,
      accumulate: true,
      aType: x.type,
    }),
  ];
}

/**
 * A LayerNorm's backward (its input `inp`, saved `mean` and `rstd`): dinp is
 * added into `s.dres` from `s.dln`; dweight and dbias into the gradients.
 */
export function normBackward(
  g: ModelGraph,
  inp: GPUBuffer,
  p: { w: ParamView; b: ParamView },
  mean: GPUBuffer,
  rstd: GPUBuffer,
  s: BackwardScratch,
): Dispatch[] {
  const C = g.config.nEmbd;
  const N = g.batch * g.config.blockSize;
  return layernormBackward(g.gpu, {
    dinp: s.dres,
    dweight: g.G(p.w),
    dbias: g.G(p.b),
    dout: s.dln,
    inp: ref(inp, N * C),
    weight: g.P(p.w),
    mean: ref(mean, N),
    rstd: ref(rstd, N),
  }, { rows: N, c: C });
}

/**
 * The head's backward: logits = lnf · wteᵀ gives dwte += dlogitsᵀ · lnf and
 * dlnf = dlogits · wte; then the final LayerNorm's backward into `dres`.
 */
export function headBackward(g: ModelGraph, f: ForwardPass, s: BackwardScratch): Dispatch[] {
  const { G, mm, layout } = g;
  const { nEmbd: C, blockSize: T, vocabSize: V } = g.config;
  const N = g.batch * T;
  const dl = ref(f.dlogits, N * V);
  const wte = g.weight(layout.wte);
  return [
    mm({ a: dl, b: f.lnfIn.ref, c: G(layout.wte) }, {
      m: V,
      n: C,
      k: N,
      transA: true,
      accumulate: true,
      bType: f.lnfIn.type,
    }),
    mm({ a: dl, b: wte.ref, c: s.dln }, { m: N, n: C, k: V, bType: wte.type }),
    ...normBackward(g, f.residual, { w: layout.lnfw, b: layout.lnfb }, f.lnfMean, f.lnfRstd, s),
  ];
}

/**
 * One transformer block's backward, the MLP first: `dres` holds the gradient
 * of the block's output on entry and of its input `inp` on return.
 */
export function blockBackward(
  g: ModelGraph,
  w: BlockViews,
  inp: GPUBuffer,
  a: LayerActs,
  s: BackwardScratch,
): Dispatch[] {
  const { gpu } = g;
  const { nHead: NH, nEmbd: C, blockSize: T } = g.config;
  const B = g.batch;
  const N = B * T;
  const nAtt = savedAttentionLength(g);
  const attShape = { b: B, t: T, c: C, nh: NH };
  const { dres, dln, datty, dqkv, dfch, datt } = s;
  const bwd: Dispatch[] = [];
  // residual3 = residual2 + fcproj: dres is the gradient of both. fcproj's input was
  // gelu(fch), so its dx comes out as dfch.
  bwd.push(...linearBackward(g, {
    x: a.fchGeluIn,
    dy: dres,
    dx: dfch,
    geluPre: ref(a.fch, N * 4 * C),
  }, { w: w.fcprojw, b: w.fcprojb, ic: 4 * C, oc: C }));
  bwd.push(
    ...linearBackward(g, { x: a.ln2In, dy: dfch, dx: dln }, {
      w: w.fcw,
      b: w.fcb,
      ic: C,
      oc: 4 * C,
    }),
  );
  bwd.push(...normBackward(g, a.residual2, { w: w.ln2w, b: w.ln2b }, a.ln2Mean, a.ln2Rstd, s));
  // residual2 = residual + attproj.
  bwd.push(
    ...linearBackward(g, { x: a.attyIn, dy: dres, dx: datty }, {
      w: w.attprojw,
      b: w.attprojb,
      ic: C,
      oc: C,
    }),
  );
  // Written whole by the attention backward: no clearing needed.
  const attGrad = { dqkv, dout: datty, qkv: ref(a.qkv, N * 3 * C) };
  bwd.push(
    ...(g.flash
      ? flashAttentionBackward(
        gpu,
        {
          ...attGrad,
          out: ref(a.atty, N * C),
          lse: ref(a.att, nAtt),
          dsum: datt,
        },
        attShape,
        { accumulate: false, keyPass: g.keyPass },
      )
      : attentionBackward(gpu, { ...attGrad, datt, att: ref(a.att, nAtt) }, attShape, {
        accumulate: false,
      })),
  );
  bwd.push(
    ...linearBackward(g, { x: a.ln1In, dy: dqkv, dx: dln }, {
      w: w.qkvw,
      b: w.qkvb,
      ic: C,
      oc: 3 * C,
    }),
  );
  bwd.push(...normBackward(g, inp, { w: w.ln1w, b: w.ln1b }, a.ln1Mean, a.ln1Rstd, s));
  return bwd;
}

/** The encoder's backward: dwte and dwpe from the residual gradient at the first block's input. */
export function encoderBackward(g: ModelGraph, tokens: GPUBuffer, dres: TensorRef): Dispatch[] {
  const { nEmbd: C, blockSize: T, vocabSize: V } = g.config;
  const B = g.batch;
  return embeddingBackward(g.gpu, {
    tokens: ref(tokens, B * T),
    dout: dres,
    dwte: g.G(g.layout.wte),
    dwpe: g.G(g.layout.wpe),
  }, { b: B, t: T, c: C, v: V });
}

/**
 * The whole backward pass in reverse model order: head, every block from the
 * last, encoder. Allocates the activation gradients; `dres` is returned so
 * that the model can clear it before each pass.
 */
export function buildBackward(
  g: ModelGraph,
  f: ForwardPass,
  tokens: GPUBuffer,
): { dispatches: Dispatch[]; dres: GPUBuffer } {
  const { nLayer: L, nEmbd: C, blockSize: T } = g.config;
  const N = g.batch * T;
  const nAtt = savedAttentionLength(g);
  const dres = g.buf(N * C, "dresidual");
  const s: BackwardScratch = {
    dres: ref(dres, N * C),
    dln: ref(g.buf(N * C, "dln"), N * C),
    datty: ref(g.buf(N * C, "datty"), N * C),
    dqkv: ref(g.buf(N * 3 * C, "dqkv"), N * 3 * C),
    dfch: ref(g.buf(N * 4 * C, "dfch"), N * 4 * C),
    datt: ref(g.buf(nAtt, "datt"), nAtt),
  };
  const bwd: Dispatch[] = [...headBackward(g, f, s)];
  for (let l = L - 1; l >= 0; l--) {
    const inp = l === 0 ? f.encoded : f.acts[l - 1].residual3;
    bwd.push(...blockBackward(g, g.layout.blocks[l], inp, f.acts[l], s));
  }
  bwd.push(...encoderBackward(g, tokens, s.dres));
  return { dispatches: bwd, dres };
}
