/**
 * Large messages: binary attachments, chunking and reassembly.
 *
 * Deno closes a WebSocket silently on a message over 64 MiB, and msgpack
 * encoding of big typed arrays is slow, so a message whose payload holds
 * large typed arrays travels as a *transfer*: the arrays' raw bytes
 * (attachments, each at a 16-byte aligned offset) followed by the packed
 * envelope (the head) in which each array is replaced by a placeholder. The
 * transfer is cut into `chunk` envelopes. Each chunk carries a 128-bit
 * digest of its bytes and the last one the root of a two-level hash tree
 * (the digest of the chunk digests in order), so the receiver checks every
 * piece and the whole. The receiver rebuilds the typed arrays as aligned
 * views over the reassembled buffer, without another copy.
 *
 * The digest is a fast non-cryptographic hash (four 32-bit multiply-rotate
 * lanes in the style of xxHash): it guards against corruption and bugs, at
 * about 2 GB/s in plain TypeScript; authenticity comes from the run-secret
 * handshake on the connection.
 *
 * @module
 */
import type { ChunkHeader } from "./envelope.ts";
import { FrameError } from "./errors.ts";

type Timer = ReturnType<typeof setTimeout>;

/** Default chunk size: 2 MiB, far below Deno's 64 MiB frame limit. */
export const DEFAULT_CHUNK_BYTES = 2 << 20;
/**
 * Default size up to which a transfer travels whole, as one chunk frame: 4 MiB
 * of attachments plus room for the head (a checkpoint chunk and its reply
 * fields). The receiver keeps such a transfer where it landed instead of
 * copying it into a reassembly buffer. Kept small enough that one frame
 * crosses a 10 Mbit/s link (3.4 s) well within the 6 s ping timeout.
 */
export const DEFAULT_WHOLE_BYTES = (4 << 20) + (64 << 10);
/** Bytes of a chunk digest. */
export const DIGEST_BYTES = 16;
/** Alignment of attachments inside a transfer. */
export const ALIGN = 16;
/** Key of an attachment placeholder object in a transfer head. */
export const ATTACHMENT_KEY = "\u0000att";

const P1 = 0x9e3779b1 | 0;
const P2 = 0x85ebca77 | 0;
const P3 = 0xc2b2ae3d | 0;

