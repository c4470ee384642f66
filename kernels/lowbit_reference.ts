/**
 * TypeScript twins of the 4-bit and top-k exchange kernels (kernels/lowbit.ts),
 * bit-exact with them on every adapter: each result is either integer
 * arithmetic on f32 bits or one correctly rounded f32 operation.
 *
 * Layouts (the GPU's; actors/exchange.ts turns them into wire messages):
 * - int4: u32 words of 8 codes each, element 8w+j in bits 4j..4j+3 (so byte b
 *   holds elements 2b, low nibble, and 2b+1), a code a 4-bit two's complement
 *   in [-7, 7]; scale = absmax × f32(1/7) per block.
 * - top-k: one u32 slot per sent value, offset in its block in bits 0-7 and
 *   the value's int8 code in bits 8-15; block b's slots start at
 *   b × topkPerBlock(F, block), in increasing offset. The block's scale is
 *   the int8 one (absmax × f32(1/127)); the block's largest value is always
 *   among those sent.
 *
 * As for int8, a block whose absmax is below 2^-100 has scale 0, and a block
 * holding a NaN or infinity has scale NaN and codes 0 (top-k then sends
 * offsets 0..k-1), so the bad value shows up after dequantization.
 *
 * @module
 */
import {
  dequantizeInt8Ref,
  INV127,
  QUANT_TINY,
  quantizedSize,
  quantizeInt8Ref,
} from "./reference.ts";
import { type ExchangeFormat, topkPerBlock } from "./exchange_format.ts";

const fr = Math.fround;

/** 1/7 rounded to f32: int4 scales are absmax * INV7. */
export const INV7 = fr(1 / 7);

/** The bits of |x| as an f32 (a key that orders magnitudes, NaN above infinity). */
function magBits(x: number): number {
  F32[0] = x;
  return U32[0] & 0x7fffffff;
}
const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** A block's scale: NaN when it holds a non-finite value, 0 when tiny, else absmax × inv. */
function blockScale(x: ArrayLike<number>, start: number, end: number, inv: number): number {
  let amax = 0;
  for (let i = start; i < end; i++) {
    const a = Math.abs(fr(x[i]));
    if (!Number.isFinite(a)) return NaN;
    if (a > amax) amax = a;
  }
  return amax < QUANT_TINY ? 0 : fr(amax * inv);
}

/** round(|x| / scale) half away from zero, clamped to `max`, with x's sign. */
function code(x: number, scale: number, max: number): number {
  if (!(scale > 0)) return 0;
  const xi = fr(x);
  // The f64 quotient of two f32 values decides the rounding exactly.
  const m = Math.min(max, Math.floor(Math.abs(xi) / scale + 0.5));
  return xi < 0 ? -m : m;
}

/** u32 words and f32 scales quantizeInt4Ref writes for n values. */
export function int4Size(n: number, block: number): { words: number; scales: number } {
  return { words: Math.ceil(n / 8), scales: Math.ceil(n / block) };
}

/**
 * Per-block absmax 4-bit quantization (see the module comment); `block` must
 * be a multiple of 8.
 *
 * @example
 * ```ts
 * import { quantizeInt4Ref } from "./lowbit_reference.ts";
 * const q = new Uint32Array(1), scales = new Float32Array(1);
 * quantizeInt4Ref({ x: [7, -1, 3.5], q, scales }, { n: 3, block: 8 });
 * console.log(q[0].toString(16), scales[0]); // "4f7" 1
 * ```
 */
export function quantizeInt4Ref(
  bufs: { x: ArrayLike<number>; q: Uint32Array; scales: Float32Array },
  shape: { n: number; block: number },
): void {
  const { x, q, scales } = bufs;
  const { n, block } = shape;
  if (!(block > 0) || block % 8 !== 0) {
    throw new RangeError(
      `Cannot quantize to int4: block must be a positive multiple of 8, got ${block}`,
    );
  }
  for (let start = 0, b = 0; start < n; start += block, b++) {
    const end = Math.min(n, start + block);
    const s = blockScale(x, start, end, INV7);
    scales[b] = s;
    for (let w = start / 8; w < Math.ceil(end / 8); w++) {
      let word = 0;
      for (let j = 0; j < 8; j++) {
        const i = w * 8 + j;
        if (i < end) word |= (code(x[i], s, 7) & 0xf) << (4 * j);
      }
      q[w] = word >>> 0;
    }
  }
}

