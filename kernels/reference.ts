/**
 * Plain-TypeScript references of the WGSL kernels (all but matmul, see
 * matmul_reference.ts), with the same argument objects as the GPU factories
 * but typed arrays in place of buffers. They are the oracle of the kernel
 * tests, the pieces of a TypeScript reference of the whole model, and the CPU
 * implementation the aggregator runs.
 *
 * Semantics match the GPU kernels: backward functions ACCUMULATE (+=) into
 * their gradient arrays; crossEntropyForwardBackward WRITES dlogits.
 *
 * Precision: most references compute in f64 and store into the given arrays
 * (pass Float64Array everywhere for finite-difference checks). These are
 * bit-exact with the GPU (same f32 operations in the same order):
 * {@linkcode pseudoGradientRef}, {@linkcode quantizeInt8Ref},
 * {@linkcode dequantizeInt8Ref} (without `accumulate`), {@linkcode residualForwardRef},
 * {@linkcode accumulateRef}. {@linkcode nesterovStepRef} and
 * `dequantizeInt8Ref` with `accumulate` use f32 operations in the GPU's order,
 * but a GPU compiler may fuse a multiply and an add into one FMA (one rounding
 * instead of two), so they agree with the GPU to about 1 ulp; outer_test.ts
 * records what the adapter in use does.
 *
 * @module
 */

/** An array the references write into. */
export type Floats = Float32Array | Float64Array;
/** An array the references read. */
export type FloatsIn = ArrayLike<number>;

const fr = Math.fround;

/** GELU's constant sqrt(2/pi). */
export const GELU_SCALE = Math.sqrt(2 / Math.PI);

/** LayerNorm's epsilon. */
export const LN_EPS = 1e-5;

// ---------------------------------------------------------------- residual

/** out = a + b (f32 add, bit-exact with the GPU). */
export function residualForwardRef(
  bufs: { a: FloatsIn; b: FloatsIn; out: Floats },
  shape: { n: number },
): void {
  const { a, b, out } = bufs;
  for (let i = 0; i < shape.n; i++) out[i] = a[i] + b[i];
}

/** dst += src (bit-exact with the GPU for Float32Array). */
export function accumulateRef(bufs: { dst: Floats; src: FloatsIn }, shape: { n: number }): void {
  const { dst, src } = bufs;
  for (let i = 0; i < shape.n; i++) dst[i] += src[i];
}

// -------------------------------------------------------------------- gelu

/** out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function geluForwardRef(bufs: { inp: FloatsIn; out: Floats }, shape: { n: number }): void {
  const { inp, out } = bufs;
  for (let i = 0; i < shape.n; i++) {
    const x = inp[i];
    out[i] = 0.5 * x * (1 + Math.tanh(GELU_SCALE * (x + 0.044715 * x * x * x)));
  }
}

/** dinp += gelu'(inp) * dout. */
export function geluBackwardRef(
  bufs: { dinp: Floats; inp: FloatsIn; dout: FloatsIn },
  shape: { n: number },
): void {
  const { dinp, inp, dout } = bufs;
  for (let i = 0; i < shape.n; i++) {
    const x = inp[i];
    const th = Math.tanh(GELU_SCALE * (x + 0.044715 * x * x * x));
    const sech2 = 1 - th * th;
    const grad = 0.5 * (1 + th) + x * 0.5 * sech2 * GELU_SCALE * (1 + 3 * 0.044715 * x * x);
    dinp[i] += grad * dout[i];
  }
}

// --------------------------------------------------------------- layernorm

/** Per row: out = (x - mean) * rstd * weight + bias; saves mean and rstd (eps 1e-5). */
export function layernormForwardRef(
  bufs: {
    inp: FloatsIn;
    weight: FloatsIn;
    bias: FloatsIn;
    out: Floats;
    mean: Floats;
    rstd: Floats;
  },
  shape: { rows: number; c: number },
): void {
  const { inp, weight, bias, out, mean, rstd } = bufs;
  const { rows, c } = shape;
  for (let r = 0; r < rows; r++) {
    const o = r * c;
    let m = 0;
    for (let i = 0; i < c; i++) m += inp[o + i];
    m /= c;
    let v = 0;
    for (let i = 0; i < c; i++) v += (inp[o + i] - m) ** 2;
    v /= c;
    const s = 1 / Math.sqrt(v + LN_EPS);
    for (let i = 0; i < c; i++) out[o + i] = (inp[o + i] - m) * s * weight[i] + bias[i];
    mean[r] = m;
    rstd[r] = s;
  }
}