function avalanche(h: number): number {
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * A 128-bit digest of `bytes` (four xxHash32-style lanes plus length), for
 * integrity checks of chunks. Not a cryptographic hash.
 *
 * @example Different bytes, different digests
 * ```ts
 * import { digest128 } from "./chunk.ts";
 * import assert from "node:assert/strict";
 * assert.notDeepEqual(digest128(new Uint8Array([1, 2, 3])), digest128(new Uint8Array([1, 2, 4])));
 * ```
 */
export function digest128(bytes: Uint8Array): Uint8Array {
  let data = bytes;
  if (data.byteOffset % 4 !== 0) data = data.slice();
  const stripes = data.byteLength >>> 4;
  const words = new Uint32Array(data.buffer, data.byteOffset, stripes * 4);
  let a = P1, b = P2, c = P3, d = (P1 ^ P2) | 0;
  for (let i = 0; i < words.length; i += 4) {
    let x = (a + Math.imul(words[i], P2)) | 0;
    a = Math.imul((x << 13) | (x >>> 19), P1);
    x = (b + Math.imul(words[i + 1], P2)) | 0;
    b = Math.imul((x << 13) | (x >>> 19), P1);
    x = (c + Math.imul(words[i + 2], P2)) | 0;
    c = Math.imul((x << 13) | (x >>> 19), P1);
    x = (d + Math.imul(words[i + 3], P2)) | 0;
    d = Math.imul((x << 13) | (x >>> 19), P1);
  }
  for (let i = stripes * 16; i < data.byteLength; i++) {
    const x = (a + Math.imul(data[i], P3)) | 0;
    a = Math.imul((x << 11) | (x >>> 21), P1);
  }
  const len = data.byteLength;
  const out = new Uint32Array(4);
  out[0] = avalanche(a ^ len ^ Math.imul(b, P3));
  out[1] = avalanche(b ^ Math.imul(c, P1) ^ (len / 4294967296));
  out[2] = avalanche(c ^ Math.imul(d, P2));
  out[3] = avalanche(d ^ Math.imul(a, P3) ^ len);
  return new Uint8Array(out.buffer);
}

/** Equality of two byte strings, in time independent of where they differ. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  let diff = 0;
  for (let i = 0; i < a.byteLength; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** The root digest over chunk digests in index order. */
export function rootDigest(digests: readonly Uint8Array[]): Uint8Array {
  const all = new Uint8Array(digests.length * DIGEST_BYTES);
  digests.forEach((d, i) => all.set(d, i * DIGEST_BYTES));
  return digest128(all);
}

// --- attachments ----------------------------------------------------------------

const ARRAY_TYPES = {
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
} as const;
type ArrayTypeName = keyof typeof ARRAY_TYPES;
type AnyTypedArray = InstanceType<typeof ARRAY_TYPES[ArrayTypeName]>;

/** Where one attachment sits in a transfer: `[type name, byte offset, byte length]`. */
export type AttachmentRef = [string, number, number];

/** A payload with its large typed arrays taken out. */
export interface Extracted {
  /** The payload with placeholders (a shallow copy along the changed paths). */
  payload: unknown;
  /** The arrays taken out, in placeholder order. */
  arrays: ArrayBufferView[];
}

/**
 * Takes typed arrays of at least `threshold` bytes out of `payload` (looking
 * a few levels deep), replacing each with a placeholder. Returns `undefined`
 * when there is none. The caller's objects are not modified.
 *
 * @example
 * ```ts
 * import { extractAttachments } from "./chunk.ts";
 * import assert from "node:assert/strict";
 * const out = extractAttachments({ w: new Float32Array(1024), step: 3 }, 1024);
 * assert.equal(out?.arrays.length, 1);
 * ```
 */
export function extractAttachments(payload: unknown, threshold: number): Extracted | undefined {
  const arrays: ArrayBufferView[] = [];
  const walk = (value: unknown, depth: number): unknown => {
    if (value === null || typeof value !== "object") return value;
    if (ArrayBuffer.isView(value)) {
      if (value.byteLength < threshold || !(value.constructor.name in ARRAY_TYPES)) return value;
      arrays.push(value);
      return { [ATTACHMENT_KEY]: arrays.length - 1 };
    }
    if (depth >= 4) return value;
    if (Array.isArray(value)) {
      if (value.length > 1024) return value;
      let copy: unknown[] | undefined;
      for (let i = 0; i < value.length; i++) {
        const item = walk(value[i], depth + 1);
        if (item !== value[i]) (copy ??= value.slice())[i] = item;
      }
      return copy ?? value;
    }
    if (Object.getPrototypeOf(value) !== Object.prototype) return value;
    let copy: Record<string, unknown> | undefined;
    for (const key in value) {
      const v = (value as Record<string, unknown>)[key];
      const item = walk(v, depth + 1);
      if (item !== v) (copy ??= { ...(value as Record<string, unknown>) })[key] = item;
    }
    return copy ?? value;
  };
  const out = walk(payload, 0);
  return arrays.length ? { payload: out, arrays } : undefined;
}

/** Lays attachments out at aligned offsets; returns their refs and the byte length they span. */
export function layoutAttachments(
  arrays: ArrayBufferView[],
): { refs: AttachmentRef[]; end: number } {
  const refs: AttachmentRef[] = [];
  let at = 0;
  for (const a of arrays) {
    refs.push([a.constructor.name, at, a.byteLength]);
    at += Math.ceil(a.byteLength / ALIGN) * ALIGN;
  }
  return { refs, end: at };
}

/**
 * Puts typed-array views over `bytes` back where placeholders stand in a
 * decoded head. Throws a {@linkcode FrameError} for a placeholder or ref that
 * is out of range or of an unknown type.
 */
export function restoreAttachments(
  payload: unknown,
  refs: unknown,
  bytes: Uint8Array,
  limit: number,
): unknown {
  if (!Array.isArray(refs)) {
    throw new FrameError("invalid", "Invalid transfer: attachment refs must be an array");
  }
  const views = refs.map((ref, i) => {
    if (!Array.isArray(ref) || ref.length !== 3) {
      throw new FrameError(
        "invalid",
        `Invalid attachment ref ${i}: expected [type, offset, length]`,
      );
    }
    const [name, offset, length] = ref;
    const Ctor = typeof name === "string" && Object.hasOwn(ARRAY_TYPES, name)
      ? ARRAY_TYPES[name as ArrayTypeName]
      : undefined;
    if (!Ctor) {
      throw new FrameError("invalid", `Invalid attachment ref ${i}: unknown type ${String(name)}`);
    }
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset % ALIGN !== 0 || length % Ctor.BYTES_PER_ELEMENT !== 0 || offset + length > limit
    ) {
      throw new FrameError(
        "invalid",
        `Invalid attachment ref ${i}: bytes ${offset}+${length} of ${name} outside 0..${limit}`,
      );
    }
    return new Ctor(
      bytes.buffer as ArrayBuffer,
      bytes.byteOffset + offset,
      length / Ctor.BYTES_PER_ELEMENT,
    ) as AnyTypedArray;
  });
  const walk = (value: unknown, depth: number): unknown => {
    if (value === null || typeof value !== "object" || ArrayBuffer.isView(value) || depth > 4) {
      return value;
    }
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) value[i] = walk(value[i], depth + 1);
      return value;
    }
    const record = value as Record<string, unknown>;
    if (ATTACHMENT_KEY in record) {
      const index = record[ATTACHMENT_KEY];
      if (typeof index !== "number" || !views[index]) {
        throw new FrameError("invalid", `Invalid attachment placeholder: ${String(index)}`);
      }
      return views[index];
    }
    for (const key in record) record[key] = walk(record[key], depth + 1);
    return value;
  };
  return walk(payload, 0);
}

