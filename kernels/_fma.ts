/**
 * f32 rounding helpers for tests of kernels that a GPU compiler may contract
 * into fused multiply-adds: a correctly rounded f32 FMA and the f32 ulp.
 *
 * @module
 */

const f64 = new Float64Array(1);
const bits64 = new BigUint64Array(f64.buffer);
const f32 = new Float32Array(1);
const bits32 = new Uint32Array(f32.buffer);

/**
 * fma(a, b, c) = round_f32(a·b + c) with one rounding, as a GPU's fused
 * multiply-add computes it, for f32 a, b, c. a·b is exact in f64 (48
 * significant bits at most); the f64 sum is made round-to-odd (from its
 * TwoSum error), which then rounds to the correct f32 because f64 carries at
 * least two bits more than f32.
 *
 * @example
 * ```ts
 * import { fmaF32 } from "./_fma.ts";
 * const a = 1 + 2 ** -12;
 * // a·a = 1 + 2^-11 + 2^-24: the separate product rounds the 2^-24 away.
 * console.log(fmaF32(a, a, -1) === 2 ** -11 + 2 ** -24); // true
 * console.log(Math.fround(Math.fround(a * a) - 1) === 2 ** -11); // true
 * ```
 */
export function fmaF32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  if (!Number.isFinite(s)) return Math.fround(s);
  const bb = s - p;
  const err = (p - (s - bb)) + (c - bb);
  if (err === 0) return Math.fround(s);
  f64[0] = s;
  // Truncate toward zero (s was rounded away from it when err points the other way), then
  // make the last bit odd: s ≠ 0 here, since p + c rounds to 0 only when it is exactly 0.
  if ((err > 0) !== (s > 0)) bits64[0] -= 1n;
  bits64[0] |= 1n;
  return Math.fround(f64[0]);
}

/**
 * The spacing of f32 values just above |x| (x rounded to f32 first): 2^-149
 * at 0, Infinity at Infinity, NaN for NaN.
 *
 * @example
 * ```ts
 * import { ulpF32 } from "./_fma.ts";
 * console.log(ulpF32(1) === 2 ** -23, ulpF32(-3) === 2 ** -22, ulpF32(0) === 2 ** -149); // true true true
 * ```
 */
export function ulpF32(x: number): number {
  f32[0] = Math.abs(x);
  const v = f32[0];
  if (!Number.isFinite(v)) return v === Infinity ? Infinity : NaN;
  bits32[0] += 1;
  return f32[0] - v;
}