/** The int4 code of element i (-8..7). */
export function int4At(q: Uint32Array, i: number): number {
  const nib = (q[i >> 3] >>> (4 * (i & 7))) & 0xf;
  return nib >= 8 ? nib - 16 : nib;
}

/**
 * out[i] = f32(code[i] × scale[block of i]), one rounded multiply.
 *
 * @example
 * ```ts
 * import { dequantizeInt4Ref } from "./lowbit_reference.ts";
 * const out = new Float32Array(2);
 * dequantizeInt4Ref({ q: new Uint32Array([0xf7]), scales: [0.5], out }, { n: 2, block: 8 });
 * console.log(out); // Float32Array [3.5, -0.5]
 * ```
 */
export function dequantizeInt4Ref(
  bufs: { q: Uint32Array; scales: ArrayLike<number>; out: Float32Array },
  shape: { n: number; block: number },
): void {
  const { q, scales, out } = bufs;
  for (let i = 0; i < shape.n; i++) out[i] = fr(int4At(q, i) * scales[Math.floor(i / shape.block)]);
}

/** Slots and f32 scales selectTopkRef writes for n values. */
export function topkSlots(
  n: number,
  f: { block: number; fraction: number },
): { slots: number; scales: number } {
  const k = topkPerBlock(f.fraction, f.block);
  const blocks = Math.ceil(n / f.block);
  const last = n - (blocks - 1) * f.block;
  return { slots: (blocks - 1) * k + topkPerBlock(f.fraction, last), scales: blocks };
}

/**
 * Per block, the topkPerBlock(F, len) values largest in magnitude (ties: the
 * lower offset) with their int8 codes under the block's int8 scale, as
 * slots in increasing offset; `block` at most 256.
 *
 * @example
 * ```ts
 * import { selectTopkRef } from "./lowbit_reference.ts";
 * const slots = new Uint32Array(2), scales = new Float32Array(1);
 * selectTopkRef({ x: [0.1, -2, 0, 1], slots, scales }, { n: 4, block: 4, fraction: 0.5 });
 * console.log(Array.from(slots, (s) => [s & 0xff, (s << 16) >> 24])); // [[1, -127], [3, 64]]
 * ```
 */
export function selectTopkRef(
  bufs: { x: ArrayLike<number>; slots: Uint32Array; scales: Float32Array },
  shape: { n: number; block: number; fraction: number },
): void {
  const { x, slots, scales } = bufs;
  const { n, block, fraction } = shape;
  if (!(block > 0) || block > 256 || block % 4 !== 0) {
    throw new RangeError(
      `Cannot select top-k: block must be a multiple of 4 up to 256, got ${block}`,
    );
  }
  const kFull = topkPerBlock(fraction, block);
  for (let start = 0, b = 0; start < n; start += block, b++) {
    const end = Math.min(n, start + block);
    const k = topkPerBlock(fraction, end - start);
    const s = blockScale(x, start, end, INV127);
    scales[b] = s;
    const base = b * kFull;
    if (!(s > 0)) {
      for (let j = 0; j < k; j++) slots[base + j] = j;
      continue;
    }
    const order = Array.from({ length: end - start }, (_, o) => o);
    const key = order.map((o) => magBits(x[start + o]));
    order.sort((a, c) => key[c] - key[a] || a - c);
    const chosen = order.slice(0, k).sort((a, c) => a - c);
    for (let j = 0; j < k; j++) {
      const o = chosen[j];
      slots[base + j] = (o | ((code(x[start + o], s, 127) & 0xff) << 8)) >>> 0;
    }
  }
}

/**
 * out[i] = f32(code × scale) for the sent values, 0 for the others.
 *
 * @example
 * ```ts
 * import { dequantizeTopkRef } from "./lowbit_reference.ts";
 * const out = new Float32Array(4);
 * dequantizeTopkRef({ slots: new Uint32Array([0x8101, 0x4003]), scales: [0.5], out },
 *   { n: 4, block: 4, fraction: 0.5 });
 * console.log(out); // Float32Array [0, -63.5, 0, 32]
 * ```
 */
