/**
 * Validation of the run protocol's messages (actors/run_protocol.ts): whatever
 * arrives from the wire passes {@linkcode validateRunMessage} before a role
 * sees it, and comes out typed, with tensors as typed arrays viewed over the
 * received bytes ({@linkcode asInt8}, {@linkcode asFloat32}). A bad message
 * throws a `ProtocolError` that names the message type and the field.
 *
 * @module
 */
import {
  DEFAULT_BLOCK,
  type HeartbeatAckMsg,
  type JoinMsg,
  MAX_TENSOR_ELEMENTS,
  MESSAGE_TYPES,
  ProtocolError,
  type RejectReason,
  reportCheck,
  type ReportCursor,
  type Role,
  ROLES,
  type RoundClosedMsg,
  type RunMessage,
  type RunNews,
  type Shard,
  type StateRequestMsg,
  type TrainerReportMsg,
  type ViewMsg,
} from "./run_protocol.ts";
import { type ExchangeFormat, exchangeName, parseExchange } from "../kernels/exchange_format.ts";
import { lengthProblem } from "./exchange.ts";
import { MAX_TEXT_SAMPLE } from "../kernels/sample.ts";

const MAX_ID = 128;

function fail(type: string, field: string, what: string): never {
  throw new ProtocolError(`Invalid ${type} message: ${field} ${what}`);
}

function obj(x: unknown): Record<string, unknown> {
  if (typeof x !== "object" || x === null || Array.isArray(x)) {
    throw new ProtocolError("Invalid run message: expected an object");
  }
  return x as Record<string, unknown>;
}

function str(m: Record<string, unknown>, type: string, field: string): string {
  const v = m[field];
  if (typeof v !== "string" || v.length === 0 || v.length > MAX_ID) {
    fail(type, field, `must be a non-empty string of at most ${MAX_ID} characters`);
  }
  return v;
}

