/**
 * The one wire envelope and its validator.
 *
 * Every WebSocket frame carries either one envelope or an array of envelopes
 * (a batch), msgpack-encoded. Every envelope that arrives is checked here
 * before anything else looks at it: field types, the wire version, a known
 * kind, the fields that kind needs, sizes, and that tensors carried in the
 * payload have a shape consistent with their data.
 *
 * @module
 */
import { decode, plainBytes } from "./codec.ts";
export { nodeOf } from "../actors/runtime/_remote.ts";
import { type ErrorCode, FrameError } from "./errors.ts";

/** The wire version this build speaks. */
export const WIRE_VERSION = 1;

/** Every envelope kind the transport knows. */
export const KINDS = [
  "challenge",
  "auth",
  "welcome",
  "tell",
  "ask",
  "reply",
  "error",
  "ping",
  "pong",
  "chunk",
] as const;

/** One of {@linkcode KINDS}. */
export type Kind = typeof KINDS[number];

const KIND_SET: ReadonlySet<string> = new Set(KINDS);

/** Kinds that carry application data (the rest are transport control). */
export const DATA_KINDS: ReadonlySet<Kind> = new Set(["tell", "ask", "reply", "error"]);

/** Chunk fields of a `chunk` envelope: one slice of a large packed envelope. */
export interface ChunkHeader {
  /** Transfer id, unique per sender connection. */
  xid: number;
  /** This chunk's index, `0 <= index < count`. */
  index: number;
  /** How many chunks the transfer has. */
  count: number;
  /** Byte length of the whole packed envelope. */
  total: number;
  /** Byte offset of this chunk in the whole. */
  offset: number;
  /** Byte length of the packed head at the end of the transfer (default: all of it). */
  head?: number;
  /** 128-bit digest of this chunk's bytes. */
  digest: Uint8Array;
  /** Digest over the concatenated chunk digests (hash tree root), on the last chunk. */
  root?: Uint8Array;
}

/** The wire envelope. */
export interface Envelope<P = unknown> {
  /** Wire version, {@linkcode WIRE_VERSION}. */
  v: number;
  /** Run id; frames of another run are rejected. */
  run: string;
  /** Sender address: `node` or `node/path`. */
  from: string;
  /** Receiver address: `node` or `node/path`. */
  to: string;
  /** What the envelope is. */
  kind: Kind;
  /** Per-connection sequence number of the sender. */
  seq: number;
  /** Kind-specific content. */
  payload: P;
  /** Ask id (`ask`). */
  id?: number;
  /** Id of the ask this answers (`reply`, `error`). */
  corr?: number;
  /** Chunk fields (`chunk`). */
  chunk?: ChunkHeader;
}

/** Payload of an `error` envelope. */
export interface ErrorPayload {
  /** Machine-readable reason. */
  code: string;
  /** Human-readable reason. */
  message: string;
}

/**
 * Limits applied to incoming frames. All are per peer connection.
 */
export interface Limits {
  /** Largest WebSocket frame accepted, in bytes. Default 16 MiB. */
  maxFrameBytes: number;
  /**
   * Largest frame accepted before the peer has authenticated, in bytes: the
   * handshake's frames are a few hundred bytes, and an unauthenticated peer
   * must not make the host parse megabytes. Default 4 KiB.
   */
  maxHandshakeFrameBytes: number;
  /** Largest message after chunk reassembly, in bytes. Default 512 MiB. */
  maxMessageBytes: number;
  /** Most envelopes in one batch frame. Default 8192. */
  maxBatch: number;
  /** Longest `run`, `from` or `to` string. Default 256. */
  maxAddressLength: number;
  /** Deepest payload nesting. Default 32. */
  maxDepth: number;
  /** Most dimensions of a tensor shape. Default 8. */
  maxRank: number;
  /** Sustained frames per second per peer. Default 20,000. */
  framesPerSecond: number;
  /** Frame burst allowance per peer. Default 40,000. */
  framesBurst: number;
  /** Sustained bytes per second per peer. Default 1 GiB. */
  bytesPerSecond: number;
  /** Byte burst allowance per peer. Default 1 GiB. */
  bytesBurst: number;
  /** Time a chunked transfer may take to complete, in ms. Default 60,000. */
  reassemblyTimeoutMs: number;
}