export function dequantizeTopkRef(
  bufs: { slots: Uint32Array; scales: ArrayLike<number>; out: Float32Array },
  shape: { n: number; block: number; fraction: number },
): void {
  const { slots, scales, out } = bufs;
  const { n, block, fraction } = shape;
  out.fill(0, 0, n);
  const kFull = topkPerBlock(fraction, block);
  for (let start = 0, b = 0; start < n; start += block, b++) {
    const k = topkPerBlock(fraction, Math.min(n, start + block) - start);
    for (let j = 0; j < k; j++) {
      const w = slots[b * kFull + j];
      const c = ((w >>> 8) & 0xff) << 24 >> 24;
      // An offset past a short last block is ignored, as on the GPU.
      if (start + (w & 0xff) < n) out[start + (w & 0xff)] = fr(c * scales[b]);
    }
  }
}

/** A vector in an exchange format's GPU layout: int8/int4 code words or top-k slots, and scales. */
export interface Coded {
  codes: Uint32Array;
  scales: Float32Array;
}

/** The GPU layout's sizes for n values in format f: u32 code words (or slots) and scales. */
export function codedSize(n: number, f: ExchangeFormat): { words: number; scales: number } {
  if (f.kind === "int8") return quantizedSize(n, f.block);
  if (f.kind === "int4") return int4Size(n, f.block);
  const t = topkSlots(n, f);
  return { words: t.slots, scales: t.scales };
}

/**
 * Encodes n values in format f, as the GPU kernels do.
 *
 * @example
 * ```ts
 * import { encodeRef } from "./lowbit_reference.ts";
 * import { parseExchange } from "./exchange_format.ts";
 * console.log(encodeRef(parseExchange("int4"), new Float32Array([7, -7])).scales); // Float32Array [1]
 * ```
 */
export function encodeRef(f: ExchangeFormat, x: Float32Array): Coded {
  const n = x.length;
  const size = codedSize(n, f);
  const out = { x, q: new Uint32Array(size.words), scales: new Float32Array(size.scales) };
  if (f.kind === "int8") quantizeInt8Ref(out, { n, block: f.block });
  else if (f.kind === "int4") quantizeInt4Ref(out, { n, block: f.block });
  else selectTopkRef({ x, slots: out.q, scales: out.scales }, { n, ...f });
  return { codes: out.q, scales: out.scales };
}

/** Decodes n values of format f into `out` (default a new array), as the GPU kernels do. */
export function decodeRef(
  f: ExchangeFormat,
  coded: Coded,
  n: number,
  out: Float32Array = new Float32Array(n),
): Float32Array {
  const { codes, scales } = coded;
  if (f.kind === "int8") dequantizeInt8Ref({ q: codes, scales, out }, { n, block: f.block });
  else if (f.kind === "int4") dequantizeInt4Ref({ q: codes, scales, out }, { n, block: f.block });
  else dequantizeTopkRef({ slots: codes, scales, out }, { n, ...f });
  return out;
}

/**
 * Error feedback, the twin of kernels/lowbit.ts `feedbackDispatches`: encodes
 * x = f32(delta + residual) and leaves in `residual` what the code did not
 * carry, f32(x − decoded).
 *
 * @example
 * ```ts
 * import { feedbackEncodeRef } from "./lowbit_reference.ts";
 * import { parseExchange } from "./exchange_format.ts";
 * const residual = new Float32Array(4);
 * feedbackEncodeRef(parseExchange("topk:0.25"), new Float32Array([1, 0.5, 0, 0]), residual);
 * console.log(residual); // Float32Array [0, 0.5, 0, 0]
 * ```
 */
export function feedbackEncodeRef(
  f: ExchangeFormat,
  delta: Float32Array,
  residual: Float32Array,
  work?: { x: Float32Array; sent: Float32Array },
): Coded {
  const n = delta.length;
  // Work arrays of n floats each, overwritten whole (a caller may reuse them);
  // x may be delta itself (each element is read before it is written).
  const x = work?.x.subarray(0, n) ?? new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = fr(delta[i] + residual[i]);
  const coded = encodeRef(f, x);
  const sent = decodeRef(f, coded, n, work?.sent.subarray(0, n));
  for (let i = 0; i < n; i++) residual[i] = fr(x[i] - sent[i]);
  return coded;
}
