/**
 * The gradient aggregator's logic as a pure state machine.
 *
 * One {@linkcode ShardAggregator} owns one shard of the flat parameter vector:
 * per round it knows which trainers to expect (from the view), accepts each
 * trainer's contribution at most once, rejects and names bad ones, closes when
 * everyone has sent (or at a deadline with a quorum), averages the dequantized
 * pseudo-gradients in fp32 weighted by tokens (contributions in the run's
 * exchange format, actors/exchange.ts; or combines them with a robust rule,
 * actors/robust_aggregate.ts), takes a Nesterov SGD step
 * (actors/outer_optimizer.ts) and emits the update coded in the run's update
 * format: int8 with per-block scales by default, or int4 or top-k
 * (`updateExchange`, to cut what every trainer downloads). It applies to its
 * own θ exactly the decoded update it sends, bit for bit as `applyCoded`
 * (actors/exchange.ts), the function every trainer calls, does. What the code
 * could not carry (the quantization residual, or for top-k everything not
 * sent) is fed back into the next round's update: error feedback on the
 * aggregator's side.
 *
 * All arithmetic is on Float32Array elements in a fixed order, so the result
 * does not depend on message arrival order.
 *
 * The module is one piece: the guards (shape, finite scales, the absurd-norm
 * test against the median of recent norms) decide what `close` averages, and
 * the norm history they read is part of the state a restart restores, so
 * they live with the state machine they guard.
 *
 * @module
 */
import {
  type ContributionMsg,
  DEFAULT_BLOCK,
  type RejectReason,
  type Shard,
  type UpdateMsg,
  type ViewMsg,
} from "./run_protocol.ts";
import { DEFAULT_OUTER, outerAt, type OuterOptimizer } from "./outer_optimizer.ts";
import {
  decodeEncoded,
  type Encoded,
  encodedNorm,
  encodedProblem,
  formatOf,
  sliceEncoded,
  toWire,
} from "./exchange.ts";
import { feedbackEncodeRef } from "../kernels/lowbit_reference.ts";
import {
  DEFAULT_EXCHANGE,
  encodedSize,
  type ExchangeFormat,
  exchangeName,
  parseExchange,
} from "../kernels/exchange_format.ts";
import { type AggregateRule, DEFAULT_AGGREGATE, robustCombine } from "./robust_aggregate.ts";
import { int8Code, int8Scale, nesterovStepRef, quantizedSize } from "../kernels/reference.ts";
import { checkFragments, type Piece, roundPiece } from "./fragments.ts";
import { tensorChecksum } from "./_checksum.ts";
import { SpareArrays } from "./_spares.ts";
import { addDecodedInt8 } from "./int8_exchange.ts";

/**
 * The work arrays of a close (see `ShardAggregator.#work`), three of the
 * shard's size: the combined Δ, which after the outer step holds the move
 * θ_target − θ and then its sum with the residual (each read only where it is
 * written); a decoded contribution, later the decoded update; and θ_target.
 */
const WORK_DELTA = 0;
const WORK_DECODED = 1;
const WORK_TARGET = 2;

/** Values per range of {@linkcode ShardAggregator.closeInRanges} by default (tens of ms each). */
export const DEFAULT_CLOSE_CHUNK = 1 << 20;

/** What a close decided before its arithmetic (see `ShardAggregator.#prepareClose`). */
interface PreparedClose {
  entries: Accepted[];
  rejected: Rejection[];
  missing: string[];
  reason: "complete" | "deadline";
  tokens: number;
  loss: number;
  /** The piece of the shard this round moves. */
  piece: Piece;
}

/** Resolves on a later turn of the event loop (its timers and I/O run first). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** A contribution the aggregator refused, with the reason named. */
export interface Rejection {
  round: number;
  trainer: string;
  shard: number;
  reason: RejectReason;
  detail: string;
}

/** The answer to {@linkcode ShardAggregator.offer}. */
export type OfferResult =
  | { status: "accepted" }
  | { status: "parked"; detail: string }
  | { status: "rejected"; rejection: Rejection };

