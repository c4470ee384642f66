/**
 * The messages of a decentralized training run and their validation.
 *
 * Every message is plain data (msgpack-friendly): strings, numbers, arrays,
 * and typed arrays for tensors. Whatever arrives from the wire goes through
 * {@linkcode validateRunMessage} before an actor sees it; a bad message is
 * answered with a {@linkcode ProtocolError} that names the field and never
 * reaches the role's logic.
 *
 * The round protocol (see DESIGN.md):
 * 1. the tracker publishes a {@linkcode ViewMsg} (epoch, round, trainers,
 *    aggregators, the shard map);
 * 2. each trainer runs H inner steps from θ_r and sends one
 *    {@linkcode ContributionMsg} per shard (int8 pseudo-gradient + scales);
 * 3. each aggregator closes the round and answers with an
 *    {@linkcode UpdateMsg} (int8 of θ_{r+1} − θ_r with per-block scales) that
 *    every trainer applies with the same arithmetic.
 *
 * @module
 */

/** A node's role in a run. */
export type Role = "trainer" | "aggregator" | "tracker" | "keeper";

/** All roles, for validation and `--role`. */
export const ROLES: readonly Role[] = ["trainer", "aggregator", "tracker", "keeper"];

/** Quantization block size (elements per scale) of every int8 tensor in a run. */
export const DEFAULT_BLOCK = 256;

/** Raised when a message is malformed; the message names the bad field. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** One contiguous shard of the flat parameter vector and its owner. */
export interface Shard {
  /** Shard number, 0-based. */
  index: number;
  /** First element (a multiple of the quantization block). */
  start: number;
  /** Number of elements. */
  length: number;
  /** Id of the aggregator that owns the shard. */
  aggregator: string;
}

/** A member's announcement; also used to re-announce to a restarted tracker. */
export interface JoinMsg {
  type: "join";
  run: string;
  /** Stable node id (unique within the run). */
  node: string;
  roles: Role[];
  /** Data shard the node already trains on (re-announce), if any. */
  dataShard?: number;
  /** The last view the node knows (re-announce after a tracker restart). */
  view?: ViewMsg;
  /** Where the node can be reached (transport address or actor name). */
  address?: string;
}

/** The tracker's answer to a join. */
export interface JoinReplyMsg {
  type: "join_reply";
  run: string;
  node: string;
  /** "member": in the current view; "pending": admitted at the next round boundary. */
  status: "member" | "pending";
  /** Data shard assigned to the node (trainers). */
  dataShard: number;
  /** The tracker's current view. */
  view: ViewMsg;
  /** The tracker's incarnation (increases on every tracker restart). */
  incarnation: number;
}

/** A member leaves on purpose. */
export interface LeaveMsg {
  type: "leave";
  run: string;
  node: string;
}

/** Liveness signal, every heartbeat interval (default 2 s). */
export interface HeartbeatMsg {
  type: "heartbeat";
  run: string;
  node: string;
  /** Epoch of the view the node holds. */
  epoch: number;
}

/** The tracker's answer to a heartbeat. */
export interface HeartbeatAckMsg {
  type: "heartbeat_ack";
  run: string;
  /** False when the tracker does not know the node (it restarted): re-announce. */
  known: boolean;
  incarnation: number;
  epoch: number;
  /** The current view, when the node's epoch is behind. */
  view?: ViewMsg;
}

/** A membership view: who trains and aggregates round `round`. */
export interface ViewMsg {
  type: "view";
  run: string;
  /** Increases whenever membership or the round changes. */
  epoch: number;
  /** The outer round this view is for. */
  round: number;
  /** Trainer ids, sorted. */
  trainers: string[];
  /** Aggregator ids, sorted. */
  aggregators: string[];
  /** The flat parameter vector's split into shards. */
  shards: Shard[];
  /** Total number of parameters. */
  params: number;
  /** Quantization block size. */
  block: number;
  /** Data shard of each trainer (same order as `trainers`). */
  dataShards: number[];
  /** False until the tracker opens the first round; trainers wait for it. */
  started: boolean;
  /** Rounds of the run (0: no bound); trainers stop after the last. */
  rounds: number;
}

/** One trainer's pseudo-gradient for one shard of one round. */
export interface ContributionMsg {
  type: "contribution";
  run: string;
  round: number;
  /** Epoch of the view the trainer worked under. */
  epoch: number;
  trainer: string;
  shard: number;
  /** Tokens the trainer processed this round (the averaging weight). */
  tokens: number;
  /** Number of elements in the shard. */
  n: number;
  /** int8 values, one per element. */
  q: Int8Array;
  /** One f32 scale per block of `DEFAULT_BLOCK` elements. */
  scales: Float32Array;
  /** Mean inner-phase training loss (for reporting). */
  loss: number;
}

