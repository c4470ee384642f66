/**
 * The exchange formats on the wire (kernels/exchange_format.ts names them):
 * how a trainer's GPU codes become a contribution's tensors, how they are cut
 * into shards, checked, and decoded by the aggregator; and how an update
 * coded the same way (a run's `updateExchange`) is applied by everyone.
 *
 * A contribution carries `format` (absent: int8), `q` (code bytes: int8 one a
 * value, int4 two values a byte, low nibble first, top-k one int8 code a sent
 * value), `idx` (top-k only: each sent value's offset in its block of 256,
 * increasing within a block) and `scales` (one f32 per block of the format).
 * Decoding is the kernels' TypeScript twin (kernels/lowbit_reference.ts), so
 * the aggregator's fp32 values are those the trainer's GPU subtracted from
 * its residual.
 *
 * @module
 */
import {
  encodedSize,
  type ExchangeFormat,
  exchangeName,
  parseExchange,
  topkCount,
  topkPerBlock,
} from "../kernels/exchange_format.ts";
import { type Coded, decodeRef } from "../kernels/lowbit_reference.ts";
import { applyUpdate, quantizedNorm } from "./int8_exchange.ts";

/** A vector's tensors on the wire. */
export interface Encoded {
  /** Code bytes (see the module comment). */
  q: Int8Array;
  /** Top-k offsets in their blocks; absent for int8 and int4. */
  idx?: Uint8Array;
  /** One f32 scale per block. */
  scales: Float32Array;
}

/** What is wrong with an encoded vector, for a named refusal. */
export interface EncodedProblem {
  /** "wrong_shape": a length; "bad_index": a top-k offset out of range or repeated. */
  reason: "wrong_shape" | "bad_index";
  /** The field at fault. */
  field: "q" | "idx" | "scales";
  detail: string;
}

/** The canonical name of a message's format (absent: int8); throws a RangeError for an unknown one. */
export function formatOf(m: { format?: string }): string {
  return m.format === undefined ? "int8" : exchangeName(parseExchange(m.format));
}

/**
 * The wire form of a vector of n values coded on the GPU (or by the twins).
 *
 * @example
 * ```ts
 * import { toWire } from "./exchange.ts";
 * import { parseExchange } from "../kernels/exchange_format.ts";
 * import { encodeRef } from "../kernels/lowbit_reference.ts";
 * const f = parseExchange("int4");
 * console.log(toWire(f, encodeRef(f, new Float32Array([7, -1, 3])), 3).q); // Int8Array [-9, 3]
 * ```
 */
export function toWire(f: ExchangeFormat, coded: Coded, n: number): Encoded {
  if (f.kind === "topk") {
    const k = coded.codes.length;
    const q = new Int8Array(k);
    const idx = new Uint8Array(k);
    for (let j = 0; j < k; j++) {
      idx[j] = coded.codes[j] & 0xff;
      q[j] = (coded.codes[j] >>> 8) & 0xff;
    }
    return { q, idx, scales: coded.scales };
  }
  const bytes = new Int8Array(coded.codes.buffer, coded.codes.byteOffset, coded.codes.byteLength);
  return { q: bytes.subarray(0, encodedSize(n, f).codes), scales: coded.scales };
}

/** The GPU layout of a wire vector (the twins decode it). */
function fromWire(f: ExchangeFormat, e: Encoded): Coded {
  if (f.kind === "topk") {
    const codes = new Uint32Array(e.q.length);
    for (let j = 0; j < codes.length; j++) codes[j] = e.idx![j] | ((e.q[j] & 0xff) << 8);
    return { codes, scales: e.scales };
  }
  // The bytes as words in place where they are aligned (an in-process
  // message); the decoders read no byte past the vector's end.
  const nw = Math.ceil(e.q.length / 4);
  const { buffer, byteOffset } = e.q;
  if (byteOffset % 4 === 0 && buffer.byteLength - byteOffset >= nw * 4) {
    return { codes: new Uint32Array(buffer, byteOffset, nw), scales: e.scales };
  }
  const codes = new Uint32Array(nw);
  new Int8Array(codes.buffer).set(e.q);
  return { codes, scales: e.scales };
}

