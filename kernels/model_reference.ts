/**
 * The whole GPT-2 forward and backward pass in plain TypeScript, in float64:
 * the oracle for the GPU model (loss and every parameter gradient) and the
 * function finite differences are taken of in the gradient check. It follows
 * karpathy/llm.c's train_gpt2.c layer by layer, on the per-kernel references
 * of kernels/reference.ts (given Float64Array, they compute and store in
 * f64), with the parameters in the flat layout of {@linkcode buildLayout}.
 *
 * The linear layers use the f64 matmul below rather than matmul_reference.ts,
 * which rounds its result to f32; a central finite difference needs f64 to
 * resolve gradients to ~1e-7. model_reference_test.ts checks it against
 * matmulReference.
 *
 * With `halfMatmulInputs` it is the oracle of the model's f16 precision: every
 * matmul reads its activation and weight rounded to f16 (through f32, as the
 * GPU's cast does) and sums in f64; the backward pass takes the gradient of
 * that function, rounding treated as the identity (dx = dy·ĥ(W)ᵀ and
 * dW = ĥ(x)ᵀ·dy with the rounded values), as the GPU model does.
 *
 * @module
 */
import type { GptConfig } from "./config.ts";
import { buildLayout, matmulWeights, type ParamLayout, type ParamView } from "./layout.ts";
import { roundToF16 } from "./half.ts";
import {
  attentionBackwardRef,
  attentionForwardRef,
  crossEntropyForwardBackwardRef,
  embeddingBackwardRef,
  embeddingForwardRef,
  geluBackwardRef,
  geluForwardRef,
  layernormBackwardRef,
  layernormForwardRef,
  residualForwardRef,
} from "./reference.ts";

type F64 = Float64Array;

/** out[N,OC] = inp[N,IC]·w[IC,OC] + bias (w stored [in, out]). */
export function matmulForward(
  out: F64,
  inp: F64,
  w: F64,
  bias: F64 | null,
  N: number,
  IC: number,
  OC: number,
): void {
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < OC; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < IC; i++) s += inp[n * IC + i] * w[i * OC + o];
      out[n * OC + o] = s;
    }
  }
}

/** Backward of {@linkcode matmulForward}; accumulates dinp, dw, dbias. */
export function matmulBackward(
  dinp: F64,
  dw: F64,
  dbias: F64 | null,
  dout: F64,
  inp: F64,
  w: F64,
  N: number,
  IC: number,
  OC: number,
): void {
  for (let n = 0; n < N; n++) {
    for (let i = 0; i < IC; i++) {
      let s = 0;
      for (let o = 0; o < OC; o++) s += dout[n * OC + o] * w[i * OC + o];
      dinp[n * IC + i] += s;
    }
  }
  for (let i = 0; i < IC; i++) {
    for (let o = 0; o < OC; o++) {
      let s = 0;
      for (let n = 0; n < N; n++) s += inp[n * IC + i] * dout[n * OC + o];
      dw[i * OC + o] += s;
    }
  }
  if (dbias) {
    for (let o = 0; o < OC; o++) {
      let s = 0;
      for (let n = 0; n < N; n++) s += dout[n * OC + o];
      dbias[o] += s;
    }
  }
}

/** Everything the forward pass computes, kept for the backward pass and for tests. */
export interface ReferenceActivations {
  encoded: F64;
  ln1: F64[];
  ln1Mean: F64[];
  ln1Rstd: F64[];
  qkv: F64[];
  atty: F64[];
  att: F64[];
  attproj: F64[];
  residual2: F64[];
  ln2: F64[];
  ln2Mean: F64[];
  ln2Rstd: F64[];
  fch: F64[];
  fchGelu: F64[];
  fcproj: F64[];
  residual3: F64[];
  lnf: F64;
  lnfMean: F64;
  lnfRstd: F64;
  logits: F64;
  /** d(mean loss)/d(logits) = (softmax - onehot) / (B*T). */
  dlogits: F64;
  /** Per-position cross-entropy [B*T]. */
  losses: F64;
}

/** The result of {@linkcode referenceForward}. */
export interface ReferenceForward {
  /** Mean cross-entropy over the B*T positions (nats). */
  loss: number;
  /** All activations. */
  acts: ReferenceActivations;
}