/** Accumulates dinp, dweight, dbias of layernormForwardRef given dout. */
export function layernormBackwardRef(
  bufs: {
    dinp: Floats;
    dweight: Floats;
    dbias: Floats;
    dout: FloatsIn;
    inp: FloatsIn;
    weight: FloatsIn;
    mean: FloatsIn;
    rstd: FloatsIn;
  },
  shape: { rows: number; c: number },
): void {
  const { dinp, dweight, dbias, dout, inp, weight, mean, rstd } = bufs;
  const { rows, c } = shape;
  for (let r = 0; r < rows; r++) {
    const o = r * c;
    let dm = 0;
    let dnm = 0;
    for (let i = 0; i < c; i++) {
      const n = (inp[o + i] - mean[r]) * rstd[r];
      const dn = weight[i] * dout[o + i];
      dm += dn;
      dnm += dn * n;
    }
    dm /= c;
    dnm /= c;
    for (let i = 0; i < c; i++) {
      const n = (inp[o + i] - mean[r]) * rstd[r];
      const dn = weight[i] * dout[o + i];
      dbias[i] += dout[o + i];
      dweight[i] += n * dout[o + i];
      dinp[o + i] += (dn - dm - n * dnm) * rstd[r];
    }
  }
}

// --------------------------------------------------------------- embedding

/**
 * out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]. A token >= v (v defaults to
 * wte.length / c) yields NaN, like the GPU kernel.
 */
export function embeddingForwardRef(
  bufs: { tokens: ArrayLike<number>; wte: FloatsIn; wpe: FloatsIn; out: Floats },
  shape: { b: number; t: number; c: number; v?: number },
): void {
  const { tokens, wte, wpe, out } = bufs;
  const { b, t, c } = shape;
  const v = shape.v ?? Math.floor(wte.length / c);
  for (let p = 0; p < b * t; p++) {
    const tok = tokens[p];
    const pos = p % t;
    for (let i = 0; i < c; i++) {
      out[p * c + i] = tok < v ? wte[tok * c + i] + wpe[pos * c + i] : NaN;
    }
  }
}

/**
 * dwte[v,:] += sum of dout over the positions holding token v (in position
 * order, f32 sums like the GPU); dwpe[t,:] += sum over the batch of
 * dout[b,t,:]. Tokens >= v are skipped.
 */
export function embeddingBackwardRef(
  bufs: { tokens: ArrayLike<number>; dout: FloatsIn; dwte: Floats; dwpe: Floats },
  shape: { b: number; t: number; c: number; v: number },
): void {
  const { tokens, dout, dwte, dwpe } = bufs;
  const { b, t, c, v } = shape;
  const acc = new Float64Array(v * c);
  const f32 = dwte instanceof Float32Array;
  for (let p = 0; p < b * t; p++) {
    const tok = tokens[p];
    if (tok >= v) continue;
    for (let i = 0; i < c; i++) {
      const s = acc[tok * c + i] + dout[p * c + i];
      acc[tok * c + i] = f32 ? fr(s) : s;
    }
  }
  for (let i = 0; i < v * c; i++) dwte[i] += acc[i];
  for (let pos = 0; pos < t; pos++) {
    for (let i = 0; i < c; i++) {
      let s = 0;
      for (let bb = 0; bb < b; bb++) {
        s += dout[(bb * t + pos) * c + i];
        if (f32) s = fr(s);
      }
      dwpe[pos * c + i] += s;
    }
  }
}

// ------------------------------------------------------------ crossentropy

/**
 * Fused softmax + cross-entropy per row: losses[r] = -log softmax(logits[r])[target];
 * dlogits WRITTEN as (softmax - onehot) / rows (times `scale` instead, when given). A target
 * >= v gives a NaN loss.
 */
export function crossEntropyForwardBackwardRef(
  bufs: { logits: FloatsIn; targets: ArrayLike<number>; losses: Floats; dlogits: Floats },
  shape: { rows: number; v: number; scale?: number },
): void {
  const { logits, targets, losses, dlogits } = bufs;
  const { rows, v } = shape;
  const k = shape.scale ?? 1 / rows;
  for (let r = 0; r < rows; r++) {
    const o = r * v;
    let max = -Infinity;
    for (let i = 0; i < v; i++) max = Math.max(max, logits[o + i]);
    let sum = 0;
    for (let i = 0; i < v; i++) sum += Math.exp(logits[o + i] - max);
    const tgt = targets[r];
    losses[r] = tgt < v ? Math.log(sum) - (logits[o + tgt] - max) : NaN;
    for (let i = 0; i < v; i++) {
      const p = Math.exp(logits[o + i] - max) / sum;
      dlogits[o + i] = (p - (i === tgt ? 1 : 0)) * k;
    }
  }
}