/**
 * The part of a vector's encoding that covers [start, start + length): what
 * a trainer sends to a shard's aggregator. `start` must be a multiple of the
 * format's block (shards start on the run's 256-value blocks) and every block
 * before the vector's end full, which shards guarantee.
 *
 * @example
 * ```ts
 * import { sliceEncoded } from "./exchange.ts";
 * import { parseExchange } from "../kernels/exchange_format.ts";
 * const e = { q: new Int8Array(300), scales: new Float32Array(10) };
 * console.log(sliceEncoded(parseExchange("int4"), e, { start: 512, length: 88 }).q.length); // 44
 * ```
 */
export function sliceEncoded(
  f: ExchangeFormat,
  e: Encoded,
  range: { start: number; length: number },
): Encoded {
  const { start, length } = range;
  if (start % f.block !== 0) {
    throw new RangeError(
      `Cannot slice ${exchangeName(f)} codes: start ${start} is not a multiple of ${f.block}`,
    );
  }
  const scales = e.scales.slice(start / f.block, Math.ceil((start + length) / f.block));
  if (f.kind === "int8") return { q: e.q.slice(start, start + length), scales };
  if (f.kind === "int4") {
    return { q: e.q.slice(start / 2, Math.ceil((start + length) / 2)), scales };
  }
  const first = (start / f.block) * topkPerBlock(f.fraction, f.block);
  const end = first + topkCount(length, f);
  return { q: e.q.slice(first, end), idx: e.idx!.slice(first, end), scales };
}

/**
 * Checks the lengths of an encoded vector of n values against its format:
 * what the wire validator refuses as malformed.
 */
export function lengthProblem(
  f: ExchangeFormat,
  e: { q: ArrayLike<number>; idx?: ArrayLike<number>; scales: ArrayLike<number> },
  n: number,
): EncodedProblem | undefined {
  const size = encodedSize(n, f);
  const name = exchangeName(f);
  const what = f.kind === "int8"
    ? `n=${n} elements`
    : f.kind === "int4"
    ? `${size.codes} bytes (${name} codes of n=${n})`
    : `${size.codes} values (${name} of n=${n})`;
  const problem = (field: EncodedProblem["field"], detail: string): EncodedProblem => ({
    reason: "wrong_shape",
    field,
    detail,
  });
  if (e.q.length !== size.codes) return problem("q", `must have ${what}, has ${e.q.length}`);
  if (f.kind === "topk") {
    if (e.idx?.length !== size.offsets) {
      return problem(
        "idx",
        `must have ${size.offsets} offsets (${name} of n=${n}), has ${e.idx?.length ?? "none"}`,
      );
    }
  } else if (e.idx !== undefined) {
    return problem("idx", `must be absent for ${name}`);
  }
  if (e.scales.length !== size.scales) {
    return problem(
      "scales",
      `must have ${size.scales} entries (one per ${f.block}), has ${e.scales.length}`,
    );
  }
  return undefined;
}

/**
 * Everything {@linkcode lengthProblem} checks, and for top-k that every
 * block's offsets lie inside the block and increase (none repeats): what an
 * aggregator refuses by name.
 *
 * @example
 * ```ts
 * import { encodedProblem } from "./exchange.ts";
 * import { parseExchange } from "../kernels/exchange_format.ts";
 * const e = { q: new Int8Array(2), idx: new Uint8Array([3, 3]), scales: new Float32Array(1) };
 * console.log(encodedProblem(parseExchange("topk:0.5"), e, 4)?.reason); // "bad_index"
 * ```
 */