/** An aggregator's answer when it refuses a contribution. */
export interface RejectMsg {
  type: "reject";
  run: string;
  round: number;
  trainer: string;
  shard: number;
  reason: RejectReason;
  detail: string;
}

/** Why a contribution was refused. */
export type RejectReason =
  | "malformed"
  | "wrong_run"
  | "stale_round"
  | "future_round"
  | "not_member"
  | "wrong_shard"
  | "wrong_shape"
  | "non_finite"
  | "duplicate"
  | "absurd_norm";

/** The closed round's update for one shard: θ_{r+1} = θ_r + dequant(q, scales). */
export interface UpdateMsg {
  type: "update";
  run: string;
  /** The round that closed; the update turns θ_round into θ_{round+1}. */
  round: number;
  shard: number;
  n: number;
  q: Int8Array;
  scales: Float32Array;
  /** Trainers whose contributions were averaged, sorted. */
  contributors: string[];
  /** Token-weighted mean of the contributors' inner losses. */
  loss: number;
  /** Total tokens of the contributors. */
  tokens: number;
  /** Checksum of the aggregator's shard of θ_{round+1} (actors/_checksum.ts). */
  check?: string;
}

/** A request for the start state of a shard (joiners, restarted trainers). */
export interface StateRequestMsg {
  type: "state_request";
  run: string;
  shard: number;
  /**
   * The requester's own initial θ of the shard: an aggregator that has no
   * state yet (round 0 of a new run) adopts the first seed it is offered, so
   * every trainer starts from the same bits.
   */
  seed?: Float32Array;
}

/** The exact θ of a shard at the start of `round`. */
export interface StateMsg {
  type: "state";
  run: string;
  /** θ is the start of this round. */
  round: number;
  shard: number;
  theta: Float32Array;
}

/** A restarted aggregator asks trainers to resend their contribution of `round`. */
export interface ResendMsg {
  type: "resend";
  run: string;
  round: number;
  shard: number;
}

/** An aggregator tells the tracker that `round` closed; the answer is the next round's view. */
export interface RoundClosedMsg {
  type: "round_closed";
  run: string;
  round: number;
  node: string;
  /** The aggregator's view, so that a restarted tracker can rebuild from it. */
  view?: ViewMsg;
  /**
   * Trainers whose contributions the round counted: they are alive, even
   * when their heartbeats cannot reach the tracker (a partition).
   */
  contributors?: string[];
}

/** What a trainer reports after applying a round's update (to the run's monitor). */
export interface TrainerReportMsg {
  type: "trainer_report";
  run: string;
  trainer: string;
  /** The round whose update was applied. */
  round: number;
  /** Hash of θ_{round+1}, the parameters the trainer starts the next round from. */
  hash: string;
  /** The trainer's own mean inner loss (0 when it did not contribute). */
  loss: number;
  /** Whether the trainer's contribution is among the update's contributors. */
  contributed: boolean;
  /** Inner-phase and blocked time of the round, ms. */
  innerMs: number;
  blockedMs: number;
  /** Encoded bytes the trainer sent and received this round. */
  bytesUp: number;
  bytesDown: number;
  /** The trainer's data cursor at the start of round + 1 (kept by checkpoint keepers). */
  cursor?: ReportCursor;
}