/**
 * Copies bytes `[offset, offset + target.length)` of the concatenation of
 * `segments` into `target`.
 */
export function gather(segments: readonly Uint8Array[], offset: number, target: Uint8Array): void {
  let at = 0;
  let written = 0;
  for (const seg of segments) {
    const end = at + seg.byteLength;
    if (end > offset + written && written < target.byteLength) {
      const from = offset + written - at;
      const n = Math.min(seg.byteLength - from, target.byteLength - written);
      target.set(seg.subarray(from, from + n), written);
      written += n;
    }
    at = end;
    if (written >= target.byteLength) return;
  }
  target.fill(0, written);
}

// --- reassembly -------------------------------------------------------------------

interface Transfer {
  total: number;
  count: number;
  head: number;
  bytes: Uint8Array;
  received: number;
  filled: number;
  digests: (Uint8Array | undefined)[];
  root?: Uint8Array;
  timer: Timer;
}

/** Options of {@linkcode Reassembler}. */
export interface ReassemblerOptions {
  /** Largest total of bytes held in open transfers. */
  maxMessageBytes: number;
  /** Time a transfer may stay incomplete, in ms. */
  timeoutMs: number;
  /** Called when a transfer is dropped for taking too long. */
  onExpired?: (error: FrameError) => void;
}

/** A completed transfer. */
export interface Reassembled {
  /** All bytes of the transfer. */
  bytes: Uint8Array;
  /** Byte length of the head at the end of `bytes`. */
  head: number;
}

/**
 * Collects chunks (in any order) into whole transfers and checks them.
 *
 * @example Chunks out of order
 * ```ts
 * import { digest128, Reassembler, rootDigest } from "./chunk.ts";
 * import assert from "node:assert/strict";
 * const parts = [new Uint8Array([1, 2]), new Uint8Array([3])];
 * const digests = parts.map(digest128);
 * const header = (index: number) => ({
 *   xid: 1, index, count: 2, total: 3, offset: index * 2, head: 3, digest: digests[index],
 *   root: index === 1 ? rootDigest(digests) : undefined,
 * });
 * const r = new Reassembler({ maxMessageBytes: 1024, timeoutMs: 1000 });
 * assert.equal(r.add(header(1), parts[1]), undefined);
 * assert.deepEqual(r.add(header(0), parts[0])?.bytes, new Uint8Array([1, 2, 3]));
 * r.close();
 * ```
 */
export class Reassembler {
  #options: ReassemblerOptions;
  #transfers = new Map<number, Transfer>();
  #failed = new Set<number>();
  #held = 0;

  /** Creates an empty reassembler. */
  constructor(options: ReassemblerOptions) {
    this.#options = options;
  }

  /** Number of transfers in progress. */
  get pending(): number {
    return this.#transfers.size;
  }