/** What closing a round produced. */
export interface CloseResult {
  /** The update to send to every trainer of the next view. */
  update: UpdateMsg;
  /** Contributions dropped at close (absurd norm against the round's median). */
  rejected: Rejection[];
  /** Trainers that were expected but did not send (closed at the deadline). */
  missing: string[];
  /** Why the round closed. */
  reason: "complete" | "deadline";
}

/** The state an aggregator must not lose: enough to resume the shard after a restart. */
export interface AggregatorState {
  run: string;
  shard: Shard;
  /** θ of the shard at the start of `round`. */
  round: number;
  theta: Float32Array;
  momentum: Float32Array;
  residual: Float32Array;
  /** The last view the aggregator acted on. */
  view?: ViewMsg;
  /** Recent accepted contribution norms (the absurd-update guard). */
  norms: number[];
  /** The last round's combined pseudo-gradient, the center of `clip` (only with that rule). */
  center?: Float32Array;
}

/** Options of a {@linkcode ShardAggregator}. */
export interface ShardAggregatorOptions {
  /** Run id; contributions of other runs are rejected. */
  run: string;
  /** The shard this aggregator owns. */
  shard: Shard;
  /** θ of the shard at the start of `round` (copied). */
  theta: Float32Array;
  /** The round to open (default 0). */
  round?: number;
  /** Outer optimizer (default {@linkcode DEFAULT_OUTER}). */
  outer?: OuterOptimizer;
  /** Quantization block of the update (default 256). */
  block?: number;
  /**
   * The run's exchange format of contributions (default "int8"); any other
   * is refused as "wrong_format".
   */
  exchange?: string;
  /**
   * The format of the update it emits (default "int8", with the run's
   * block): "int4" or "topk:F" cut what each trainer downloads; what the
   * code leaves out is carried into the next round's update.
   */
  updateExchange?: string;
  /** Fraction of the expected trainers needed to close at the deadline (default 0.5). */
  quorum?: number;
  /**
   * The deadline: after the first contribution of a round arrives, wait at most
   * max(`minWaitMs`, `slack` × time from opening to that first arrival) for the
   * others. Scales with how long a round takes (defaults 10 s and 1).
   */
  minWaitMs?: number;
  /** See `minWaitMs` (default 1). */
  slack?: number;
  /** A contribution whose norm exceeds this many times the median is refused (default 100). */
  absurdFactor?: number;
  /** The clock, in ms (default `Date.now`). */
  now?: () => number;
  /**
   * How contributions are combined (default {@linkcode DEFAULT_AGGREGATE},
   * the token-weighted mean).
   */
  aggregate?: AggregateRule;
  /**
   * Fragments of the run (default 1): round r aggregates only the piece of the
   * shard that fragment r mod F covers (actors/fragments.ts); θ, momentum and
   * residual of the other pieces wait for their rounds.
   */
  fragments?: number;
  /** Restore momentum, residual, norm history and clipping center from a saved state. */
  restore?: Pick<AggregatorState, "momentum" | "residual" | "norms" | "center">;
}

interface Accepted {
  msg: ContributionMsg;
  norm: number;
}

/**
 * The per-shard aggregation state machine. Feed it views
 * ({@linkcode ShardAggregator.setView}) and contributions
 * ({@linkcode ShardAggregator.offer}); ask {@linkcode ShardAggregator.ready}
 * and then {@linkcode ShardAggregator.close}.
 *
 * @example Two trainers, one round
 * ```ts
 * import { ShardAggregator } from "./aggregation.ts";
 * import { quantizeInt8 } from "./int8_exchange.ts";
 * import { shardMap } from "./run_protocol.ts";
 * const shard = shardMap(4, { aggregators: ["a0"] })[0];
 * const agg = new ShardAggregator({ run: "r", shard, theta: new Float32Array(4) });
 * agg.setView({
 *   type: "view", run: "r", epoch: 1, round: 0, trainers: ["t0", "t1"], aggregators: ["a0"],
 *   shards: [shard], params: 4, block: 256, dataShards: [0, 1], started: true, rounds: 0,
 * });
 * for (const trainer of ["t0", "t1"]) {
 *   const { q, scales } = quantizeInt8(new Float32Array([0.1, 0.2, 0.3, 0.4]));
 *   agg.offer({ type: "contribution", run: "r", round: 0, epoch: 1, trainer, shard: 0,
 *     tokens: 64, n: 4, q, scales, loss: 2 });
 * }
 * console.log(agg.ready(), agg.close().update.contributors); // true ["t0", "t1"]
 * ```
 */