/** Documented defaults of {@linkcode Limits}. */
export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxFrameBytes: 16 << 20,
  maxHandshakeFrameBytes: 4 << 10,
  maxMessageBytes: 512 << 20,
  maxBatch: 8192,
  maxAddressLength: 256,
  maxDepth: 32,
  maxRank: 8,
  framesPerSecond: 20_000,
  framesBurst: 40_000,
  bytesPerSecond: 1 << 30,
  bytesBurst: 1 << 30,
  reassemblyTimeoutMs: 60_000,
});

/**
 * Fills the unset fields of `given` from `defaults` and checks that every
 * field is a positive number; the RangeError names the field as
 * `Invalid <what> <field>`.
 *
 * @example
 * ```ts
 * import { withPositiveDefaults } from "./envelope.ts";
 * const defaults = { a: 1, b: 2 };
 * console.log(withPositiveDefaults(defaults, { b: 5 }, "limit")); // { a: 1, b: 5 }
 * ```
 */
export function withPositiveDefaults<T extends object>(
  defaults: Readonly<T>,
  given: Partial<T>,
  what: string,
): T {
  const out = { ...defaults, ...given } as T;
  for (const [key, value] of Object.entries(out)) {
    if (typeof value !== "number" || !(value > 0)) {
      throw new RangeError(`Invalid ${what} ${key}: ${value} (must be a positive number)`);
    }
  }
  return out;
}

/** Fills unset limits with {@linkcode DEFAULT_LIMITS}, rejecting bad values. */
export function resolveLimits(limits: Partial<Limits> = {}): Limits {
  return withPositiveDefaults(DEFAULT_LIMITS, limits, "transport limit");
}

/** Element type names for tensors and the typed arrays that carry them. */
export const DTYPES = {
  f32: Float32Array,
  f64: Float64Array,
  i8: Int8Array,
  u8: Uint8Array,
  i16: Int16Array,
  u16: Uint16Array,
  i32: Int32Array,
  u32: Uint32Array,
  i64: BigInt64Array,
  u64: BigUint64Array,
} as const;

/** A tensor name from {@linkcode DTYPES}. */
export type DType = keyof typeof DTYPES;

/** A typed array that can carry tensor data. */
export type TensorData = InstanceType<typeof DTYPES[DType]>;

/**
 * A tensor in a payload: raw typed-array data plus its shape. The validator
 * checks every object with `shape` and `data` fields for consistency.
 */
export interface Tensor<D extends TensorData = TensorData> {
  /** Element type name. */
  dtype: DType;
  /** Dimensions; their product is `data.length`. */
  shape: number[];
  /** Elements in row-major order. */
  data: D;
}

/**
 * Wraps a typed array as a {@linkcode Tensor}. Throws a `RangeError` when the
 * shape does not match the data length.
 *
 * @example A 2x3 tensor
 * ```ts
 * import { tensor } from "./envelope.ts";
 * import assert from "node:assert/strict";
 * const t = tensor(new Float32Array(6), [2, 3]);
 * assert.equal(t.dtype, "f32");
 * ```
 */
export function tensor<D extends TensorData>(data: D, shape: number[] = [data.length]): Tensor<D> {
  const dtype = dtypeOf(data);
  if (!dtype) throw new TypeError(`Cannot make a tensor: unsupported data type ${data}`);
  const t = { dtype, shape, data };
  const problem = tensorProblem(t, DEFAULT_LIMITS.maxRank);
  if (problem) throw new RangeError(`Cannot make a tensor: ${problem}`);
  return t;
}

function dtypeOf(data: unknown): DType | undefined {
  for (const [name, ctor] of Object.entries(DTYPES)) {
    if (data instanceof ctor && data.constructor === ctor) return name as DType;
  }
  if (data instanceof Uint8Array) return "u8";
  return undefined;
}