/** out[0] = mean of losses[0..rows). */
export function meanLossRef(
  bufs: { losses: FloatsIn; out: Floats },
  shape: { rows: number },
): void {
  let s = 0;
  for (let i = 0; i < shape.rows; i++) s += bufs.losses[i];
  bufs.out[0] = s / shape.rows;
}

// --------------------------------------------------------------- attention

/**
 * The scaled scores of query row t of (batch bb, head h) against keys 0..t,
 * written to s[0..t]; returns their maximum.
 */
function causalScores(
  qkv: FloatsIn,
  s: Float64Array,
  at: { bb: number; h: number; t: number; T: number; C: number; hs: number; scale: number },
): number {
  const { bb, h, t, T, C, hs, scale } = at;
  const q = (bb * T + t) * 3 * C + h * hs;
  let max = -Infinity;
  for (let t2 = 0; t2 <= t; t2++) {
    const k = (bb * T + t2) * 3 * C + C + h * hs;
    let d = 0;
    for (let i = 0; i < hs; i++) d += qkv[q + i] * qkv[k + i];
    s[t2] = d * scale;
    max = Math.max(max, s[t2]);
  }
  return max;
}

/**
 * Causal multi-head attention. qkv is [B,T,3C] (q, k, v blocks; head h uses
 * columns h*hs..(h+1)*hs of each), out [B,T,C], att [B,NH,T,T] the softmax
 * probabilities (zero above the diagonal). Scores are scaled by 1/sqrt(hs).
 */
export function attentionForwardRef(
  bufs: { qkv: FloatsIn; out: Floats; att: Floats },
  shape: { b: number; t: number; c: number; nh: number },
): void {
  const { qkv, out, att } = bufs;
  const { b, t: T, c: C, nh } = shape;
  const hs = C / nh;
  const scale = 1 / Math.sqrt(hs);
  const s = new Float64Array(T);
  for (let bb = 0; bb < b; bb++) {
    for (let h = 0; h < nh; h++) {
      for (let t = 0; t < T; t++) {
        const max = causalScores(qkv, s, { bb, h, t, T, C, hs, scale });
        let sum = 0;
        for (let t2 = 0; t2 <= t; t2++) {
          s[t2] = Math.exp(s[t2] - max);
          sum += s[t2];
        }
        const a = ((bb * nh + h) * T + t) * T;
        for (let t2 = 0; t2 < T; t2++) att[a + t2] = t2 <= t ? s[t2] / sum : 0;
        const o = (bb * T + t) * C + h * hs;
        for (let i = 0; i < hs; i++) {
          let acc = 0;
          for (let t2 = 0; t2 <= t; t2++) {
            acc += (s[t2] / sum) * qkv[(bb * T + t2) * 3 * C + 2 * C + h * hs + i];
          }
          out[o + i] = acc;
        }
      }
    }
  }
}

/**
 * Accumulates dqkv of attentionForwardRef given dout and the saved att
 * (llm.c's attention_backward).
 */
export function attentionBackwardRef(
  bufs: { dqkv: Floats; dout: FloatsIn; qkv: FloatsIn; att: FloatsIn },
  shape: { b: number; t: number; c: number; nh: number },
): void {
  const { dqkv, dout, qkv, att } = bufs;
  const { b, t: T, c: C, nh } = shape;
  const hs = C / nh;
  const scale = 1 / Math.sqrt(hs);
  const datt = new Float64Array(T);
  const dpre = new Float64Array(T);
  for (let bb = 0; bb < b; bb++) {
    for (let h = 0; h < nh; h++) {
      for (let t = 0; t < T; t++) {
        const a = ((bb * nh + h) * T + t) * T;
        const q = (bb * T + t) * 3 * C + h * hs;
        const o = (bb * T + t) * C + h * hs;
        let dsum = 0;
        for (let t2 = 0; t2 <= t; t2++) {
          const v = (bb * T + t2) * 3 * C + 2 * C + h * hs;
          let d = 0;
          for (let i = 0; i < hs; i++) {
            d += qkv[v + i] * dout[o + i];
            dqkv[v + i] += att[a + t2] * dout[o + i];
          }
          datt[t2] = d;
          dsum += att[a + t2] * d;
        }
        for (let t2 = 0; t2 <= t; t2++) dpre[t2] = att[a + t2] * (datt[t2] - dsum);
        for (let t2 = 0; t2 <= t; t2++) {
          const k = (bb * T + t2) * 3 * C + C + h * hs;
          for (let i = 0; i < hs; i++) {
            dqkv[q + i] += qkv[k + i] * dpre[t2] * scale;
            dqkv[k + i] += qkv[q + i] * dpre[t2] * scale;
          }
        }
      }
    }
  }
}

