/**
 * IEEE binary16 (f16) on the CPU: the bit-level conversions that the `cast`
 * kernel (kernels/cast.ts) mirrors, and the packing of f16 tensors into the
 * 4-byte words that {@linkcode TensorRef} lengths count.
 *
 * The conversions work on bits, not on JS numbers: how an engine carries a
 * NaN's payload through a `number` is implementation-defined (V8 keeps some
 * payloads, drops others), and the GPU twin must match to the bit. A NaN
 * becomes the quiet NaN of its sign (f16 `0x7e00`, f32 `0x7fc00000`); every
 * other value rounds to nearest, ties to even, with f16 subnormals, and
 * overflows to infinity, exactly as `Math.f16round` does.
 *
 * @module
 */

/** The 4-byte words that hold `n` f16 values (two per word, the first in the low half). */
export function halfWords(n: number): number {
  return Math.ceil(n / 2);
}

/**
 * The f16 bits nearest to the f32 with bits `x` (round to nearest, ties to
 * even; beyond 65504 + half an ulp, infinity; NaN to the quiet NaN of its sign).
 *
 * @example
 * ```ts
 * import { f32BitsToF16Bits } from "./half.ts";
 * console.log(f32BitsToF16Bits(0x3f800000).toString(16)); // "3c00" (1.0)
 * ```
 */
export function f32BitsToF16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00);
  // f32 exponents 113..142 are f16's normal range (2^-14 .. 2^15); a carry out of the
  // mantissa steps into the exponent, and from 0x7bff into infinity, as it should.
  if (exp >= 113) {
    if (exp > 142) return sign | 0x7c00;
    const h = ((exp - 112) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    return sign | (rest > 0x1000 || (rest === 0x1000 && (h & 1)) ? h + 1 : h);
  }
  // Below 2^-25 (half the smallest subnormal) everything rounds to zero; 2^-25 itself is a tie.
  if (exp < 102) return sign;
  // Subnormal: the 24-bit significand in units of 2^-24.
  const full = mant | 0x800000;
  const shift = 126 - exp;
  const h = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  return sign | (rest > halfway || (rest === halfway && (h & 1)) ? h + 1 : h);
}

/**
 * The f32 bits of the f16 with bits `h` (exact; NaN to the quiet NaN of its sign).
 *
 * @example
 * ```ts
 * import { f16BitsToF32Bits } from "./half.ts";
 * console.log(f16BitsToF32Bits(0x3c00).toString(16)); // "3f800000" (1.0)
 * ```
 */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | (mant !== 0 ? 0x7fc00000 : 0x7f800000)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // Subnormal: mant·2^-24 with its top bit at p is 2^(p-24)·1.f.
  const p = 31 - Math.clz32(mant);
  return (sign | ((p + 103) << 23) | ((mant << (23 - p)) & 0x7fffff)) >>> 0;
}

/**
 * The f16 bits of each value (see {@linkcode f32BitsToF16Bits}).
 *
 * @example
 * ```ts
 * import { toF16Bits } from "./half.ts";
 * console.log(toF16Bits(new Float32Array([1, 65520]))); // Uint16Array [15360, 31744]
 * ```
 */
export function toF16Bits(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  return Uint16Array.from(bits, f32BitsToF16Bits);
}

/**
 * The f32 values of f16 bits (see {@linkcode f16BitsToF32Bits}).
 *
 * @example
 * ```ts
 * import { fromF16Bits } from "./half.ts";
 * console.log(fromF16Bits(new Uint16Array([0x3c00, 0x0001]))); // Float32Array [1, 5.960464477539063e-8]
 * ```
 */
export function fromF16Bits(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = f16BitsToF32Bits(bits[i]);
  return new Float32Array(out.buffer);
}

/**
 * Each value rounded to the nearest f16, as f32: what an f16 tensor holds.
 *
 * @example
 * ```ts
 * import { roundToF16 } from "./half.ts";
 * console.log(roundToF16(new Float32Array([0.1]))); // Float32Array [0.0999755859375]
 * ```
 */
export function roundToF16(values: Float32Array): Float32Array {
  return fromF16Bits(toF16Bits(values));
}

/**
 * f16 bits packed two to a word, the first in the low half (WGSL's
 * `array<f16>` layout on little-endian hosts; WebGPU's only byte order), the
 * last word's high half zero when the count is odd: what to upload with
 * `gpu.storage`.
 *
 * @example
 * ```ts
 * import { packHalves } from "./half.ts";
 * console.log(packHalves(new Uint16Array([0x3c00, 0x4000, 0x4200]))); // Uint32Array [1073757184, 16896]
 * ```
 */
export function packHalves(bits: Uint16Array): Uint32Array {
  const words = new Uint32Array(halfWords(bits.length));
  new Uint16Array(words.buffer).set(bits);
  return words;
}

/**
 * The first `n` f16 values of packed words, as bits (the inverse of {@linkcode packHalves}).
 *
 * @example
 * ```ts
 * import { packHalves, unpackHalves } from "./half.ts";
 * console.log(unpackHalves(packHalves(new Uint16Array([1, 2, 3])), 3)); // Uint16Array [1, 2, 3]
 * ```
 */
export function unpackHalves(words: Uint32Array, n: number): Uint16Array {
  if (n > words.length * 2) {
    throw new RangeError(`Cannot unpack f16 values: ${n} > 2 x ${words.length} words`);
  }
  return new Uint16Array(words.buffer, words.byteOffset, n).slice();
}
