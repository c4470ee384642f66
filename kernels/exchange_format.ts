/**
 * The pseudo-gradient exchange formats a run can use (`--exchange`), their
 * names and the sizes of their codes, on the GPU and on the wire.
 *
 * - `int8`: one int8 code per value, one f32 scale per block of 256 (the
 *   default; no trainer-side error feedback: its error is small).
 * - `int4`: 4-bit codes in [-7, 7], two per byte, one f32 scale per block of
 *   64 values. With only 15 levels, one large value in a block flattens every
 *   other value of the block to 0; 64 keeps that reach short at a scale cost
 *   of 1/16 byte per value (block 128 would save 1/32 byte, 6% of the int4
 *   bytes, and double the reach). 0.5625 bytes per value.
 * - `topk:F`: in every block of 256 values, the ceil(F × 256) largest in
 *   magnitude (ties: the lower index), each sent as its offset in the block
 *   (one byte) and its int8 code under the block's int8 scale. Per block, not
 *   over the whole vector: a block is one GPU invocation with no global sort,
 *   every message has a length fixed by n, and an offset fits a byte where a
 *   global index takes four. At F = 0.05: 13 of 256, 0.117 bytes per value.
 *
 * int4 and top-k lose much more than int8 in one round, so trainers keep
 * what they did not send (error feedback, kernels/lowbit.ts) and add it to
 * the next round's pseudo-gradient.
 *
 * @module
 */

/** An exchange format, parsed. */
export type ExchangeFormat =
  | { kind: "int8"; block: number }
  | { kind: "int4"; block: number }
  | { kind: "topk"; block: number; fraction: number };

/** The exchange format of a run that names none. */
export const DEFAULT_EXCHANGE = "int8";

/** Values per int4 scale. */
export const INT4_BLOCK = 64;

/** Values per top-k block (offsets in a block fit one byte). */
export const TOPK_BLOCK = 256;

/** Values per int8 scale (the run protocol's DEFAULT_BLOCK). */
const INT8_BLOCK = 256;

/**
 * Parses an exchange name: `int8`, `int4` or `topk:F` with 0 < F <= 1;
 * a RangeError names what was wrong.
 *
 * @example
 * ```ts
 * import { parseExchange } from "./exchange_format.ts";
 * console.log(parseExchange("topk:0.05")); // { kind: "topk", block: 256, fraction: 0.05 }
 * ```
 */
export function parseExchange(name: string): ExchangeFormat {
  if (name === "int8") return { kind: "int8", block: INT8_BLOCK };
  if (name === "int4") return { kind: "int4", block: INT4_BLOCK };
  const m = /^topk:(.+)$/.exec(name);
  if (m) {
    const f = Number(m[1]);
    if (!/^\s*[0-9.eE+-]+\s*$/.test(m[1]) || !(f > 0 && f <= 1)) {
      throw new RangeError(
        `Invalid exchange "${name}": the top-k fraction must be a number in (0, 1]`,
      );
    }
    return { kind: "topk", block: TOPK_BLOCK, fraction: f };
  }
  throw new RangeError(`Invalid exchange "${name}" (known: int8, int4, topk:F with 0 < F <= 1)`);
}

/**
 * The canonical name of a format (`topk:.05` and `topk:0.05` are one format).
 *
 * @example
 * ```ts
 * import { exchangeName, parseExchange } from "./exchange_format.ts";
 * console.log(exchangeName(parseExchange("topk:.05"))); // "topk:0.05"
 * ```
 */
export function exchangeName(f: ExchangeFormat): string {
  return f.kind === "topk" ? `topk:${f.fraction}` : f.kind;
}

/** Values a top-k block of `len` values sends: ceil(fraction × len), at least 1. */
export function topkPerBlock(fraction: number, len: number): number {
  return Math.min(len, Math.max(1, Math.ceil(fraction * len)));
}

/** Top-k values sent for n values: full blocks, then the last (possibly shorter) one. */
export function topkCount(n: number, f: { block: number; fraction: number }): number {
  const full = Math.floor(n / f.block);
  const rest = n - full * f.block;
  return full * topkPerBlock(f.fraction, f.block) + (rest ? topkPerBlock(f.fraction, rest) : 0);
}

/** What n values encode to: bytes of codes, top-k offsets, and f32 scales. */
export interface EncodedSize {
  /** Bytes of codes (`q`): int8 one a value, int4 one per two, top-k one per sent value. */
  codes: number;
  /** Offset bytes (`idx`, top-k only; 0 otherwise). */
  offsets: number;
  /** f32 scales, one per block. */
  scales: number;
}

/**
 * The wire sizes of n values in format f (the tensors only; msgpack adds its
 * framing).
 *
 * @example
 * ```ts
 * import { encodedSize, parseExchange } from "./exchange_format.ts";
 * console.log(encodedSize(1000, parseExchange("int4"))); // { codes: 500, offsets: 0, scales: 16 }
 * ```
 */
export function encodedSize(n: number, f: ExchangeFormat): EncodedSize {
  const scales = Math.ceil(n / f.block);
  if (f.kind === "int8") return { codes: n, offsets: 0, scales };
  if (f.kind === "int4") return { codes: Math.ceil(n / 2), offsets: 0, scales };
  const k = topkCount(n, f);
  return { codes: k, offsets: k, scales };
}

/** Whether the trainers of a run in format f keep the residual of what they did not send. */
export function usesFeedback(f: ExchangeFormat): boolean {
  return f.kind !== "int8";
}
