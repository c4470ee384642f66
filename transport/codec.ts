/**
 * The msgpack codec every frame goes through.
 *
 * msgpackr is configured as the project's platform notes require:
 * `useRecords: false` keeps frames readable by any msgpack decoder, and
 * `moreTypes: true` makes typed arrays travel as typed arrays (with their
 * element type) instead of collapsing into bytes. Binary fields that come
 * back as Node `Buffer` are normalised to plain `Uint8Array`, so strict
 * equality against what was sent holds.
 *
 * @module
 */
import { Packr } from "./_deps_codec.ts";

const OPTIONS = { useRecords: false, moreTypes: true } as const;

/** The shared packer; `pack()` returns a view into a buffer it reuses. */
const shared = new Packr(OPTIONS);

/**
 * Creates a packer with its own output buffer. Use one when the packed bytes
 * must outlive the next {@linkcode encode} call (large payloads sent in
 * chunks over many event-loop turns).
 *
 * @example Pack into a private buffer
 * ```ts
 * import { createPackr, decode } from "./codec.ts";
 * import assert from "node:assert/strict";
 * const bytes = createPackr().pack({ a: 1 });
 * assert.deepEqual(decode(bytes), { a: 1 });
 * ```
 */
export function createPackr(): Packr {
  return new Packr(OPTIONS);
}

/**
 * Encodes a value as msgpack. The result is a view into a buffer that the
 * next call overwrites: send or copy it before encoding anything else.
 *
 * @example Round trip a tensor
 * ```ts
 * import { decode, encode } from "./codec.ts";
 * import assert from "node:assert/strict";
 * const data = new Float32Array([1.5, -2, 3]);
 * assert.deepEqual(decode(encode({ data })), { data });
 * ```
 */
export function encode(value: unknown): Uint8Array {
  return shared.pack(value);
}

/**
 * Encodes a value into freshly owned bytes, safe to keep across calls.
 *
 * @example Owned bytes survive later encodes
 * ```ts
 * import { decode, encode, encodeOwned } from "./codec.ts";
 * import assert from "node:assert/strict";
 * const kept = encodeOwned("first");
 * encode("second");
 * assert.equal(decode(kept), "first");
 * ```
 */
export function encodeOwned(value: unknown): Uint8Array {
  return shared.pack(value).slice();
}

/**
 * A typed array of at least this many bytes is counted, not packed, by
 * {@linkcode encodedSize}: msgpackr writes it as an ext 32 (a Buffer as a bin
 * 32) of 7 (5) bytes of header where an empty one takes an ext 8 (bin 8) of
 * 4 (2), so it adds its bytes plus 3 either way.
 */
const COUNTED_VIEW = 0x10000;

/**
 * The length of {@linkcode encode}`(value)` in bytes, without packing the
 * large typed arrays in it: the value is packed with each of them replaced by
 * an empty array of its class, and their bytes are added. Counting what a
 * message would cost on the wire this way takes microseconds where packing
 * it (a trainer's 25 MB contribution at 25M parameters, into a buffer that
 * grows by copies) took ~0.1 s of the event loop.
 *
 * @example The size without the copy
 * ```ts
 * import { encode, encodedSize } from "./codec.ts";
 * const msg = { round: 3, q: new Int8Array(1 << 20) };
 * console.log(encodedSize(msg) === encode(msg).byteLength); // true
 * ```
 */
export function encodedSize(value: unknown): number {
  let counted = 0;
  const strip = (v: unknown, depth: number): unknown => {
    if (v === null || typeof v !== "object" || depth > 64) return v;
    if (ArrayBuffer.isView(v)) {
      if (v instanceof DataView || v.byteLength < COUNTED_VIEW) return v;
      counted += v.byteLength + 3;
      return (v as Uint8Array).subarray(0, 0);
    }
    if (Array.isArray(v)) return v.map((x) => strip(x, depth + 1));
    // Maps, dates and the like are packed as they are.
    if (Object.getPrototypeOf(v) !== Object.prototype) return v;
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = strip(x, depth + 1);
    return out;
  };
  return shared.pack(strip(value, 0)).byteLength + counted;
}

/**
 * Decodes one msgpack value from `bytes` (the whole input must be one value),
 * normalising `Buffer` results to `Uint8Array`. Throws a `TypeError` naming
 * the problem when the bytes are not valid msgpack.
 *
 * @example Decode what was encoded
 * ```ts
 * import { decode, encode } from "./codec.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(decode(encode([1, "a", new Uint8Array([7])])), [1, "a", new Uint8Array([7])]);
 * ```
 */
export function decode(bytes: Uint8Array): unknown {
  let value: unknown;
  try {
    value = shared.unpack(bytes);
  } catch (err) {
    throw new TypeError(`Cannot decode msgpack: ${err instanceof Error ? err.message : err}`);
  }
  return normalize(value, 0);
}

/**
 * The bytes of a Node `Buffer` (a subclass of Uint8Array) as a plain
 * `Uint8Array` view of the same memory; any other Uint8Array as it is.
 * Checked by class, so that the codec needs no `node:buffer` (a browser has none).
 *
 * @example
 * ```ts
 * import { plainBytes } from "./codec.ts";
 * import { Buffer } from "node:buffer";
 * console.log(plainBytes(Buffer.from([1, 2])).constructor === Uint8Array); // true
 * ```
 */
export function plainBytes(value: Uint8Array): Uint8Array {
  return value.constructor === Uint8Array
    ? value
    : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

/**
 * Replaces every Node `Buffer` in a decoded value with a plain `Uint8Array`
 * view over the same bytes. Returns the (possibly new) value.
 *
 * @example Buffers become Uint8Arrays
 * ```ts
 * import { normalize } from "./codec.ts";
 * import { Buffer } from "node:buffer";
 * import assert from "node:assert/strict";
 * const out = normalize({ b: Buffer.from([1, 2]) }) as { b: Uint8Array };
 * assert.equal(out.b.constructor, Uint8Array);
 * ```
 */
export function normalize(value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== "object") return value;
  if (value instanceof Uint8Array) return plainBytes(value);
  if (ArrayBuffer.isView(value) || depth > 64) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item = value[i];
      if (item !== null && typeof item === "object") value[i] = normalize(item, depth + 1);
    }
    return value;
  }
  if (value instanceof Map) {
    for (const [k, v] of value) {
      if (v !== null && typeof v === "object") value.set(k, normalize(v, depth + 1));
    }
    return value;
  }
  const record = value as Record<string, unknown>;
  for (const key in record) {
    const item = record[key];
    if (item !== null && typeof item === "object") record[key] = normalize(item, depth + 1);
  }
  return value;
}