/**
 * lse [B,NH,T] of attentionForwardRef: per query row, the natural log of the
 * softmax denominator plus the maximum scaled score (what flash attention keeps).
 */
export function attentionLseRef(
  bufs: { qkv: FloatsIn; lse: Floats },
  shape: { b: number; t: number; c: number; nh: number },
): void {
  const { qkv, lse } = bufs;
  const { b, t: T, c: C, nh } = shape;
  const hs = C / nh;
  const scale = 1 / Math.sqrt(hs);
  const s = new Float64Array(T);
  for (let bb = 0; bb < b; bb++) {
    for (let h = 0; h < nh; h++) {
      for (let t = 0; t < T; t++) {
        const max = causalScores(qkv, s, { bb, h, t, T, C, hs, scale });
        let sum = 0;
        for (let t2 = 0; t2 <= t; t2++) sum += Math.exp(s[t2] - max);
        lse[(bb * nh + h) * T + t] = max + Math.log(sum);
      }
    }
  }
}

// ------------------------------------------------------------------- adamw

/** out[0] = sqrt(sum of grads[i]^2). */
export function gradNormRef(bufs: { grads: FloatsIn; out: Floats }, shape: { n: number }): void {
  let s = 0;
  for (let i = 0; i < shape.n; i++) s += bufs.grads[i] * bufs.grads[i];
  bufs.out[0] = Math.sqrt(s);
}

/**
 * AdamW on elements offset..offset+n of params/grads/m/v. hyper = [lr, beta1,
 * beta2, eps, step_t, maxGradNorm]; gradients are scaled by
 * min(1, maxGradNorm / (norm + 1e-6)) (no clipping when maxGradNorm <= 0);
 * bias-corrected moments; decoupled weight decay as in llm.c:
 * p -= lr * (mhat / (sqrt(vhat) + eps) + weightDecay * p).
 */
export function adamwRef(
  bufs: {
    params: Floats;
    grads: FloatsIn;
    m: Floats;
    v: Floats;
    norm: FloatsIn;
    hyper: FloatsIn;
  },
  shape: { n: number; offset?: number; weightDecay: number },
): void {
  const { params, grads, m, v, norm, hyper } = bufs;
  const [lr, b1, b2, eps, step, maxNorm] = Array.from(hyper).slice(0, 6);
  const clip = maxNorm > 0 ? Math.min(1, maxNorm / (norm[0] + 1e-6)) : 1;
  const c1 = 1 - b1 ** step;
  const c2 = 1 - b2 ** step;
  const off = shape.offset ?? 0;
  for (let j = 0; j < shape.n; j++) {
    const i = off + j;
    const g = grads[i] * clip;
    m[i] = b1 * m[i] + (1 - b1) * g;
    v[i] = b2 * v[i] + (1 - b2) * g * g;
    const mh = m[i] / c1;
    const vh = v[i] / c2;
    params[i] -= lr * (mh / (Math.sqrt(vh) + eps) + shape.weightDecay * params[i]);
  }
}

// ------------------------------------------------------------------- outer

/** out = global - local (f32 subtract, bit-exact with the GPU). */
export function pseudoGradientRef(
  bufs: { global: FloatsIn; local: FloatsIn; out: Floats },
  shape: { n: number },
): void {
  const { global, local, out } = bufs;
  for (let i = 0; i < shape.n; i++) out[i] = fr(global[i] - local[i]);
}

/** 1/127 rounded to f32: scales are absmax * INV127 (one rounding, reproducible). */
export const INV127 = fr(1 / 127);

/** Blocks whose absmax is below 2^-100 quantize to zero (scale 0). */
export const QUANT_TINY = 2 ** -100;

/** Default quantization block. */
export const QUANT_BLOCK = 256;

/** Number of u32 words and f32 scales quantizeInt8 writes for n elements. */
export function quantizedSize(n: number, block: number = QUANT_BLOCK): {
  words: number;
  scales: number;
} {
  return { words: Math.ceil(n / 4), scales: Math.ceil(n / block) };
}