/** The transpose of a [rows, cols] matrix. */
function transpose(a: F64, rows: number, cols: number): F64 {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

function view(params: F64, v: ParamView): F64 {
  return params.subarray(v.offset, v.offset + v.length);
}

function toF64(params: Float32Array | Float64Array): F64 {
  return params instanceof Float64Array ? params : Float64Array.from(params);
}

/** Each value rounded to f32, then to f16: what the GPU's cast kernel makes of it. */
function roundHalf(x: F64): F64 {
  return Float64Array.from(roundToF16(Float32Array.from(x)));
}

/** The parameters as the matmuls read them: with `half`, a copy whose matmul weights are rounded. */
function matmulParams(p: F64, layout: ParamLayout, half: boolean): F64 {
  if (!half) return p;
  const out = Float64Array.from(p);
  for (const v of matmulWeights(layout)) out.set(roundHalf(view(p, v)), v.offset);
  return out;
}

/** Options of {@linkcode referenceForward} and {@linkcode referenceBackward}. */
export interface ReferenceOptions {
  /** Sequences (B); the inputs are [B, T]. */
  batch: number;
  /**
   * Round every matmul's inputs to f16 (the model's `precision: "f16"`); the
   * activations kept for the backward pass (ln1, atty, ln2, fchGelu, lnf) are
   * then the rounded ones (default false).
   */
  halfMatmulInputs?: boolean;
}

function checkInputs(
  config: GptConfig,
  layout: ParamLayout,
  params: ArrayLike<number>,
  inputs: ArrayLike<number>,
  targets: ArrayLike<number> | null,
  B: number,
): number {
  const T = inputs.length / B;
  if (!Number.isInteger(T) || T < 1 || T > config.blockSize) {
    throw new RangeError(
      `Invalid inputs: ${inputs.length} tokens is not B=${B} rows of T <= ${config.blockSize}`,
    );
  }
  if (targets && targets.length !== inputs.length) {
    throw new RangeError(`Invalid targets: ${targets.length} != ${inputs.length} inputs`);
  }
  if (params.length !== layout.totalLength) {
    throw new RangeError(
      `Invalid params: ${params.length} floats, the layout has ${layout.totalLength}`,
    );
  }
  return T;
}

/**
 * The forward pass: mean cross-entropy of `targets` given `inputs` ([B,T] row-major).
 *
 * @example
 * ```ts ignore
 * const { loss } = referenceForward(config, params, inputs, targets, { batch: 2 });
 * ```
 */
export function referenceForward(
  config: GptConfig,
  params: Float32Array | Float64Array,
  inputs: ArrayLike<number>,
  targets: ArrayLike<number>,
  options: ReferenceOptions,
): ReferenceForward {
  const layout = buildLayout(config);
  const B = options.batch;
  const T = checkInputs(config, layout, params, inputs, targets, B);
  const p = toF64(params);
  const half = options.halfMatmulInputs ?? false;
  const pm = matmulParams(p, layout, half);
  // A matmul's activation input as the matmul reads it.
  const input = (x: F64): F64 => half ? roundHalf(x) : x;
  const { nLayer: L, nHead: NH, nEmbd: C, vocabSize: V } = config;
  const N = B * T;
  const f = (n: number) => new Float64Array(n);
  const acts: ReferenceActivations = {
    encoded: f(N * C),
    ln1: [],
    ln1Mean: [],
    ln1Rstd: [],
    qkv: [],
    atty: [],
    att: [],
    attproj: [],
    residual2: [],
    ln2: [],
    ln2Mean: [],
    ln2Rstd: [],
    fch: [],
    fchGelu: [],
    fcproj: [],
    residual3: [],
    lnf: f(N * C),
    lnfMean: f(N),
    lnfRstd: f(N),
    logits: f(N * V),
    dlogits: f(N * V),
    losses: f(N),
  };
  embeddingForwardRef({
    tokens: inputs,
    wte: view(p, layout.wte),
    wpe: view(p, layout.wpe),
    out: acts.encoded,
  }, { b: B, t: T, c: C, v: V });
  let residual = acts.encoded;
  for (let l = 0; l < L; l++) {
    const w = layout.blocks[l];
    let ln1: F64 = f(N * C), atty: F64 = f(N * C), ln2: F64 = f(N * C);
    let fchGelu: F64 = f(N * 4 * C);
    const ln1Mean = f(N), ln1Rstd = f(N), qkv = f(N * 3 * C);
    const att = f(B * NH * T * T), attproj = f(N * C), residual2 = f(N * C);
    const ln2Mean = f(N), ln2Rstd = f(N), fch = f(N * 4 * C);
    const fcproj = f(N * C), residual3 = f(N * C);
    layernormForwardRef({
      inp: residual,
      weight: view(p, w.ln1w),
      bias: view(p, w.ln1b),
      out: ln1,
      mean: ln1Mean,
      rstd: ln1Rstd,
    }, { rows: N, c: C });
    ln1 = input(ln1);
    matmulForward(qkv, ln1, view(pm, w.qkvw), view(p, w.qkvb), N, C, 3 * C);
    attentionForwardRef({ qkv, out: atty, att }, { b: B, t: T, c: C, nh: NH });
    atty = input(atty);
    matmulForward(attproj, atty, view(pm, w.attprojw), view(p, w.attprojb), N, C, C);
    residualForwardRef({ a: residual, b: attproj, out: residual2 }, { n: N * C });
    layernormForwardRef({
      inp: residual2,
      weight: view(p, w.ln2w),
      bias: view(p, w.ln2b),
      out: ln2,
      mean: ln2Mean,
      rstd: ln2Rstd,
    }, { rows: N, c: C });
    ln2 = input(ln2);
    matmulForward(fch, ln2, view(pm, w.fcw), view(p, w.fcb), N, C, 4 * C);
    geluForwardRef({ inp: fch, out: fchGelu }, { n: N * 4 * C });
    fchGelu = input(fchGelu);
    matmulForward(fcproj, fchGelu, view(pm, w.fcprojw), view(p, w.fcprojb), N, 4 * C, C);
    residualForwardRef({ a: residual2, b: fcproj, out: residual3 }, { n: N * C });
    acts.ln1.push(ln1);
    acts.ln1Mean.push(ln1Mean);
    acts.ln1Rstd.push(ln1Rstd);
    acts.qkv.push(qkv);
    acts.atty.push(atty);
    acts.att.push(att);
    acts.attproj.push(attproj);
    acts.residual2.push(residual2);
    acts.ln2.push(ln2);
    acts.ln2Mean.push(ln2Mean);
    acts.ln2Rstd.push(ln2Rstd);
    acts.fch.push(fch);
    acts.fchGelu.push(fchGelu);
    acts.fcproj.push(fcproj);
    acts.residual3.push(residual3);
    residual = residual3;
  }
  layernormForwardRef({
    inp: residual,
    weight: view(p, layout.lnfw),
    bias: view(p, layout.lnfb),
    out: acts.lnf,
    mean: acts.lnfMean,
    rstd: acts.lnfRstd,
  }, { rows: N, c: C });
  acts.lnf = input(acts.lnf);
  // Tied head: logits = lnf · wteᵀ.
  matmulForward(acts.logits, acts.lnf, transpose(view(pm, layout.wte), V, C), null, N, C, V);
  for (let n = 0; n < N; n++) {
    const tgt = targets[n];
    if (!(Number.isInteger(tgt) && tgt >= 0 && tgt < V)) {
      throw new RangeError(`Invalid target ${tgt} at position ${n} (vocabulary ${V})`);
    }
  }
  crossEntropyForwardBackwardRef(
    { logits: acts.logits, targets, losses: acts.losses, dlogits: acts.dlogits },
    { rows: N, v: V },
  );
  let loss = 0;
  for (let n = 0; n < N; n++) loss += acts.losses[n];
  return { loss: loss / N, acts };
}

/** The result of {@linkcode referenceBackward}. */
export interface ReferenceBackward extends ReferenceForward {
  /** d(mean loss)/d(params), in the flat layout (padding zero). */
  grads: F64;
}

/**
 * Forward and backward: the loss and the gradient of the mean loss w.r.t. every parameter.
 */
export function referenceBackward(
  config: GptConfig,
  params: Float32Array | Float64Array,
  inputs: ArrayLike<number>,
  targets: ArrayLike<number>,
  options: ReferenceOptions,
): ReferenceBackward {
  const fwd = referenceForward(config, params, inputs, targets, options);
  const { acts } = fwd;
  const layout = buildLayout(config);
  const p = toF64(params);
  const pm = matmulParams(p, layout, options.halfMatmulInputs ?? false);
  const B = options.batch;
  const T = inputs.length / B;
  const { nLayer: L, nHead: NH, nEmbd: C, vocabSize: V } = config;
  const N = B * T;
  const grads = new Float64Array(layout.totalLength);
  const g = (v: ParamView) => view(grads, v);
  const transposedGrad = new Float64Array(C * V);
  // dlogits = (softmax - onehot) / N came with the forward pass; logits = lnf · wteᵀ.
  const dlnf = new Float64Array(N * C);
  matmulBackward(
    dlnf,
    transposedGrad,
    null,
    acts.dlogits,
    acts.lnf,
    transpose(view(pm, layout.wte), V, C),
    N,
    C,
    V,
  );
  const dwte = g(layout.wte);
  for (let v = 0; v < V; v++) {
    for (let i = 0; i < C; i++) dwte[v * C + i] += transposedGrad[i * V + v];
  }
  const dres = new Float64Array(N * C);
  const lastResidual = L > 0 ? acts.residual3[L - 1] : acts.encoded;
  layernormBackwardRef({
    dinp: dres,
    dweight: g(layout.lnfw),
    dbias: g(layout.lnfb),
    dout: dlnf,
    inp: lastResidual,
    weight: view(p, layout.lnfw),
    mean: acts.lnfMean,
    rstd: acts.lnfRstd,
  }, { rows: N, c: C });
  for (let l = L - 1; l >= 0; l--) {
    const w = layout.blocks[l];
    const residual = l === 0 ? acts.encoded : acts.residual3[l - 1];
    // residual3 = residual2 + fcproj: dres flows to both unchanged.
    const dfchGelu = new Float64Array(N * 4 * C);
    matmulBackward(
      dfchGelu,
      g(w.fcprojw),
      g(w.fcprojb),
      dres,
      acts.fchGelu[l],
      view(pm, w.fcprojw),
      N,
      4 * C,
      C,
    );
    const dfch = new Float64Array(N * 4 * C);
    geluBackwardRef({ dinp: dfch, inp: acts.fch[l], dout: dfchGelu }, { n: N * 4 * C });
    const dln2 = new Float64Array(N * C);
    matmulBackward(dln2, g(w.fcw), g(w.fcb), dfch, acts.ln2[l], view(pm, w.fcw), N, C, 4 * C);
    layernormBackwardRef({
      dinp: dres,
      dweight: g(w.ln2w),
      dbias: g(w.ln2b),
      dout: dln2,
      inp: acts.residual2[l],
      weight: view(p, w.ln2w),
      mean: acts.ln2Mean[l],
      rstd: acts.ln2Rstd[l],
    }, { rows: N, c: C });
    // residual2 = residual + attproj.
    const datty = new Float64Array(N * C);
    matmulBackward(
      datty,
      g(w.attprojw),
      g(w.attprojb),
      dres,
      acts.atty[l],
      view(pm, w.attprojw),
      N,
      C,
      C,
    );
    const dqkv = new Float64Array(N * 3 * C);
    attentionBackwardRef({ dqkv, dout: datty, qkv: acts.qkv[l], att: acts.att[l] }, {
      b: B,
      t: T,
      c: C,
      nh: NH,
    });
    const dln1 = new Float64Array(N * C);
    matmulBackward(dln1, g(w.qkvw), g(w.qkvb), dqkv, acts.ln1[l], view(pm, w.qkvw), N, C, 3 * C);
    layernormBackwardRef({
      dinp: dres,
      dweight: g(w.ln1w),
      dbias: g(w.ln1b),
      dout: dln1,
      inp: residual,
      weight: view(p, w.ln1w),
      mean: acts.ln1Mean[l],
      rstd: acts.ln1Rstd[l],
    }, { rows: N, c: C });
  }
  embeddingBackwardRef({ tokens: inputs, dout: dres, dwte, dwpe: g(layout.wpe) }, {
    b: B,
    t: T,
    c: C,
    v: V,
  });
  return { ...fwd, grads };
}