  /**
   * Adds one chunk. Returns `undefined` while its transfer is incomplete and
   * the whole transfer on the chunk that completes it (for a transfer of one
   * chunk, a view over `data` itself: the caller hands `data` over). Throws a
   * {@linkcode FrameError} (`chunk_integrity`, `too_large`) when the chunk
   * fails its digest, contradicts earlier chunks, or the whole fails its root
   * digest; that transfer is dropped.
   */
  add(header: ChunkHeader, data: Uint8Array): Reassembled | undefined {
    const { xid, index, count, total, offset } = header;
    const head = header.head ?? total;
    if (this.#failed.has(xid)) return undefined;
    let t = this.#transfers.get(xid);
    if (!t && count === 1) return this.#whole(header, data, head);
    if (!t) {
      if (this.#held + total > this.#options.maxMessageBytes) {
        throw new FrameError(
          "too_large",
          `Chunked message ${xid} of ${total} bytes would exceed the reassembly limit of ${this.#options.maxMessageBytes}`,
        );
      }
      const timer = setTimeout(() => {
        const dropped = this.#transfers.get(xid);
        if (!dropped) return;
        this.#drop(xid, true);
        this.#options.onExpired?.(
          new FrameError(
            "chunk_incomplete",
            `Chunked message ${xid} incomplete: ${dropped.received} of ${dropped.count} chunks after ${this.#options.timeoutMs} ms`,
          ),
        );
      }, this.#options.timeoutMs);
      t = {
        total,
        count,
        head,
        bytes: new Uint8Array(total),
        received: 0,
        filled: 0,
        digests: new Array(count),
        timer,
      };
      this.#transfers.set(xid, t);
      this.#held += total;
    }
    if (t.total !== total || t.count !== count || t.head !== head) {
      this.#drop(xid, true);
      throw new FrameError(
        "chunk_integrity",
        `Chunk ${index} of message ${xid} disagrees with earlier chunks: ${count} chunks / ${total} bytes vs ${t.count} / ${t.total}`,
      );
    }
    const seen = t.digests[index];
    if (seen) {
      // A duplicate of a chunk already held (a resend or a duplicated frame).
      if (bytesEqual(seen, header.digest)) return undefined;
      this.#drop(xid, true);
      throw new FrameError(
        "chunk_integrity",
        `Chunk ${index} of message ${xid} arrived twice with different digests`,
      );
    }
    const region = t.bytes.subarray(offset, offset + data.byteLength);
    region.set(data);
    if (!bytesEqual(digest128(region), header.digest)) {
      this.#drop(xid, true);
      throw new FrameError(
        "chunk_integrity",
        `Chunk ${index} of message ${xid} failed its digest check: corrupted in transit`,
      );
    }
    if (header.root) t.root = header.root;
    t.digests[index] = header.digest;
    t.received++;
    t.filled += data.byteLength;
    if (t.received < t.count) return undefined;
    this.#drop(xid, true);
    if (t.filled !== t.total) {
      throw new FrameError(
        "chunk_integrity",
        `Chunked message ${xid} chunks hold ${t.filled} bytes, expected ${t.total}`,
      );
    }
    if (!t.root) {
      throw new FrameError(
        "chunk_integrity",
        `Chunked message ${xid} arrived without its root digest`,
      );
    }
    if (!bytesEqual(rootDigest(t.digests as Uint8Array[]), t.root)) {
      throw new FrameError(
        "chunk_integrity",
        `Chunked message ${xid} failed its whole-message digest check`,
      );
    }
    return { bytes: t.bytes, head: t.head };
  }

  /**
   * A transfer in one chunk: checked in place and returned as a view over
   * `data` (no buffer to fill, no copy) when `data` sits at an aligned offset,
   * as senders arrange; copied into an aligned buffer otherwise.
   */
  #whole(header: ChunkHeader, data: Uint8Array, head: number): Reassembled {
    const { xid, total } = header;
    // Whatever happens, later copies of this chunk are ignored, as for a finished transfer.
    this.#finished(xid);
    if (this.#held + total > this.#options.maxMessageBytes) {
      throw new FrameError(
        "too_large",
        `Chunked message ${xid} of ${total} bytes would exceed the reassembly limit of ${this.#options.maxMessageBytes}`,
      );
    }
    if (data.byteLength !== total) {
      throw new FrameError(
        "chunk_integrity",
        `Chunked message ${xid} chunks hold ${data.byteLength} bytes, expected ${total}`,
      );
    }
    if (!bytesEqual(digest128(data), header.digest)) {
      throw new FrameError(
        "chunk_integrity",
        `Chunk 0 of message ${xid} failed its digest check: corrupted in transit`,
      );
    }
    if (!header.root) {
      throw new FrameError(
        "chunk_integrity",
        `Chunked message ${xid} arrived without its root digest`,
      );
    }
    if (!bytesEqual(rootDigest([header.digest]), header.root)) {
      throw new FrameError(
        "chunk_integrity",
        `Chunked message ${xid} failed its whole-message digest check`,
      );
    }
    const bytes = data.byteOffset % ALIGN === 0 ? data : data.slice();
    return { bytes, head };
  }

  #finished(xid: number): void {
    this.#failed.add(xid);
    if (this.#failed.size > 256) this.#failed.delete(this.#failed.values().next().value!);
  }

  #drop(xid: number, failed = false): void {
    // Later chunks of a failed (or finished) transfer are ignored instead of starting it over.
    if (failed) this.#finished(xid);
    const t = this.#transfers.get(xid);
    if (!t) return;
    clearTimeout(t.timer);
    this.#transfers.delete(xid);
    this.#held -= t.total;
  }

  /** Drops every transfer in progress and its timer. */
  close(): void {
    for (const xid of [...this.#transfers.keys()]) this.#drop(xid);
  }
}