export class ShardAggregator {
  #run: string;
  #shard: Shard;
  #round: number;
  #theta: Float32Array;
  #momentum: Float32Array;
  #residual: Float32Array;
  #outer: OuterOptimizer;
  #block: number;
  #format: ExchangeFormat;
  #formatName: string;
  /** The update's format (int8 with the run's block by default). */
  #updateFormat: ExchangeFormat;
  #quorum: number;
  #minWaitMs: number;
  #slack: number;
  #absurd: number;
  #now: () => number;
  #fragments: number;
  #view?: ViewMsg;
  #expected = new Set<string>();
  #accepted = new Map<string, Accepted>();
  #parked: ContributionMsg[] = [];
  #openedAt: number;
  #firstAt?: number;
  #norms: number[];
  #aggregate: AggregateRule;
  #center?: Float32Array;
  /**
   * Work arrays of a round's close, kept from round to round: a fresh array
   * of a large shard's size costs its page faults on every use (at GPT-2
   * small on a VM, seconds of a close that blocks the aggregator's event loop).
   */
  #work: Float32Array[] = [];
  /**
   * Arrays of saved states that came back ({@linkcode ShardAggregator.recycleState}):
   * the next state is copied into them instead of into fresh memory.
   */
  #statePool = new SpareArrays(8);
  /**
   * Momentum and residual still hold the zeros of a fresh start (no close
   * began): a copy of them is a fresh zero array, whose pages cost nothing
   * until written. A new run's first state (three shard-sized copies, at
   * GPT-2 small part of a 30 s stall of the host) copies θ alone.
   */
  #zeros: boolean;