function tensorProblem(t: Record<string, unknown>, maxRank: number): string | undefined {
  const { shape, data, dtype } = t;
  if (!Array.isArray(shape)) return `shape must be an array, got ${typeof shape}`;
  if (shape.length > maxRank) return `rank ${shape.length} exceeds ${maxRank}`;
  let count = 1;
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || (dim as number) < 0) {
      return `shape [${shape}] has a bad dimension: ${dim}`;
    }
    count *= dim as number;
  }
  if (!ArrayBuffer.isView(data) || data instanceof DataView) {
    return `data must be a typed array, got ${describe(data)}`;
  }
  const actual = dtypeOf(data);
  if (!actual) return `data has an unsupported element type: ${describe(data)}`;
  if (dtype !== undefined && dtype !== actual && !(dtype === "u8" && actual === "u8")) {
    return `dtype ${String(dtype)} does not match data ${describe(data)}`;
  }
  const length = (data as TensorData).length;
  if (count !== length) return `shape [${shape}] holds ${count} elements but data has ${length}`;
  return undefined;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${value.byteLength} bytes)`;
  if (Array.isArray(value)) return `array(${value.length})`;
  if (typeof value === "string") {
    return JSON.stringify(value.length > 40 ? value.slice(0, 40) + "..." : value);
  }
  return typeof value === "object" ? "object" : `${typeof value} ${String(value)}`;
}

function fail(code: ErrorCode, message: string): never {
  throw new FrameError(code, message);
}

function checkString(env: Record<string, unknown>, key: string, limits: Limits, empty: boolean) {
  const value = env[key];
  if (typeof value !== "string") {
    fail("invalid", `Invalid envelope field ${key}: expected a string, got ${describe(value)}`);
  }
  if (value.length > limits.maxAddressLength) {
    fail(
      "too_large",
      `Invalid envelope field ${key}: ${value.length} characters exceeds ${limits.maxAddressLength}`,
    );
  }
  if (!empty && value.length === 0) fail("invalid", `Invalid envelope field ${key}: empty`);
}

function checkCounter(env: Record<string, unknown>, key: string, required: boolean, kind: string) {
  const value = env[key];
  if (value === undefined) {
    if (required) fail("invalid", `Invalid ${kind} envelope: missing ${key}`);
    return;
  }
  if (!Number.isSafeInteger(value) || (value as number) < 0) {
    fail(
      "invalid",
      `Invalid envelope field ${key}: expected a non-negative integer, got ${describe(value)}`,
    );
  }
}

function checkBytes(value: unknown, what: string, length?: number): Uint8Array {
  if (!(value instanceof Uint8Array)) {
    fail("invalid", `Invalid ${what}: expected bytes, got ${describe(value)}`);
  }
  if (length !== undefined && value.byteLength !== length) {
    fail("invalid", `Invalid ${what}: expected ${length} bytes, got ${value.byteLength}`);
  }
  return plainBytes(value);
}

/** Checks (and normalises) an optional bytes field of a handshake payload. */
function optionalBytes(
  p: Record<string, unknown>,
  field: string,
  what: string,
  length: number,
): void {
  if (p[field] !== undefined) p[field] = checkBytes(p[field], what, length);
}

/**
 * Walks a payload: normalises `Buffer` to `Uint8Array`, bounds nesting depth
 * and checks every tensor-shaped object (`shape` + `data`).
 */
function checkPayload(value: unknown, depth: number, limits: Limits, path: string): unknown {
  if (value === null || typeof value !== "object") return value;
  if (value instanceof Uint8Array) return plainBytes(value);
  if (ArrayBuffer.isView(value)) return value;
  if (depth >= limits.maxDepth) {
    fail("invalid", `Invalid payload: nesting deeper than ${limits.maxDepth} at ${path}`);
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item = value[i];
      if (item !== null && typeof item === "object") {
        value[i] = checkPayload(item, depth + 1, limits, `${path}[${i}]`);
      }
    }
    return value;
  }
  if (value instanceof Map) {
    for (const [k, v] of value) {
      if (v !== null && typeof v === "object") {
        value.set(k, checkPayload(v, depth + 1, limits, `${path}.${String(k)}`));
      }
    }
    return value;
  }
  const record = value as Record<string, unknown>;
  for (const key in record) {
    const item = record[key];
    if (item !== null && typeof item === "object") {
      record[key] = checkPayload(item, depth + 1, limits, `${path}.${key}`);
    }
  }
  if ("shape" in record && "data" in record && ArrayBuffer.isView(record.data)) {
    const problem = tensorProblem(record, limits.maxRank);
    if (problem) fail("invalid", `Invalid tensor at ${path}: ${problem}`);
  }
  return value;
}

/**
 * Checks one decoded envelope against the wire rules and `limits`. Returns
 * the envelope (binary fields normalised) or throws a {@linkcode FrameError}
 * whose `code` and message say what was wrong.
 *
 * @example A good and a bad envelope
 * ```ts
 * import { validateEnvelope } from "./envelope.ts";
 * import { FrameError } from "./errors.ts";
 * import assert from "node:assert/strict";
 * const env = { v: 1, run: "r", from: "a", to: "b", kind: "tell", seq: 0, payload: 1 };
 * assert.equal(validateEnvelope(env).kind, "tell");
 * assert.throws(() => validateEnvelope({ ...env, v: 2 }), FrameError);
 * ```
 */
export function validateEnvelope(value: unknown, limits: Limits = DEFAULT_LIMITS): Envelope {
  if (
    value === null || typeof value !== "object" || Array.isArray(value) || ArrayBuffer.isView(value)
  ) {
    fail("invalid", `Invalid envelope: expected a map, got ${describe(value)}`);
  }
  const env = value as Record<string, unknown>;
  if (env.v !== WIRE_VERSION) {
    fail(
      "bad_version",
      `Unsupported envelope version: ${describe(env.v)} (expected ${WIRE_VERSION})`,
    );
  }
  const kind = env.kind;
  if (typeof kind !== "string" || !KIND_SET.has(kind)) {
    fail("unknown_kind", `Unknown envelope kind: ${describe(kind)}`);
  }
  const handshake = kind === "challenge" || kind === "auth" || kind === "welcome";
  checkString(env, "run", limits, false);
  checkString(env, "from", limits, false);
  checkString(env, "to", limits, handshake || kind === "error");
  checkCounter(env, "seq", true, kind);
  checkCounter(env, "id", kind === "ask", kind);
  checkCounter(env, "corr", kind === "reply", kind);
  if (!("payload" in env)) fail("invalid", `Invalid ${kind} envelope: missing payload`);
  const payload = env.payload;
  switch (kind as Kind) {
    case "challenge": {
      const p = env.payload as Record<string, unknown>;
      if (p === null || typeof p !== "object") {
        fail("invalid", "Invalid challenge payload: expected a map");
      }
      p.nonce = checkBytes(p.nonce, "challenge nonce", 32);
      optionalBytes(p, "key", "challenge key", 32);
      if (p.keys !== undefined && typeof p.keys !== "boolean") {
        fail("invalid", `Invalid challenge keys: expected a boolean, got ${describe(p.keys)}`);
      }
      break;
    }
    case "auth": {
      const p = env.payload as Record<string, unknown>;
      if (p === null || typeof p !== "object") {
        fail("invalid", "Invalid auth payload: expected a map");
      }
      optionalBytes(p, "mac", "auth mac", 32);
      p.nonce = checkBytes(p.nonce, "auth nonce", 32);
      optionalBytes(p, "key", "auth key", 32);
      optionalBytes(p, "sig", "auth signature", 64);
      break;
    }
    case "welcome": {
      const p = env.payload as Record<string, unknown>;
      if (p === null || typeof p !== "object") {
        fail("invalid", "Invalid welcome payload: expected a map");
      }
      optionalBytes(p, "mac", "welcome mac", 32);
      optionalBytes(p, "sig", "welcome signature", 64);
      break;
    }
    case "error": {
      const p = env.payload as Record<string, unknown>;
      if (
        p === null || typeof p !== "object" || typeof p.code !== "string" ||
        typeof p.message !== "string"
      ) {
        fail(
          "invalid",
          `Invalid error payload: expected {code, message} strings, got ${describe(p)}`,
        );
      }
      break;
    }
    case "ping":
    case "pong":
      if (typeof payload !== "number") {
        fail("invalid", `Invalid ${kind} payload: expected a number, got ${describe(payload)}`);
      }
      break;
    case "chunk": {
      env.payload = checkBytes(payload, "chunk payload");
      checkChunk(env.chunk, (env.payload as Uint8Array).byteLength, limits);
      break;
    }
    default:
      env.payload = checkPayload(payload, 0, limits, "payload");
  }
  return env as unknown as Envelope;
}

function checkChunk(value: unknown, length: number, limits: Limits): void {
  if (value === null || typeof value !== "object") {
    fail("invalid", `Invalid chunk envelope: missing chunk header, got ${describe(value)}`);
  }
  const c = value as Record<string, unknown>;
  for (const key of ["xid", "index", "count", "total", "offset"]) {
    if (!Number.isSafeInteger(c[key]) || (c[key] as number) < 0) {
      fail(
        "invalid",
        `Invalid chunk header ${key}: expected a non-negative integer, got ${describe(c[key])}`,
      );
    }
  }
  const { index, count, total, offset } = c as unknown as ChunkHeader;
  if (count < 1 || index >= count) {
    fail("invalid", `Invalid chunk header: index ${index} of ${count}`);
  }
  if (total > limits.maxMessageBytes) {
    fail(
      "too_large",
      `Chunked message of ${total} bytes exceeds the limit of ${limits.maxMessageBytes}`,
    );
  }
  if (count > total + 1) {
    fail("invalid", `Invalid chunk header: ${count} chunks for ${total} bytes`);
  }
  if (offset + length > total) {
    fail(
      "invalid",
      `Invalid chunk header: bytes ${offset}..${offset + length} exceed total ${total}`,
    );
  }
  if (
    c.head !== undefined &&
    (!Number.isSafeInteger(c.head) || (c.head as number) < 1 || (c.head as number) > total)
  ) {
    fail("invalid", `Invalid chunk header head: ${describe(c.head)} (must be 1..${total})`);
  }
  c.digest = checkBytes(c.digest, "chunk digest", 16);
  if (c.root !== undefined) c.root = checkBytes(c.root, "chunk root", 16);
}

/** Outcome of {@linkcode parseFrame}: the good envelopes and one error per bad one. */
export interface ParsedFrame {
  /** Envelopes that passed validation, in frame order. */
  envelopes: Envelope[];
  /** Why each rejected envelope (or the whole frame) was rejected. */
  errors: FrameError[];
}

/**
 * Decodes and validates one WebSocket frame (a single envelope or a batch).
 * Never throws: a frame that is too large or not msgpack yields one error
 * and no envelopes; in a batch, bad envelopes are dropped one by one.
 *
 * @example A malformed frame
 * ```ts
 * import { parseFrame } from "./envelope.ts";
 * import assert from "node:assert/strict";
 * const { envelopes, errors } = parseFrame(new Uint8Array([0xd9]));
 * assert.equal(envelopes.length, 0);
 * assert.equal(errors[0].code, "malformed");
 * ```
 */
export function parseFrame(bytes: Uint8Array, limits: Limits = DEFAULT_LIMITS): ParsedFrame {
  const envelopes: Envelope[] = [];
  const errors: FrameError[] = [];
  if (bytes.byteLength > limits.maxFrameBytes) {
    errors.push(
      new FrameError(
        "too_large",
        `Frame of ${bytes.byteLength} bytes exceeds the limit of ${limits.maxFrameBytes}`,
      ),
    );
    return { envelopes, errors };
  }
  let value: unknown;
  try {
    value = decode(bytes);
  } catch (err) {
    errors.push(new FrameError("malformed", `Malformed frame: ${(err as Error).message}`));
    return { envelopes, errors };
  }
  const items = Array.isArray(value) ? value : [value];
  if (items.length > limits.maxBatch) {
    errors.push(
      new FrameError(
        "too_large",
        `Batch of ${items.length} envelopes exceeds the limit of ${limits.maxBatch}`,
      ),
    );
    return { envelopes, errors };
  }
  for (const item of items) {
    try {
      envelopes.push(validateEnvelope(item, limits));
    } catch (err) {
      if (err instanceof FrameError) errors.push(err);
      else errors.push(new FrameError("invalid", `Invalid envelope: ${(err as Error).message}`));
    }
  }
  return { envelopes, errors };
}