export function encodedProblem(
  f: ExchangeFormat,
  e: Encoded,
  n: number,
): EncodedProblem | undefined {
  const bad = lengthProblem(f, e, n);
  if (bad || f.kind !== "topk") return bad;
  const kFull = topkPerBlock(f.fraction, f.block);
  for (let start = 0, b = 0; start < n; start += f.block, b++) {
    const len = Math.min(n, start + f.block) - start;
    const k = topkPerBlock(f.fraction, len);
    let prev = -1;
    for (let j = b * kFull; j < b * kFull + k; j++) {
      const o = e.idx![j];
      if (o >= len) {
        return {
          reason: "bad_index",
          field: "idx",
          detail: `offset ${o} of block ${b} is outside its ${len} values`,
        };
      }
      if (o <= prev) {
        return {
          reason: "bad_index",
          field: "idx",
          detail: o === prev
            ? `offset ${o} of block ${b} is repeated`
            : `offsets of block ${b} do not increase (${prev} then ${o})`,
        };
      }
      prev = o;
    }
  }
  return undefined;
}

/**
 * Decodes n values in fp32 into `out` (default a new array), bit-exact with
 * the GPU's dequantization.
 *
 * @example
 * ```ts
 * import { decodeEncoded } from "./exchange.ts";
 * import { parseExchange } from "../kernels/exchange_format.ts";
 * const e = { q: new Int8Array([2]), idx: new Uint8Array([1]), scales: new Float32Array([0.5]) };
 * console.log(decodeEncoded(parseExchange("topk:0.25"), e, 4)); // Float32Array [0, 1, 0, 0]
 * ```
 */
export function decodeEncoded(
  f: ExchangeFormat,
  e: Encoded,
  n: number,
  out?: Float32Array,
): Float32Array {
  return decodeRef(f, fromWire(f, e), n, out);
}

/** L2 norm of the decoded vector (int8: from codes and scales, as the aggregator always did). */
export function encodedNorm(f: ExchangeFormat, e: Encoded, n: number): number {
  if (f.kind === "int8") return quantizedNorm(e.q, e.scales, { block: f.block });
  const d = decodeEncoded(f, e, n);
  let s = 0;
  for (let i = 0; i < n; i++) s += d[i] * d[i];
  return Math.sqrt(s);
}

/**
 * Applies a round's coded update to θ in place: θ[i] = f32(θ[i] + decoded[i]),
 * whatever its format (absent: int8, through {@linkcode applyUpdate}).
 * Aggregators apply their own update with it and every trainer applies the
 * received one with it, so their copies of θ_{r+1} are bit-identical.
 *
 * @example
 * ```ts
 * import { applyCoded } from "./exchange.ts";
 * const theta = new Float32Array([1, 1, 1, 1]);
 * applyCoded(theta, {
 *   format: "topk:0.25",
 *   q: new Int8Array([2]),
 *   idx: new Uint8Array([1]),
 *   scales: new Float32Array([0.5]),
 * });
 * console.log(theta); // Float32Array [1, 2, 1, 1]
 * ```
 *
 * @throws {RangeError} naming the format and the field when the codes do not
 * fit θ (a length, or a top-k offset out of range or repeated)
 */
export function applyCoded(
  theta: Float32Array,
  update: { format?: string; q: Int8Array; idx?: Uint8Array; scales: Float32Array },
  options: { block?: number } = {},
): Float32Array {
  const name = formatOf(update);
  if (name === "int8") return applyUpdate(theta, update, options);
  const f = parseExchange(name);
  const n = theta.length;
  const bad = encodedProblem(f, update, n);
  if (bad) throw new RangeError(`Cannot apply ${name} update: ${bad.field} ${bad.detail}`);
  const d = decodeEncoded(f, update, n);
  // A Float32Array store rounds the double sum: f32 addition, as the int8 path.
  for (let i = 0; i < n; i++) theta[i] = theta[i] + d[i];
  return theta;
}