/** A trainer's data-sampler position (kernels/data.ts `DataCursor`). */
export interface ReportCursor {
  seed: number;
  shard: { index: number; count: number };
  step: number;
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

/** Any message of the run protocol. */
export type RunMessage =
  | JoinMsg
  | JoinReplyMsg
  | LeaveMsg
  | HeartbeatMsg
  | HeartbeatAckMsg
  | ViewMsg
  | ContributionMsg
  | RejectMsg
  | UpdateMsg
  | StateRequestMsg
  | StateMsg
  | ResendMsg
  | RoundClosedMsg
  | TrainerReportMsg;

/** Every message type name. */
export const MESSAGE_TYPES: readonly RunMessage["type"][] = [
  "join",
  "join_reply",
  "leave",
  "heartbeat",
  "heartbeat_ack",
  "view",
  "contribution",
  "reject",
  "update",
  "state_request",
  "state",
  "resend",
  "round_closed",
  "trainer_report",
];

/** Upper bound on any tensor a message may carry (elements), a guard against absurd frames. */
export const MAX_TENSOR_ELEMENTS = 1 << 28;
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

/**
 * Views `x` (an Int8Array, or bytes such as a msgpack `Buffer`) as an Int8Array
 * without copying.
 *
 * @example
 * ```ts
 * import { asInt8 } from "./run_protocol.ts";
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
 * import { asFloat32 } from "./run_protocol.ts";
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

function validateTensorPair(
  m: Record<string, unknown>,
  type: string,
  block: number,
): { n: number; q: Int8Array; scales: Float32Array } {
  const n = int(m, type, "n", 1);
  if (n > MAX_TENSOR_ELEMENTS) fail(type, "n", `exceeds ${MAX_TENSOR_ELEMENTS}`);
  const q = asInt8(m.q);
  if (!q) fail(type, "q", "must be an Int8Array or bytes");
  const scales = asFloat32(m.scales);
  if (!scales) fail(type, "scales", "must be a Float32Array or 4-byte-aligned bytes");
  if (q.length !== n) fail(type, "q", `must have n=${n} elements, has ${q.length}`);
  const blocks = Math.ceil(n / block);
  if (scales.length !== blocks) {
    fail(type, "scales", `must have ${blocks} entries (one per ${block}), has ${scales.length}`);
  }
  return { n, q, scales };
}

/**
 * Checks that `x` is a well-formed run message and returns it typed, with
 * tensors as proper typed arrays (bytes from msgpack are viewed, not copied).
 * Shape checks that need the view (shard sizes, membership) are the
 * receiving role's job; this checks structure, types and internal sizes.
 *
 * @example
 * ```ts
 * import { validateRunMessage } from "./run_protocol.ts";
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
      return out;
    }
    case "view":
      return validateView(m);
    case "contribution": {
      const t = validateTensorPair(m, type, block);
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
      const t = validateTensorPair(m, type, block);
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
      return {
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

/**
 * Splits `params` elements into `count` contiguous shards whose starts are
 * multiples of `block` (so no quantization block straddles two shards), and
 * gives shard i to `aggregators[i % aggregators.length]`.
 *
 * @example
 * ```ts
 * import { shardMap } from "./run_protocol.ts";
 * const shards = shardMap(1000, { aggregators: ["a0", "a1"], block: 256 });
 * console.log(shards.map((s) => [s.start, s.length, s.aggregator]));
 * // [[0, 512, "a0"], [512, 488, "a1"]]
 * ```
 */
export function shardMap(
  params: number,
  options: { aggregators: string[]; count?: number; block?: number },
): Shard[] {
  const block = options.block ?? DEFAULT_BLOCK;
  const aggs = options.aggregators;
  if (aggs.length === 0) throw new RangeError("Cannot build shard map: no aggregators");
  if (!Number.isSafeInteger(params) || params < 1) {
    throw new RangeError(
      `Cannot build shard map: params must be a positive integer, got ${params}`,
    );
  }
  const blocks = Math.ceil(params / block);
  const count = Math.max(1, Math.min(options.count ?? aggs.length, blocks));
  const shards: Shard[] = [];
  let start = 0;
  for (let i = 0; i < count; i++) {
    // Spread blocks as evenly as possible; earlier shards take the remainder.
    const nBlocks = Math.floor(blocks / count) + (i < blocks % count ? 1 : 0);
    const end = Math.min(params, start + nBlocks * block);
    shards.push({ index: i, start, length: end - start, aggregator: aggs[i % aggs.length] });
    start = end;
  }
  return shards;
}

/** Sizes a message would take on the wire, to count communication without a socket. */
export function tensorBytes(m: { q: Int8Array; scales: Float32Array }): number {
  return m.q.byteLength + m.scales.byteLength;
}

/**
 * Sends `msg` to the actor at `path` on a later microtask. The run's actors
 * send this way so that a reply sent back at once never reaches a sender that
 * is still inside its own handler (the actor runtime can start a second
 * handler of an actor whose first one has not yet reached its first await).
 * A path that is not a valid actor path is reported to `onError`, never thrown.
 */
export function tellLater(
  system: { ref(path: string): { tell(msg: unknown): void } },
  path: string,
  msg: unknown,
  onError?: (err: unknown) => void,
): void {
  queueMicrotask(() => {
    try {
      system.ref(path).tell(msg);
    } catch (err) {
      onError?.(err);
    }
  });
}