  constructor(options: ShardAggregatorOptions) {
    const { shard } = options;
    if (options.theta.length !== shard.length) {
      throw new RangeError(
        `Cannot create aggregator: θ has ${options.theta.length} elements, shard ${shard.index} has ${shard.length}`,
      );
    }
    this.#run = options.run;
    this.#shard = shard;
    this.#round = options.round ?? 0;
    this.#theta = new Float32Array(options.theta);
    const restore = options.restore;
    this.#momentum = restore ? new Float32Array(restore.momentum) : new Float32Array(shard.length);
    this.#residual = restore ? new Float32Array(restore.residual) : new Float32Array(shard.length);
    this.#zeros = !restore;
    this.#norms = [...(options.restore?.norms ?? [])];
    this.#aggregate = { ...(options.aggregate ?? DEFAULT_AGGREGATE) };
    const center = restore?.center;
    if (center && center.length === shard.length) this.#center = new Float32Array(center);
    this.#outer = { ...(options.outer ?? DEFAULT_OUTER) };
    this.#block = options.block ?? DEFAULT_BLOCK;
    this.#formatName = formatOf({ format: options.exchange ?? DEFAULT_EXCHANGE });
    const format = parseExchange(this.#formatName);
    // int8 contributions use the run's block, as the update does.
    this.#format = format.kind === "int8" ? { kind: "int8", block: this.#block } : format;
    const update = parseExchange(formatOf({ format: options.updateExchange }));
    this.#updateFormat = update.kind === "int8" ? { kind: "int8", block: this.#block } : update;
    this.#quorum = options.quorum ?? 0.5;
    this.#minWaitMs = options.minWaitMs ?? 10_000;
    this.#slack = options.slack ?? 1;
    this.#absurd = options.absurdFactor ?? 100;
    this.#now = options.now ?? Date.now;
    this.#fragments = checkFragments(options.fragments ?? 1);
    // Refuses a fragment count that would leave a piece of this shard empty.
    roundPiece(shard, 0, this.#fragments, this.#block);
    this.#openedAt = this.#now();
  }

  /** The open round. */
  get round(): number {
    return this.#round;
  }

  /** The shard this aggregator owns. */
  get shard(): Shard {
    return this.#shard;
  }

  /** The piece of the shard round `round` aggregates (the whole shard with one fragment). */
  piece(round: number = this.#round): Piece {
    return roundPiece(this.#shard, round, this.#fragments, this.#block);
  }

  /** A copy of θ of the shard at the start of the open round. */
  theta(): Float32Array {
    return new Float32Array(this.#theta);
  }

  /** The checksum of θ of the shard at the start of the open round (as `tensorChecksum`). */
  thetaChecksum(): string {
    return tensorChecksum(this.#theta);
  }

  /** Work array `slot` of n floats, its contents left from its last use. */
  #workArray(slot: number, n: number): Float32Array {
    let w = this.#work[slot];
    if (w === undefined || w.length < n) w = this.#work[slot] = new Float32Array(n);
    return w.subarray(0, n);
  }

  /** Trainers still expected this round, sorted. */
  missing(): string[] {
    return [...this.#expected].filter((t) => !this.#accepted.has(t)).sort();
  }

  /** Trainers whose contribution this round was accepted, sorted. */
  received(): string[] {
    return [...this.#accepted.keys()].sort();
  }

  /**
   * Takes back the arrays of a state this shard saved, once nothing reads
   * them any more: {@linkcode ShardAggregator.stateInRanges} copies the next
   * states into them.
   */
  recycleState(state: AggregatorState): void {
    this.#statePool.give(
      [state.theta, state.momentum, state.residual, ...(state.center ? [state.center] : [])]
        .filter((x) => x.length === this.#shard.length),
    );
  }

  /** Everything needed to resume this shard after a restart (copies). */
  state(): AggregatorState {
    const c = (x: Float32Array) => new Float32Array(x);
    const z = (x: Float32Array) => this.#zeros ? new Float32Array(x.length) : c(x);
    const center = this.#center && c(this.#center);
    return this.#stateOf(c(this.#theta), z(this.#momentum), z(this.#residual), center);
  }

  /** The state around copies of the vectors. */
  #stateOf(
    theta: Float32Array,
    momentum: Float32Array,
    residual: Float32Array,
    center: Float32Array | undefined,
  ): AggregatorState {
    return {
      run: this.#run,
      shard: { ...this.#shard },
      round: this.#round,
      theta,
      momentum,
      residual,
      view: this.#view,
      norms: [...this.#norms],
      ...(center ? { center } : {}),
    };
  }

  /**
   * {@linkcode ShardAggregator.state} with `pause()` awaited after each
   * `chunk` values copied (default {@linkcode DEFAULT_CLOSE_CHUNK}), counted
   * over all its vectors: three fresh copies of a large shard take seconds on
   * a machine whose page faults are slow, while a small shard's state is
   * copied in one go, as by `state`. Nothing else may touch the aggregator
   * until it resolves.
   */
  async stateInRanges(
    options: { chunk?: number; pause?: () => Promise<void> } = {},
  ): Promise<AggregatorState> {
    const chunk = Math.max(1, options.chunk ?? DEFAULT_CLOSE_CHUNK);
    const pause = options.pause ?? nextTurn;
    let copied = 0;
    const copy = async (x: Float32Array) => {
      const out = this.#statePool.take(x.length);
      for (let a = 0; a < x.length;) {
        if (copied >= chunk) {
          await pause();
          copied = 0;
        }
        const b = Math.min(x.length, a + chunk - copied);
        out.set(x.subarray(a, b), a);
        copied += b - a;
        a = b;
      }
      return out;
    };
    const zeros = this.#zeros;
    const theta = await copy(this.#theta);
    const momentum = zeros ? new Float32Array(this.#momentum.length) : await copy(this.#momentum);
    const residual = zeros ? new Float32Array(this.#residual.length) : await copy(this.#residual);
    const center = this.#center && await copy(this.#center);
    return this.#stateOf(theta, momentum, residual, center);
  }

  /**
   * Takes a view. A view for the open round sets the expected trainers (evicted
   * trainers are no longer waited for; what they already sent still counts). A
   * view of another round only removes trainers from the open round, and is
   * kept for when the next round opens. Returns the re-offered results of
   * contributions that were parked waiting for this view.
   */
  setView(view: ViewMsg): OfferResult[] {
    if (view.run !== this.#run) {
      throw new RangeError(`Cannot take view: run "${view.run}" is not "${this.#run}"`);
    }
    if (this.#view && view.epoch < this.#view.epoch) return [];
    this.#view = view;
    if (view.round === this.#round) {
      this.#expected = new Set(view.trainers);
    } else {
      // A view of another round still tells who left or was evicted.
      for (const t of [...this.#expected]) {
        if (!view.trainers.includes(t)) this.#expected.delete(t);
      }
    }
    const parked = this.#parked;
    this.#parked = [];
    return parked.map((m) => this.offer(m));
  }

  #reject(m: ContributionMsg, reason: RejectReason, detail: string): OfferResult {
    return {
      status: "rejected",
      rejection: { round: m.round, trainer: m.trainer, shard: m.shard, reason, detail },
    };
  }

  /**
   * Offers a contribution. It is accepted at most once per trainer and round;
   * otherwise refused with a named reason. A contribution from a trainer not in
   * the view but made under a newer epoch than the aggregator's is parked until
   * that view arrives.
   */
  offer(m: ContributionMsg): OfferResult {
    const who = `trainer ${m.trainer} round ${m.round} shard ${m.shard}`;
    if (m.run !== this.#run) return this.#reject(m, "wrong_run", `${who}: run "${m.run}"`);
    if (m.shard !== this.#shard.index) {
      return this.#reject(m, "wrong_shard", `${who}: this aggregator owns ${this.#shard.index}`);
    }
    if (m.round < this.#round) {
      return this.#reject(m, "stale_round", `${who}: round ${this.#round} is open`);
    }
    if (m.round > this.#round) {
      return this.#reject(m, "future_round", `${who}: round ${this.#round} is open`);
    }
    if (!this.#expected.has(m.trainer)) {
      if (this.#view && m.epoch > this.#view.epoch && this.#parked.length < 64) {
        this.#parked.push(m);
        return { status: "parked", detail: `${who}: epoch ${m.epoch} view not yet seen` };
      }
      return this.#reject(m, "not_member", `${who}: not a trainer of this round's view`);
    }
    if (this.#accepted.has(m.trainer)) {
      return this.#reject(m, "duplicate", `${who}: already counted`);
    }
    let format: string;
    try {
      format = formatOf(m);
    } catch (err) {
      return this.#reject(m, "wrong_format", `${who}: ${(err as Error).message}`);
    }
    if (format !== this.#formatName) {
      return this.#reject(
        m,
        "wrong_format",
        `${who}: ${format}, the run exchanges ${this.#formatName}`,
      );
    }
    // With fragments, the round's piece of the shard (the whole shard with one).
    const { lo, hi } = this.piece();
    if (m.n !== hi - lo) {
      return this.#reject(m, "wrong_shape", `${who}: n=${m.n}, expected n=${hi - lo}`);
    }
    const bad = encodedProblem(this.#format, m, m.n);
    if (bad) return this.#reject(m, bad.reason, `${who}: ${format} ${bad.field} ${bad.detail}`);
    if (!Number.isFinite(m.loss)) return this.#reject(m, "non_finite", `${who}: loss ${m.loss}`);
    if (!Number.isSafeInteger(m.tokens) || m.tokens <= 0) {
      return this.#reject(m, "wrong_shape", `${who}: tokens ${m.tokens}`);
    }
    for (let b = 0; b < m.scales.length; b++) {
      const s = m.scales[b];
      if (!Number.isFinite(s) || s < 0) {
        return this.#reject(m, "non_finite", `${who}: scale of block ${b} is ${s}`);
      }
    }
    const norm = encodedNorm(this.#format, m, m.n);
    if (this.#norms.length >= 3) {
      const med = median(this.#norms);
      if (norm > this.#absurd * med) {
        return this.#reject(
          m,
          "absurd_norm",
          `${who}: norm ${norm.toExponential(3)} > ${this.#absurd} x median ${
            med.toExponential(3)
          }`,
        );
      }
    }
    this.#accepted.set(m.trainer, { msg: m, norm });
    this.#firstAt ??= this.#now();
    return { status: "accepted" };
  }

  /** When the open round closes at the latest (undefined before the first arrival). */
  deadline(): number | undefined {
    if (this.#firstAt === undefined) return undefined;
    const wait = Math.max(this.#minWaitMs, this.#slack * (this.#firstAt - this.#openedAt));
    return this.#firstAt + wait;
  }

  /** Quorum for the open round: ceil(fraction × expected), at least 1. */
  quorum(): number {
    return Math.max(1, Math.ceil(this.#quorum * this.#expected.size));
  }

  /** True when the round can close: every expected trainer sent, or deadline + quorum. */
  ready(): boolean {
    const got = [...this.#expected].filter((t) => this.#accepted.has(t)).length;
    if (this.#accepted.size > 0 && got >= this.#expected.size) return true;
    const deadline = this.deadline();
    return deadline !== undefined && this.#now() >= deadline &&
      this.#accepted.size >= this.quorum();
  }

  /**
   * Combines the contributions to [a, b) of the piece [lo, hi) of the shard
   * this round moves (a and b offsets in the piece). A robust rule takes the
   * whole piece at once (a = 0, b = hi − lo): its rows are whole vectors.
   */
  #combine(
    entries: Accepted[],
    tokens: number,
    piece: { lo: number; hi: number },
    a: number,
    b: number,
  ): Float32Array {
    const n = b - a;
    if (this.#aggregate.kind !== "mean") {
      const { lo, hi } = piece;
      const rows = entries.map((e) => {
        const row = new Float32Array(n);
        decodeEncoded(this.#format, e.msg, n, row);
        return row;
      });
      // The clipping center is the previous combined update of the same piece (with fragments,
      // the piece's last round), kept for the whole shard.
      const center = this.#center?.subarray(lo, hi);
      const delta = robustCombine(rows, this.#aggregate, { center });
      if (this.#aggregate.kind === "clip") {
        this.#center ??= new Float32Array(this.#shard.length);
        this.#center.set(delta, lo);
      }
      return delta;
    }
    // The token-weighted mean, fp32, fixed order.
    const delta = this.#workArray(WORK_DELTA, n).fill(0);
    if (this.#format.kind === "int8") {
      // Decoded and summed in one pass, each value as decodeEncoded gives it,
      // f32(code × scale), and added as below: the same bits without a second
      // pass over a decoded copy (it cost as much as the sum, per contribution).
      // a is a multiple of the block (ranges start on every block in play).
      for (const e of entries) {
        const weight = Math.fround(e.msg.tokens / tokens);
        addDecodedInt8(delta, e.msg, { block: this.#format.block, weight, from: a, to: b });
      }
      return delta;
    }
    const whole = a === 0 && b === piece.hi - piece.lo;
    const decoded = this.#workArray(WORK_DECODED, n);
    for (const e of entries) {
      const w = Math.fround(e.msg.tokens / tokens);
      const codes = whole ? e.msg : sliceEncoded(this.#format, e.msg, { start: a, length: n });
      decodeEncoded(this.#format, codes, n, decoded);
      for (let i = 0; i < n; i++) delta[i] += Math.fround(w * decoded[i]);
    }
    return delta;
  }

  /**
   * Codes the move θ_target − θ plus the residual in the update format,
   * applies what it sends to θ and leaves in the residual what it did not.
   */
  #codeUpdate(target: Float32Array, theta: Float32Array, residual: Float32Array): Encoded {
    const n = theta.length;
    const f = this.#updateFormat;
    if (f.kind === "int8") return this.#codeUpdateInt8(target, theta, residual, f.block);
    // Δ is spent (the outer step took it): its array holds the move, then the move plus the residual.
    const move = this.#workArray(WORK_DELTA, n);
    for (let i = 0; i < n; i++) move[i] = target[i] - theta[i];
    const sent = this.#workArray(WORK_DECODED, n);
    const wire = toWire(f, feedbackEncodeRef(f, move, residual, { x: move, sent }), n);
    // θ takes what the update carries, decoded as the feedback just did and
    // added in f32, as every trainer applies it (applyCoded): no second decode.
    for (let i = 0; i < n; i++) theta[i] += sent[i];
    return wire;
  }

  /**
   * {@linkcode ShardAggregator.#codeUpdate} for an int8 update, a block at a
   * time: the move plus the residual, its absmax scale, the codes, what they
   * decode to, the residual left and θ, with the operations and roundings of
   * `feedbackEncodeRef`, `quantizeInt8Ref` (its `int8Scale` and `int8Code`)
   * and `dequantizeInt8Ref` (so the same bits), in two passes over each block
   * instead of six over the shard.
   */
  #codeUpdateInt8(
    target: Float32Array,
    theta: Float32Array,
    residual: Float32Array,
    block: number,
  ): Encoded {
    const n = theta.length;
    const size = quantizedSize(n, block);
    const codes = new Int8Array(size.words * 4);
    const scales = new Float32Array(size.scales);
    const x = this.#workArray(WORK_DELTA, n);
    for (let s = 0, k = 0; s < n; s += block, k++) {
      const end = Math.min(n, s + block);
      let amax = 0;
      let finite = true;
      for (let i = s; i < end; i++) {
        const xi = Math.fround(Math.fround(target[i] - theta[i]) + residual[i]);
        x[i] = xi;
        const a = Math.abs(xi);
        if (!Number.isFinite(a)) finite = false;
        else if (a > amax) amax = a;
      }
      const scale = int8Scale(amax, finite);
      scales[k] = scale;
      for (let i = s; i < end; i++) {
        const xi = x[i];
        const q = int8Code(xi, scale);
        codes[i] = q;
        const sent = Math.fround(q * scale);
        residual[i] = Math.fround(xi - sent);
        theta[i] += sent;
      }
    }
    return { q: codes.subarray(0, n), scales };
  }

  /** What a close decides before its arithmetic: the entries that count and the totals. */
  #prepareClose(): PreparedClose {
    const reason = this.missing().length === 0 ? "complete" : "deadline";
    const missing = this.missing();
    let entries = [...this.#accepted.values()].sort((a, b) =>
      a.msg.trainer < b.msg.trainer ? -1 : a.msg.trainer > b.msg.trainer ? 1 : 0
    );
    const rejected: Rejection[] = [];
    if (entries.length >= 3) {
      const med = median(entries.map((e) => e.norm));
      entries = entries.filter((e) => {
        if (e.norm <= this.#absurd * med) return true;
        rejected.push({
          round: this.#round,
          trainer: e.msg.trainer,
          shard: this.#shard.index,
          reason: "absurd_norm",
          detail: `trainer ${e.msg.trainer} round ${this.#round} shard ${this.#shard.index}: norm ${
            e.norm.toExponential(3)
          } > ${this.#absurd} x round median ${med.toExponential(3)}`,
        });
        return false;
      });
    }
    if (entries.length === 0) {
      throw new RangeError(`Cannot close round ${this.#round}: no contribution accepted`);
    }
    let tokens = 0;
    for (const e of entries) tokens += e.msg.tokens;
    let loss = 0;
    for (const e of entries) loss += e.msg.loss * e.msg.tokens / tokens;
    // With fragments, only this round's piece of the shard moves.
    // The arithmetic that follows writes momentum and residual.
    this.#zeros = false;
    return { entries, rejected, missing, reason, tokens, loss, piece: this.piece() };
  }

  /**
   * The round's arithmetic on [a, b) of its piece: the combined Δ, the
   * Nesterov step (PyTorch's: m = mu m + Δ; θ' = θ − lr (Δ + mu m)) and the
   * update's code of θ' − θ plus what earlier rounds' codes left out, applied
   * to θ. Every part is element-wise or per block of the formats, so [a, b)
   * cut at multiples of the blocks gives the bits of the whole piece.
   */
  #closeRange(p: PreparedClose, a: number, b: number): Encoded {
    const { lo } = p.piece;
    const n = b - a;
    const delta = this.#combine(p.entries, p.tokens, p.piece, a, b);
    const thetaR = this.#theta.subarray(lo + a, lo + b);
    const target = this.#workArray(WORK_TARGET, n);
    target.set(thetaR);
    const step = outerAt(this.#outer, this.#round);
    nesterovStepRef(
      { theta: target, momentum: this.#momentum.subarray(lo + a, lo + b), delta },
      { n, lr: step.lr, mu: step.momentum },
    );
    return this.#codeUpdate(target, thetaR, this.#residual.subarray(lo + a, lo + b));
  }

  /** Sends the update of the closed round and opens the next one. */
  #finishClose(p: PreparedClose, wire: Encoded): CloseResult {
    for (const e of p.entries) this.#norms.push(e.norm);
    if (this.#norms.length > 32) this.#norms.splice(0, this.#norms.length - 32);
    const f = this.#updateFormat;
    const update: UpdateMsg = {
      type: "update",
      run: this.#run,
      round: this.#round,
      shard: this.#shard.index,
      n: p.piece.hi - p.piece.lo,
      // An int8 update names no format (what every trainer has always read).
      ...(f.kind === "int8" ? wire : { format: exchangeName(f), ...wire }),
      contributors: p.entries.map((e) => e.msg.trainer),
      loss: p.loss,
      tokens: p.tokens,
    };
    this.#round += 1;
    this.#accepted.clear();
    this.#firstAt = undefined;
    this.#openedAt = this.#now();
    // Until the next round's view arrives, expect the same trainers.
    if (this.#view) this.#expected = new Set(this.#view.trainers);
    return { update, rejected: p.rejected, missing: p.missing, reason: p.reason };
  }

  /**
   * Closes the open round: drops absurd contributions, averages the rest in
   * fp32 weighted by tokens (trainers in sorted order) or combines them with
   * the robust rule of the `aggregate` option, takes the outer
   * Nesterov step, codes θ_target − θ + residual in the update format,
   * applies exactly what it sends to its own θ, keeps what the code left out
   * as the residual, and opens the next round.
   *
   * @throws {RangeError} when nothing was accepted
   */
  close(): CloseResult {
    const p = this.#prepareClose();
    return this.#finishClose(p, this.#closeRange(p, 0, p.piece.hi - p.piece.lo));
  }

  /**
   * {@linkcode ShardAggregator.close} with the same bits, in ranges of about
   * `chunk` values (default {@linkcode DEFAULT_CLOSE_CHUNK}, rounded up to a
   * multiple of the run's and the formats' blocks) with
   * `pause()` awaited between two: the event loop of a host whose shard is
   * large turns in between (a close of 43M parameters takes seconds), so its
   * other actors go on. The token-weighted mean is cut; a robust rule, which
   * needs the whole piece, runs whole. Nothing else may touch the aggregator
   * until it resolves.
   *
   * @throws {RangeError} when nothing was accepted
   */
  async closeInRanges(
    options: { chunk?: number; pause?: () => Promise<void> } = {},
  ): Promise<CloseResult> {
    const p = this.#prepareClose();
    const n = p.piece.hi - p.piece.lo;
    // Ranges start at multiples of every block in play: the run's, the contributions' and the update's.
    const align = [this.#format.block, this.#updateFormat.block].reduce(
      (x, y) => x / gcd(x, y) * y,
      this.#block,
    );
    const asked = options.chunk ?? DEFAULT_CLOSE_CHUNK;
    const chunk = Math.max(align, Math.ceil(asked / align) * align);
    if (this.#aggregate.kind !== "mean" || n <= chunk) {
      return this.#finishClose(p, this.#closeRange(p, 0, n));
    }
    const pause = options.pause ?? nextTurn;
    const f = this.#updateFormat;
    const size = encodedSize(n, f);
    const out: Encoded = {
      q: new Int8Array(size.codes),
      ...(size.offsets > 0 ? { idx: new Uint8Array(size.offsets) } : {}),
      scales: new Float32Array(size.scales),
    };
    for (let a = 0; a < n; a += chunk) {
      if (a > 0) await pause();
      const b = Math.min(n, a + chunk);
      const part = this.#closeRange(p, a, b);
      // Cut at a multiple of the blocks: the part's codes follow those of [0, a).
      const at = encodedSize(a, f);
      out.q.set(part.q, at.codes);
      if (out.idx) out.idx.set(part.idx!, at.offsets);
      out.scales.set(part.scales, at.scales);
    }
    return this.#finishClose(p, out);
  }
}
