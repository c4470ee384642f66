/**
 * The int8 math of the outer exchange that trainers and aggregators share.
 *
 * Contributions and updates travel as int8 codes with one f32 scale per
 * block ({@linkcode quantizeInt8}, {@linkcode dequantizeInt8}, with the
 * kernels' CPU references, bit-exact with the GPU kernels). The aggregator
 * applies to its own θ exactly the dequantized update it sends, with
 * {@linkcode applyUpdate}; every trainer calls the same function on the same
 * θ_r and the same bytes, so all copies of θ_{r+1} are bit-identical, which
 * {@linkcode thetaHash} shows.
 *
 * @module
 */
import { sha256 } from "./_sha256.ts";
import { DEFAULT_BLOCK } from "./run_protocol.ts";
import { dequantizeInt8Ref, quantizedSize, quantizeInt8Ref } from "../kernels/reference.ts";

function words(q: Int8Array): Uint32Array {
  const nw = Math.ceil(q.length / 4);
  if (q.byteOffset % 4 === 0 && q.buffer.byteLength - q.byteOffset >= nw * 4) {
    return new Uint32Array(q.buffer, q.byteOffset, nw);
  }
  const copy = new Uint32Array(nw);
  new Int8Array(copy.buffer).set(q);
  return copy;
}

/**
 * Quantizes `x` to int8 with one f32 scale per block, with the kernels'
 * reference ({@linkcode quantizeInt8Ref}, bit-exact with the GPU kernel):
 * scale = absmax / 127 (0 for a zero block, NaN for a non-finite one),
 * q = round(x / scale) clamped to [-127, 127]. The codes come back as an
 * Int8Array (the little-endian bytes of the kernel's packed u32 words).
 *
 * @example
 * ```ts
 * import { quantizeInt8 } from "./int8_exchange.ts";
 * const { q } = quantizeInt8(new Float32Array([1, -0.5, 0.25]), { block: 256 });
 * console.log(q); // Int8Array [127, -64, 32]
 * ```
 */
export function quantizeInt8(
  x: Float32Array,
  options: { block?: number } = {},
): { q: Int8Array; scales: Float32Array } {
  const block = options.block ?? DEFAULT_BLOCK;
  const n = x.length;
  const size = quantizedSize(n, block);
  const packed = new Uint32Array(size.words);
  const scales = new Float32Array(size.scales);
  quantizeInt8Ref({ x, q: packed, scales }, { n, block });
  return { q: new Int8Array(packed.buffer, 0, n), scales };
}

/**
 * Dequantizes into `out`: out[i] = f32(q[i] * scale[block of i]), or
 * out[i] = f32(out[i] + that) when `accumulate` is set, with the kernels'
 * reference ({@linkcode dequantizeInt8Ref}). `out` defaults to a new array.
 *
 * @example
 * ```ts
 * import { dequantizeInt8 } from "./int8_exchange.ts";
 * const out = dequantizeInt8(new Int8Array([2, -1]), new Float32Array([0.5]));
 * console.log(out); // Float32Array [1, -0.5]
 * ```
 */
export function dequantizeInt8(
  q: Int8Array,
  scales: Float32Array,
  options: { block?: number; out?: Float32Array; accumulate?: boolean } = {},
): Float32Array {
  const block = options.block ?? DEFAULT_BLOCK;
  const out = options.out ?? new Float32Array(q.length);
  dequantizeInt8Ref(
    { q: words(q), scales, out },
    { n: q.length, block, accumulate: options.accumulate ?? false },
  );
  return out;
}

/**
 * Applies a round's update to θ in place: θ[i] = f32(θ[i] + f32(q[i] * scale)).
 * Trainers and aggregators both use this one function, which is what makes
 * their copies of θ_{r+1} bit-identical.
 *
 * @example
 * ```ts
 * import { applyUpdate } from "./int8_exchange.ts";
 * const theta = new Float32Array([1, 1]);
 * applyUpdate(theta, { q: new Int8Array([2, -2]), scales: new Float32Array([0.25]) });
 * console.log(theta); // Float32Array [1.5, 0.5]
 * ```
 */
export function applyUpdate(
  theta: Float32Array,
  update: { q: Int8Array; scales: Float32Array },
  options: { block?: number } = {},
): Float32Array {
  if (update.q.length !== theta.length) {
    throw new RangeError(
      `Cannot apply update: θ has ${theta.length} elements, update ${update.q.length}`,
    );
  }
  // This runs on every trainer every round: a block at a time, not through dequantizeInt8.
  return addDecodedInt8(theta, update, { block: options.block ?? DEFAULT_BLOCK });
}

/**
 * Adds the decoded values of int8 codes [from, to) into `out` (value i at
 * out[i - from]), each weighted: out[i - from] = f32(out + f32(weight ×
 * f32(q[i] × scale))). With weight 1 (the default) that is dequantizeInt8's
 * accumulate, bit for bit; the aggregator's token-weighted mean sums its
 * contributions with it. A block at a time, its scale at hand: `from` must be
 * a multiple of the block.
 *
 * @example
 * ```ts
 * import { addDecodedInt8 } from "./int8_exchange.ts";
 * const out = new Float32Array([1, 1]);
 * addDecodedInt8(out, { q: new Int8Array([2, -2]), scales: new Float32Array([0.25]) },
 *   { block: 256, weight: 0.5 });
 * console.log(out); // Float32Array [1.25, 0.75]
 * ```
 */
export function addDecodedInt8(
  out: Float32Array,
  codes: { q: Int8Array; scales: Float32Array },
  options: { block: number; weight?: number; from?: number; to?: number },
): Float32Array {
  const { q, scales } = codes;
  const { block, weight = 1, from = 0, to = q.length } = options;
  for (let s = from, k = from / block; s < to; s += block, k++) {
    const scale = scales[k];
    const end = Math.min(to, s + block);
    for (let i = s; i < end; i++) out[i - from] += Math.fround(weight * Math.fround(q[i] * scale));
  }
  return out;
}

/** L2 norm of a dequantized int8 tensor, computed from its codes and scales. */
export function quantizedNorm(
  q: Int8Array,
  scales: Float32Array,
  options: { block?: number } = {},
): number {
  const block = options.block ?? DEFAULT_BLOCK;
  let total = 0;
  for (let b = 0, lo = 0; lo < q.length; b++, lo += block) {
    const hi = Math.min(q.length, lo + block);
    let s2 = 0;
    for (let i = lo; i < hi; i++) s2 += q[i] * q[i];
    total += s2 * scales[b] * scales[b];
  }
  return Math.sqrt(total);
}

/**
 * SHA-256 of θ's bytes as a hex prefix (16 characters): the fingerprint that
 * shows all trainers start a round from bit-identical parameters.
 *
 * @example
 * ```ts
 * import { thetaHash } from "./int8_exchange.ts";
 * console.log((await thetaHash(new Float32Array([1, 2]))).length); // 16
 * ```
 */
export async function thetaHash(theta: Float32Array): Promise<string> {
  const digest = await sha256(new Uint8Array(theta.buffer, theta.byteOffset, theta.byteLength));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}
