/**
 * A trainer's outgoing contributions (actors/trainer.ts): building one
 * message per shard from a round's pseudo-gradient in the run's exchange
 * format, sending it to the shard's aggregator, and everything that sends a
 * contribution again: a resend when the trainer is stuck or an aggregator
 * asks, the true contribution after a poisoned one was refused, and the
 * extra messages of the "replay" and "duplicate" faults. The round state
 * machine decides when a round is sent and closed; this module keeps what
 * was sent until then.
 *
 * @module
 */
import { formatOf, sliceEncoded } from "./exchange.ts";
import { DEFAULT_EXCHANGE, parseExchange } from "../kernels/exchange_format.ts";
import { type ContributionMsg, tellLater, type ViewMsg } from "./run_protocol.ts";
import type { DeltaReply, RoundReply } from "./trainer_worker.ts";
import { injectPoison, type TrainerFault } from "./trainer_faults.ts";
import { encodedSize } from "../transport/codec.ts";
import { roundPiece } from "./fragments.ts";

/** Where contributions are told to: the actor system's refs. */
export type Teller = { ref(path: string): { tell(msg: unknown): void } };

/** Options of {@linkcode ContributionOutbox}. */
export interface OutboxOptions {
  run: string;
  /** The trainer's id. */
  id: string;
  /** The run's exchange format name (default int8). */
  exchange?: string;
  /** Fragments synchronised in turn, one per round (actors/fragments.ts). */
  fragments: number;
  /** Heartbeat interval, ms: a trainer blocked for 4 of them sends again. */
  heartbeatMs: number;
  /** The clock, ms (default `performance.now`). */
  now?: () => number;
}

/**
 * The contributions of the open round, the previous round's (for a "replay"
 * fault) and a poisoned round's true ones (resent once after the refusal).
 *
 * @example
 * ```ts ignore
 * const outbox = new ContributionOutbox({ run, id, fragments: 1, heartbeatMs: 2000 });
 * bytesUp += outbox.send(ctx.system, view, reply, delta);
 * ```
 */
export class ContributionOutbox {
  #o: OutboxOptions;
  /** The run's exchange format; int8 messages carry no `format` field, as before there were others. */
  #formatName: string;
  #format: ReturnType<typeof parseExchange>;
  #sent: ContributionMsg[] = [];
  /** The true contributions of a poisoned round, resent after the rejection. */
  #clean: ContributionMsg[] = [];
  #poison: TrainerFault & { type: "poison" } | undefined;
  /** The previous round's contributions (a "replay" fault sends them again). */
  #previous: ContributionMsg[] = [];
  #now: () => number;
  #sentAt = 0;
  #lastResend = 0;
  /** How long the last round's update took to come after its contributions went out, ms. */
  #lastWaitMs = 0;

  /** Creates an empty outbox. */
  constructor(options: OutboxOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => performance.now());
    this.#formatName = formatOf({ format: options.exchange ?? DEFAULT_EXCHANGE });
    this.#format = parseExchange(this.#formatName);
  }

  /** Poisons the next round sent (a fault). */
  poison(fault: TrainerFault & { type: "poison" }): void {
    this.#poison = fault;
  }

  /** Sends round `reply.round`'s pseudo-gradient to every shard's aggregator; returns the bytes sent. */
  send(system: Teller, v: ViewMsg, reply: RoundReply, delta: DeltaReply): number {
    const { run, id, fragments } = this.#o;
    const format = this.#format;
    const poison = this.#poison;
    let bytes = 0;
    this.#sent = [];
    for (const s of v.shards) {
      // With fragments, the round's piece of each shard.
      const { lo, hi } = roundPiece(s, reply.round, fragments, v.block);
      const msg: ContributionMsg = {
        type: "contribution",
        run,
        round: reply.round,
        epoch: v.epoch,
        trainer: id,
        shard: s.index,
        tokens: reply.tokens,
        n: hi - lo,
        ...(format.kind === "int8" ? {} : { format: this.#formatName }),
        ...sliceEncoded(
          format.kind === "int8" ? { kind: "int8", block: v.block } : format,
          delta,
          { start: s.start + lo, length: hi - lo },
        ),
        loss: reply.loss,
      };
      const extra = poison?.kind === "replay" || poison?.kind === "duplicate";
      if (poison && !extra) {
        this.#clean.push({ ...msg, q: msg.q.slice(), scales: msg.scales.slice() });
        injectPoison(msg, poison);
      }
      this.#sent.push(msg);
      bytes += encodedSize(msg);
      tellLater(system, s.aggregator, msg);
      // A duplicated send, or a replay of the previous round's message.
      if (poison?.kind === "duplicate") tellLater(system, s.aggregator, msg);
      for (const old of poison?.kind === "replay" ? this.#previous : []) {
        if (old.shard === s.index) tellLater(system, s.aggregator, old);
      }
    }
    this.#poison = undefined;
    this.#sentAt = this.#now();
    return bytes;
  }

  /**
   * Messages can be lost (a dropped frame, a connection that closed with
   * frames in flight): a trainer blocked for several heartbeats sends its
   * contributions again, marked as resent. The aggregator counts each at most
   * once ("duplicate" otherwise); if the round already closed with this
   * trainer counted, it sends the round's update again (the first was lost or
   * is on its way behind a long close); if it closed without it, the
   * "stale_round" answer makes the trainer take the current θ.
   *
   * It waits 4 heartbeats, or twice as long as the last round's update took
   * to come if that is longer (at most 30 heartbeats), as TCP's retransmission
   * timeout follows the round-trip time: an aggregator's close of a large
   * model takes longer than 4 heartbeats, and a resend that arrives after
   * it is refused as stale.
   */
  resendIfStuck(system: Teller, view: ViewMsg | undefined, awaiting: boolean): void {
    const hb = this.#o.heartbeatMs;
    const every = Math.min(30 * hb, Math.max(4 * hb, 2 * this.#lastWaitMs));
    const now = this.#now();
    if (!awaiting || !view || now - Math.max(this.#sentAt, this.#lastResend) < every) return;
    this.#lastResend = now;
    for (const c of this.#sent) {
      tellLater(system, view.shards[c.shard].aggregator, { ...c, resend: true });
    }
  }

  /** Sends round `round`'s contribution to `shard` again (its aggregator asked). */
  resend(system: Teller, view: ViewMsg | undefined, round: number, shard: number): void {
    for (const c of this.#sent) {
      if (c.round === round && c.shard === shard && view) {
        tellLater(system, view.shards[c.shard].aggregator, c);
      }
    }
  }

  /** After a poisoned contribution to `shard` is refused, the true one follows (once). */
  refused(system: Teller, view: ViewMsg | undefined, round: number, shard: number): void {
    for (const c of this.#clean.filter((c) => c.shard === shard && c.round === round)) {
      this.#clean = this.#clean.filter((x) => x !== c);
      if (view) tellLater(system, view.shards[c.shard].aggregator, c);
    }
  }

  /** The round's update was applied: what was sent becomes the previous round's. */
  closed(): void {
    if (this.#sent.length > 0) this.#lastWaitMs = this.#now() - this.#sentAt;
    this.#previous = this.#sent;
    this.#sent = [];
    this.#clean = [];
  }
}
