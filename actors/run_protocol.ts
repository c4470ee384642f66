/**
 * The messages of a decentralized training run: their types, the constants
 * every role shares, the shard map of the flat parameter vector, and how the
 * run's actors send them.
 *
 * Every message is plain data (msgpack-friendly): strings, numbers, arrays,
 * and typed arrays for tensors. Whatever arrives from the wire goes through
 * `validateRunMessage` (actors/run_protocol_validate.ts) before an actor sees
 * it; a bad message is answered with a {@linkcode ProtocolError} that names
 * the field and never reaches the role's logic.
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
import { textChecksum } from "./_checksum.ts";

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
  /** The round of the newest evaluation the node has heard of ({@linkcode RunNews}; absent: none). */
  news?: number;
}

/**
 * The run's newest evaluation, which the tracker passes on to members in
 * heartbeat acks (once to each): the loss of θ after `round` closed, and
 * the text it wrote when the run took a sample. A volunteer's terminal shows
 * it as the host's does.
 */
export interface RunNews {
  round: number;
  eval_loss: number;
  sample?: { prompt: string; text: string };
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
  /** The run's newest evaluation, when the node has not heard of it. */
  news?: RunNews;
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
  /**
   * The exchange format (kernels/exchange_format.ts: "int8", "int4",
   * "topk:F"); absent means int8. An aggregator refuses any but its run's.
   */
  format?: string;
  /** Code bytes: int8 one per element; int4 and top-k as actors/exchange.ts lays them out. */
  q: Int8Array;
  /** Top-k only: each sent value's offset in its block, increasing within a block. */
  idx?: Uint8Array;
  /** One f32 scale per block of the format (int8: `DEFAULT_BLOCK` elements). */
  scales: Float32Array;
  /** Mean inner-phase training loss (for reporting). */
  loss: number;
  /**
   * Sent again by a trainer that got no update for it: if the round already
   * closed with this trainer counted, the aggregator sends the round's update
   * again instead of refusing the message as stale.
   */
  resend?: true;
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
  | "absurd_norm"
  | "wrong_format"
  | "bad_index";

/**
 * The closed round's update for one shard: θ_{r+1} = θ_r + decode(q, idx,
 * scales) in its format (actors/exchange.ts `applyCoded`).
 */
export interface UpdateMsg {
  type: "update";
  run: string;
  /** The round that closed; the update turns θ_round into θ_{round+1}. */
  round: number;
  shard: number;
  n: number;
  /** The update's exchange format (absent: int8 with the run's block). */
  format?: string;
  q: Int8Array;
  /** Top-k only: each sent value's offset in its block. */
  idx?: Uint8Array;
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
  /**
   * {@linkcode reportCheck} of the fields above. A report is small enough to
   * travel without the transport's chunk digest, so a bit flipped on the way
   * could still decode as a valid report with another θ hash or round, and
   * the run would show trainers disagreeing on θ that agree; the check makes
   * the receiver refuse it instead.
   */
  check: string;
}

/** A trainer's data-sampler position (kernels/data.ts `DataCursor`). */
export interface ReportCursor {
  seed: number;
  shard: { index: number; count: number };
  step: number;
}

/**
 * The check of a trainer report: a checksum of every field but `type` and
 * `check`, in a fixed order.
 *
 * @example
 * ```ts
 * import { reportCheck } from "./run_protocol.ts";
 * const r = { run: "r", trainer: "t0", round: 1, hash: "ab", loss: 2, contributed: true,
 *   innerMs: 5, blockedMs: 1, bytesUp: 10, bytesDown: 10 };
 * console.log(reportCheck(r) !== reportCheck({ ...r, hash: "ac" })); // true
 * ```
 */
export function reportCheck(r: Omit<TrainerReportMsg, "type" | "check">): string {
  const c = r.cursor;
  return textChecksum(JSON.stringify([
    r.run,
    r.trainer,
    r.round,
    r.hash,
    r.loss,
    r.contributed,
    r.innerMs,
    r.blockedMs,
    r.bytesUp,
    r.bytesDown,
    c ? [c.seed, c.shard.index, c.shard.count, c.step] : null,
  ]));
}

/**
 * A trainer report with its check ({@linkcode reportCheck}).
 *
 * @example
 * ```ts
 * import { sealReport } from "./run_protocol.ts";
 * const r = sealReport({ type: "trainer_report", run: "r", trainer: "t0", round: 1, hash: "ab",
 *   loss: 2, contributed: true, innerMs: 5, blockedMs: 1, bytesUp: 10, bytesDown: 10 });
 * console.log(r.check.length); // 16
 * ```
 */
export function sealReport(r: Omit<TrainerReportMsg, "check">): TrainerReportMsg {
  return { ...r, check: reportCheck(r) };
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
export function tensorBytes(m: { q: Int8Array; idx?: Uint8Array; scales: Float32Array }): number {
  return m.q.byteLength + (m.idx?.byteLength ?? 0) + m.scales.byteLength;
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