/**
 * The int8 scale of a block from its absmax: fround(amax * INV127), 0 when
 * amax < 2^-100, NaN when the block holds a NaN or infinity.
 *
 * @example
 * ```ts
 * import { int8Scale } from "./reference.ts";
 * console.log(int8Scale(127, true) === Math.fround(127 * Math.fround(1 / 127))); // true
 * ```
 */
export function int8Scale(amax: number, finite: boolean): number {
  return !finite ? NaN : amax < QUANT_TINY ? 0 : fr(amax * INV127);
}

/**
 * The int8 code of an f32 value at a block's scale: x / scale rounded half
 * away from zero, clamped to [-127, 127]; 0 when the scale is not positive
 * (a zero or NaN block). Never -0, so it decodes as the byte does.
 *
 * @example
 * ```ts
 * import { int8Code } from "./reference.ts";
 * console.log(int8Code(-0.75, 0.5), int8Code(1000, 0.5)); // -2 127
 * ```
 */
export function int8Code(x: number, scale: number): number {
  if (!(scale > 0)) return 0;
  // The f64 quotient of two f32 values decides the rounding exactly:
  // a true quotient is at least 2^-25 away from any non-exact half.
  const q = Math.min(127, Math.floor(Math.abs(x) / scale + 0.5));
  return x < 0 ? -q | 0 : q;
}

/**
 * Per-block absmax int8 quantization, bit-exact with the GPU kernel.
 * scale = fround(absmax * INV127) (0 when absmax < 2^-100, NaN when the block
 * holds a NaN or infinity, whose q are then 0); q = x / scale rounded half away
 * from zero, clamped to [-127, 127], packed little-endian 4 per u32 word (the
 * last word zero-padded). `block` must be a multiple of 4.
 */
export function quantizeInt8Ref(
  bufs: { x: FloatsIn; q: Uint32Array; scales: Float32Array },
  shape: { n: number; block?: number },
): void {
  const { x, q, scales } = bufs;
  const { n } = shape;
  const block = shape.block ?? QUANT_BLOCK;
  if (block % 4 !== 0 || block <= 0) {
    throw new RangeError(`Cannot quantize: block must be a positive multiple of 4, got ${block}`);
  }
  const nb = Math.ceil(n / block);
  for (let bi = 0; bi < nb; bi++) {
    const start = bi * block;
    const end = Math.min(n, start + block);
    let amax = 0;
    let finite = true;
    for (let i = start; i < end; i++) {
      const a = Math.abs(fr(x[i]));
      if (!Number.isFinite(a)) finite = false;
      else if (a > amax) amax = a;
    }
    const scale = int8Scale(amax, finite);
    scales[bi] = scale;
    for (let w = start / 4; w < Math.ceil(end / 4); w++) {
      let word = 0;
      for (let j = 0; j < 4; j++) {
        const i = w * 4 + j;
        const qi = i < end ? int8Code(fr(x[i]), scale) : 0;
        word |= (qi & 0xff) << (8 * j);
      }
      q[w] = word >>> 0;
    }
  }
}

/**
 * out[i] = q[i] * scale[block] (one f32 multiply, bit-exact with the GPU), or
 * out[i] += that with `accumulate` (an f32 add after the multiply).
 */
export function dequantizeInt8Ref(
  bufs: { q: Uint32Array; scales: FloatsIn; out: Floats },
  shape: { n: number; block?: number; accumulate?: boolean },
): void {
  const { q, scales, out } = bufs;
  const block = shape.block ?? QUANT_BLOCK;
  for (let i = 0; i < shape.n; i++) {
    const byte = (q[i >> 2] >>> (8 * (i & 3))) & 0xff;
    const qi = byte >= 128 ? byte - 256 : byte;
    const d = fr(qi * scales[Math.floor(i / block)]);
    out[i] = shape.accumulate ? fr(out[i] + d) : d;
  }
}

/**
 * SGD with Nesterov momentum (PyTorch's form) in f32 steps:
 * momentum = mu * momentum + delta; theta -= lr * (delta + mu * momentum).
 */
export function nesterovStepRef(
  bufs: { theta: Floats; momentum: Floats; delta: FloatsIn },
  shape: { n: number; lr: number; mu: number },
): void {
  const { theta, momentum, delta } = bufs;
  const lr = fr(shape.lr);
  const mu = fr(shape.mu);
  for (let i = 0; i < shape.n; i++) {
    const m = fr(fr(mu * momentum[i]) + delta[i]);
    momentum[i] = m;
    theta[i] = fr(theta[i] - fr(lr * fr(delta[i] + fr(mu * m))));
  }
}