function int(m: Record<string, unknown>, type: string, field: string, min = 0): number {
  const v = m[field];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    fail(type, field, `must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function num(m: Record<string, unknown>, type: string, field: string): number {
  const v = m[field];
  if (typeof v !== "number") fail(type, field, `must be a number, got ${typeof v}`);
  return v;
}

function strArray(m: Record<string, unknown>, type: string, field: string): string[] {
  const v = m[field];
  if (!Array.isArray(v) || v.length > 4096) fail(type, field, "must be an array of ids");
  for (const s of v) {
    if (typeof s !== "string" || s.length === 0 || s.length > MAX_ID) {
      fail(type, field, "must hold non-empty strings");
    }
  }
  return v as string[];
}

function cursorField(m: Record<string, unknown>, type: string): ReportCursor {
  const c = m.cursor as Record<string, unknown> | null;
  const shard = (c && typeof c === "object" ? c.shard : undefined) as
    | Record<string, unknown>
    | undefined;
  const nat = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  if (
    !c || typeof c !== "object" || !nat(c.seed) || !nat(c.step) || !shard ||
    typeof shard !== "object" || !nat(shard.index) || !nat(shard.count) ||
    (shard.index as number) >= (shard.count as number)
  ) {
    fail(type, "cursor", "must be { seed, shard: { index < count }, step } of integers >= 0");
  }
  return {
    seed: c.seed as number,
    shard: { index: shard.index as number, count: shard.count as number },
    step: c.step as number,
  };
}

/**
 * Views `x` (an Int8Array, or bytes such as a msgpack `Buffer`) as an Int8Array
 * without copying.
 *
 * @example
 * ```ts
 * import { asInt8 } from "./run_protocol_validate.ts";
 * console.log(asInt8(new Uint8Array([255, 1]))); // Int8Array [-1, 1]
 * ```
 */
export function asInt8(x: unknown): Int8Array | undefined {
  if (x instanceof Int8Array) return x;
  if (x instanceof Uint8Array) return new Int8Array(x.buffer, x.byteOffset, x.byteLength);
  return undefined;
}

/**
 * Views `x` (a Float32Array, or little-endian bytes) as a Float32Array, copying
 * only when the bytes are not 4-byte aligned.
 *
 * @example
 * ```ts
 * import { asFloat32 } from "./run_protocol_validate.ts";
 * const bytes = new Uint8Array(new Float32Array([1.5]).buffer);
 * console.log(asFloat32(bytes)); // Float32Array [1.5]
 * ```
 */
export function asFloat32(x: unknown): Float32Array | undefined {
  if (x instanceof Float32Array) return x;
  if (x instanceof Uint8Array) {
    if (x.byteLength % 4 !== 0) return undefined;
    if (x.byteOffset % 4 === 0) return new Float32Array(x.buffer, x.byteOffset, x.byteLength / 4);
    return new Float32Array(x.slice().buffer);
  }
  return undefined;
}

function validateShards(m: Record<string, unknown>, params: number, block: number): Shard[] {
  const v = m.shards;
  if (!Array.isArray(v) || v.length === 0 || v.length > 4096) {
    fail("view", "shards", "must be a non-empty array");
  }
  let next = 0;
  const out: Shard[] = [];
  for (let i = 0; i < v.length; i++) {
    const s = obj(v[i]);
    const index = int(s, `view shards[${i}]`, "index");
    const start = int(s, `view shards[${i}]`, "start");
    const length = int(s, `view shards[${i}]`, "length", 1);
    const aggregator = str(s, `view shards[${i}]`, "aggregator");
    if (index !== i) fail("view", `shards[${i}].index`, `must be ${i}, got ${index}`);
    if (start !== next) fail("view", `shards[${i}].start`, `must be ${next}, got ${start}`);
    if (start % block !== 0) fail("view", `shards[${i}].start`, `must be a multiple of ${block}`);
    next = start + length;
    out.push({ index, start, length, aggregator });
  }
  if (next !== params) fail("view", "shards", `must cover ${params} params, cover ${next}`);
  return out;
}

/** A heartbeat ack's {@linkcode RunNews}: a round, a finite loss, a sample's bounded strings. */
function validateNews(m: Record<string, unknown>): RunNews {
  const type = "heartbeat_ack news";
  const round = int(m, type, "round");
  const loss = num(m, type, "eval_loss");
  if (!Number.isFinite(loss)) fail(type, "eval_loss", `must be finite, got ${loss}`);
  if (m.sample === undefined) return { round, eval_loss: loss };
  const s = obj(m.sample);
  for (const field of ["prompt", "text"]) {
    const v = s[field];
    if (typeof v !== "string" || v.length > MAX_TEXT_SAMPLE) {
      fail(type, `sample.${field}`, `must be a string of at most ${MAX_TEXT_SAMPLE} characters`);
    }
  }
  return { round, eval_loss: loss, sample: { prompt: s.prompt as string, text: s.text as string } };
}

function validateView(m: Record<string, unknown>): ViewMsg {
  const run = str(m, "view", "run");
  const epoch = int(m, "view", "epoch");
  const round = int(m, "view", "round");
  const trainers = strArray(m, "view", "trainers");
  const aggregators = strArray(m, "view", "aggregators");
  const params = int(m, "view", "params", 1);
  const block = int(m, "view", "block", 4);
  if (block % 4 !== 0) fail("view", "block", "must be a multiple of 4");
  const shards = validateShards(m, params, block);
  const ds = m.dataShards;
  if (!Array.isArray(ds) || ds.length !== trainers.length) {
    fail("view", "dataShards", "must have one entry per trainer");
  }
  for (const d of ds) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      fail("view", "dataShards", "must hold integers >= 0");
    }
  }
  if (typeof m.started !== "boolean") fail("view", "started", "must be a boolean");
  const rounds = int(m, "view", "rounds");
  return {
    type: "view",
    run,
    epoch,
    round,
    trainers,
    aggregators,
    shards,
    params,
    block,
    dataShards: ds as number[],
    started: m.started,
    rounds,
  };
}

/** n, the code bytes and the scales of a message, typed (their lengths unchecked). */
function tensors(
  m: Record<string, unknown>,
  type: string,
): { n: number; q: Int8Array; scales: Float32Array } {
  const n = int(m, type, "n", 1);
  if (n > MAX_TENSOR_ELEMENTS) fail(type, "n", `exceeds ${MAX_TENSOR_ELEMENTS}`);
  const q = asInt8(m.q);
  if (!q) fail(type, "q", "must be an Int8Array or bytes");
  const scales = asFloat32(m.scales);
  if (!scales) fail(type, "scales", "must be a Float32Array or 4-byte-aligned bytes");
  return { n, q, scales };
}

function validateTensorPair(
  m: Record<string, unknown>,
  type: string,
  block: number,
): { n: number; q: Int8Array; scales: Float32Array } {
  const { n, q, scales } = tensors(m, type);
  if (q.length !== n) fail(type, "q", `must have n=${n} elements, has ${q.length}`);
  const blocks = Math.ceil(n / block);
  if (scales.length !== blocks) {
    fail(type, "scales", `must have ${blocks} entries (one per ${block}), has ${scales.length}`);
  }
  return { n, q, scales };
}

/**
 * A contribution's tensors in its exchange format: a known format name, byte
 * codes, top-k offsets, and lengths that agree with n (the values inside are
 * the aggregator's to judge).
 */
function validateCoded(
  m: Record<string, unknown>,
  type: string,
  block: number,
): { n: number; format?: string; q: Int8Array; idx?: Uint8Array; scales: Float32Array } {
  if (m.format === undefined) return validateTensorPair(m, type, block);
  if (typeof m.format !== "string") fail(type, "format", "must be a string");
  let f: ExchangeFormat;
  try {
    f = parseExchange(m.format);
  } catch (err) {
    fail(type, "format", (err as Error).message.replace(/^Invalid exchange /, "is "));
  }
  if (f.kind === "int8") return { ...validateTensorPair(m, type, block), format: "int8" };
  const { n, q, scales } = tensors(m, type);
  const idx = m.idx === undefined ? undefined : asInt8(m.idx);
  if (m.idx !== undefined && !idx) fail(type, "idx", "must be bytes");
  const e = {
    q,
    scales,
    ...(idx ? { idx: new Uint8Array(idx.buffer, idx.byteOffset, idx.length) } : {}),
  };
  const bad = lengthProblem(f, e, n);
  if (bad) fail(type, bad.field, bad.detail);
  return { n, format: exchangeName(f), ...e };
}

/**
 * Checks that `x` is a well-formed run message and returns it typed, with
 * tensors as proper typed arrays (bytes from msgpack are viewed, not copied).
 * Shape checks that need the view (shard sizes, membership) are the
 * receiving role's job; this checks structure, types and internal sizes.
 *
 * @example
 * ```ts
 * import { validateRunMessage } from "./run_protocol_validate.ts";
 * import { throws } from "@std/assert";
 * const m = validateRunMessage({ type: "leave", run: "r1", node: "t1" });
 * console.log(m.type); // "leave"
 * throws(() => validateRunMessage({ type: "leave", run: "r1" }), /node/);
 * ```
 *
 * @throws {ProtocolError} naming the bad field
 */
export function validateRunMessage(x: unknown, options: { block?: number } = {}): RunMessage {
  const block = options.block ?? DEFAULT_BLOCK;
  const m = obj(x);
  const type = m.type;
  if (typeof type !== "string" || !(MESSAGE_TYPES as readonly string[]).includes(type)) {
    throw new ProtocolError(
      `Invalid run message: unknown type ${JSON.stringify(type)} (known: ${
        MESSAGE_TYPES.join(", ")
      })`,
    );
  }
  switch (type as RunMessage["type"]) {
    case "join": {
      const run = str(m, type, "run");
      const node = str(m, type, "node");
      const roles = strArray(m, type, "roles");
      if (roles.length === 0) fail(type, "roles", "must not be empty");
      for (const r of roles) {
        if (!(ROLES as readonly string[]).includes(r)) {
          fail(type, "roles", `has unknown role "${r}" (known: ${ROLES.join(", ")})`);
        }
      }
      const out: JoinMsg = { type: "join", run, node, roles: roles as Role[] };
      if (m.dataShard !== undefined) out.dataShard = int(m, type, "dataShard");
      if (m.view !== undefined) out.view = validateView(obj(m.view));
      if (m.address !== undefined) out.address = str(m, type, "address");
      return out;
    }
    case "join_reply": {
      const status = m.status;
      if (status !== "member" && status !== "pending") {
        fail(type, "status", `must be "member" or "pending"`);
      }
      return {
        type: "join_reply",
        run: str(m, type, "run"),
        node: str(m, type, "node"),
        status,
        dataShard: int(m, type, "dataShard"),
        view: validateView(obj(m.view)),
        incarnation: int(m, type, "incarnation"),
      };
    }
    case "leave":
      return { type: "leave", run: str(m, type, "run"), node: str(m, type, "node") };
    case "heartbeat":
      return {
        type: "heartbeat",
        run: str(m, type, "run"),
        node: str(m, type, "node"),
        epoch: int(m, type, "epoch"),
        ...(m.news !== undefined ? { news: int(m, type, "news") } : {}),
      };
    case "heartbeat_ack": {
      if (typeof m.known !== "boolean") fail(type, "known", "must be a boolean");
      const out: HeartbeatAckMsg = {
        type: "heartbeat_ack",
        run: str(m, type, "run"),
        known: m.known,
        incarnation: int(m, type, "incarnation"),
        epoch: int(m, type, "epoch"),
      };
      if (m.view !== undefined) out.view = validateView(obj(m.view));
      if (m.news !== undefined) out.news = validateNews(obj(m.news));
      return out;
    }
    case "view":
      return validateView(m);
    case "contribution": {
      const t = validateCoded(m, type, block);
      const tokens = int(m, type, "tokens", 1);
      const loss = num(m, type, "loss");
      return {
        type: "contribution",
        run: str(m, type, "run"),
        round: int(m, type, "round"),
        epoch: int(m, type, "epoch"),
        trainer: str(m, type, "trainer"),
        shard: int(m, type, "shard"),
        tokens,
        loss,
        ...(m.resend === true ? { resend: true as const } : {}),
        ...t,
      };
    }
    case "reject":
      return {
        type: "reject",
        run: str(m, type, "run"),
        round: int(m, type, "round"),
        trainer: str(m, type, "trainer"),
        shard: int(m, type, "shard"),
        reason: str(m, type, "reason") as RejectReason,
        detail: typeof m.detail === "string" ? m.detail : "",
      };
    case "update": {
      const t = validateCoded(m, type, block);
      return {
        type: "update",
        run: str(m, type, "run"),
        round: int(m, type, "round"),
        shard: int(m, type, "shard"),
        contributors: strArray(m, type, "contributors"),
        loss: num(m, type, "loss"),
        tokens: int(m, type, "tokens"),
        ...(m.check === undefined ? {} : { check: str(m, type, "check") }),
        ...t,
      };
    }
    case "state_request": {
      const out: StateRequestMsg = {
        type: "state_request",
        run: str(m, type, "run"),
        shard: int(m, type, "shard"),
      };
      if (m.seed !== undefined) {
        const seed = asFloat32(m.seed);
        if (!seed || seed.length === 0 || seed.length > MAX_TENSOR_ELEMENTS) {
          fail(type, "seed", "must be a non-empty Float32Array");
        }
        out.seed = seed;
      }
      return out;
    }
    case "state": {
      const theta = asFloat32(m.theta);
      if (!theta || theta.length === 0) fail(type, "theta", "must be a non-empty Float32Array");
      return {
        type: "state",
        run: str(m, type, "run"),
        round: int(m, type, "round"),
        shard: int(m, type, "shard"),
        theta,
      };
    }
    case "resend":
      return {
        type: "resend",
        run: str(m, type, "run"),
        round: int(m, type, "round"),
        shard: int(m, type, "shard"),
      };
    case "trainer_report": {
      if (typeof m.contributed !== "boolean") fail(type, "contributed", "must be a boolean");
      const out: Omit<TrainerReportMsg, "check"> = {
        type: "trainer_report",
        run: str(m, type, "run"),
        trainer: str(m, type, "trainer"),
        round: int(m, type, "round"),
        hash: str(m, type, "hash"),
        loss: num(m, type, "loss"),
        contributed: m.contributed,
        innerMs: num(m, type, "innerMs"),
        blockedMs: num(m, type, "blockedMs"),
        bytesUp: int(m, type, "bytesUp"),
        bytesDown: int(m, type, "bytesDown"),
        ...(m.cursor === undefined ? {} : { cursor: cursorField(m, type) }),
      };
      // A report altered on the way would show a θ hash (or round) no trainer holds.
      const check = str(m, type, "check");
      if (check !== reportCheck(out)) {
        fail(type, "check", `${check} does not match its fields (altered in transit)`);
      }
      return { ...out, check };
    }
    case "round_closed": {
      const out: RoundClosedMsg = {
        type: "round_closed",
        run: str(m, type, "run"),
        round: int(m, type, "round"),
        node: str(m, type, "node"),
      };
      if (m.view !== undefined) out.view = validateView(obj(m.view));
      if (m.contributors !== undefined) out.contributors = strArray(m, type, "contributors");
      return out;
    }
  }
}
