/**
 * The gradient aggregator actor: owns the shards the view assigns to it, one
 * {@linkcode ShardAggregator} each; takes contributions, closes rounds (all
 * sent, or deadline + quorum), sends the int8 update to every trainer, saves
 * its state to a {@linkcode KeeperSlot} after every round, reports the round
 * to the tracker (which answers with the next view), and serves start states
 * to joining and restarted trainers.
 *
 * State that must survive a restart lives in the keeper slot, not in the
 * actor: a restarted aggregator restores its shards from it and asks the
 * round's trainers to resend what the lost incarnation had received.
 *
 * @module
 */
import type { ActorContext, Behavior } from "./runtime/behavior.ts";
import { type AggregatorState, type Rejection, ShardAggregator } from "./aggregation.ts";
import type { OuterOptimizer } from "./outer_optimizer.ts";
import type { AggregateRule } from "./robust_aggregate.ts";
import {
  type ContributionMsg,
  type HeartbeatAckMsg,
  type JoinReplyMsg,
  ProtocolError,
  type RunMessage,
  type StateMsg,
  tellLater,
  type UpdateMsg,
  type ViewMsg,
} from "./run_protocol.ts";
import { validateRunMessage } from "./run_protocol_validate.ts";
import { encodedSize } from "../transport/codec.ts";
import { beatWhile } from "./heartbeat.ts";
import { Lease } from "./_lease.ts";

/**
 * Where an aggregator keeps what must survive its restart: each shard's θ,
 * outer momentum, residual and round. Until checkpoint keepers exist this is
 * an in-memory slot owned by the run (outside the actor).
 */
export interface KeeperSlot {
  /**
   * Saves a shard's state after a round closed. With a `lease`, the state's
   * arrays are lent: whatever keeps them holds the lease until it no longer
   * reads them (actors/_lease.ts), and nothing may write them.
   */
  save(state: AggregatorState, lease?: Lease): void;
  /** The last saved state of a shard, if any. */
  load(shard: number): AggregatorState | undefined;
}

/** An in-memory {@linkcode KeeperSlot}. */
export class MemoryKeeperSlot implements KeeperSlot {
  #states = new Map<number, AggregatorState>();
  /** The hold on each shard's state while it is the last saved one. */
  #holds = new Map<number, () => void>();
  /** Saves a shard's state (the one it replaces is let go). */
  save(state: AggregatorState, lease?: Lease): void {
    const shard = state.shard.index;
    this.#states.set(shard, state);
    const before = this.#holds.get(shard);
    if (lease) this.#holds.set(shard, lease.hold());
    else this.#holds.delete(shard);
    before?.();
  }
  /** The last saved state of a shard. */
  load(shard: number): AggregatorState | undefined {
    return this.#states.get(shard);
  }
}

/** What an aggregator reports to the run. */
export type AggregatorEvent =
  | {
    type: "closed";
    aggregator: string;
    round: number;
    shard: number;
    contributors: string[];
    missing: string[];
    reason: string;
    loss: number;
    tokens: number;
    updateBytes: number;
    epoch: number;
  }
  | { type: "rejected"; aggregator: string; rejection: Rejection }
  | { type: "restored"; aggregator: string; shard: number; round: number }
  /** A trainer counted in a closed round resent its contribution: it got the round's update again. */
  | { type: "update_resent"; aggregator: string; trainer: string; round: number; shard: number }
  | { type: "refused"; aggregator: string; error: string };

/** Options of {@linkcode aggregatorBehavior}. */
export interface AggregatorOptions {
  run: string;
  /** This aggregator's id: its actor path. */
  id: string;
  /** The tracker's actor path. */
  tracker: string;
  /** Outer optimizer. */
  outer: OuterOptimizer;
  /** The run's exchange format of contributions (default "int8"). */
  exchange?: string;
  /** The format of the updates it sends (default "int8"; actors/aggregation.ts). */
  updateExchange?: string;
  /** How contributions are combined (default: the token-weighted mean). */
  aggregate?: AggregateRule;
  /** Quorum fraction at the deadline (default 0.5). */
  quorum?: number;
  /** Minimum wait after the first contribution (default 10 s). */
  minWaitMs?: number;
  /** Fragments of the run (default 1): each round aggregates one piece of each shard. */
  fragments?: number;
  /** Where state survives restarts. */
  slot: KeeperSlot;
  /** Heartbeat interval, ms (default 2000). */
  heartbeatMs?: number;
  /** Receives the aggregator's reports. */
  onEvent?: (event: AggregatorEvent) => void;
}

/** Local-only control messages. */
type Control =
  | { type: "_heartbeat" }
  | { type: "_check" }
  | { type: "_joined"; reply: JoinReplyMsg }
  | { type: "_ack"; ack: HeartbeatAckMsg }
  | { type: "_rejoin" }
  | { type: "crash"; reason: string }
  | { type: "status" };

/**
 * The aggregator's behavior; a fresh one per (re)start.
 *
 * @example
 * ```ts ignore
 * await system.spawn(aggregatorBehavior({ run, id: "host/aggregator/0", tracker: "host/tracker",
 *   outer: DEFAULT_OUTER, slot: new MemoryKeeperSlot() }), { name: "aggregator/0" });
 * ```
 */
export function aggregatorBehavior(options: AggregatorOptions): Behavior {
  const { run, id, slot } = options;
  const shards = new Map<number, ShardAggregator>();
  /** Each shard's last update, sent again to a counted trainer that resends its contribution. */
  const lastUpdates = new Map<number, UpdateMsg>();
  let view: ViewMsg | undefined;
  const report = (e: AggregatorEvent) => options.onEvent?.(e);

  const join = (ctx: ActorContext) => {
    ctx.system.ref(options.tracker).ask<JoinReplyMsg>(
      { type: "join", run, node: id, roles: ["aggregator"], ...(view ? { view } : {}) },
      { timeoutMs: 3000 },
    ).then(
      (reply) => ctx.self.tell({ type: "_joined", reply }),
      () => ctx.timers.once(500, { type: "_rejoin" }, { key: "rejoin" }),
    );
  };

  const owned = (v: ViewMsg) => v.shards.filter((s) => s.aggregator === id);

  const takeView = async (ctx: ActorContext, v: ViewMsg) => {
    if (v.run !== run || (view && v.epoch < view.epoch)) return;
    view = v;
    for (const s of owned(v)) {
      let agg = shards.get(s.index);
      if (!agg) {
        const saved = slot.load(s.index);
        if (!saved) continue; // waits for a trainer's seed (round 0)
        agg = restore(saved);
        shards.set(s.index, agg);
        report({ type: "restored", aggregator: id, shard: s.index, round: saved.round });
        // What the previous incarnation had received is lost: ask for it again.
        for (const t of v.trainers) {
          tellSafe(ctx, t, { type: "resend", run, round: saved.round, shard: s.index });
        }
      }
      for (const r of agg.setView(v)) {
        if (r.status === "rejected") rejectTo(ctx, r.rejection);
      }
      await tryClose(ctx, agg);
    }
  };

  const restore = (saved: AggregatorState) =>
    new ShardAggregator({
      run,
      shard: saved.shard,
      theta: saved.theta,
      round: saved.round,
      outer: options.outer,
      exchange: options.exchange,
      updateExchange: options.updateExchange,
      aggregate: options.aggregate,
      quorum: options.quorum,
      minWaitMs: options.minWaitMs,
      fragments: options.fragments,
      restore: saved,
    });

  const rejectTo = (ctx: ActorContext, rejection: Rejection) => {
    report({ type: "rejected", aggregator: id, rejection });
    tellSafe(ctx, rejection.trainer, { type: "reject", run, ...rejection });
  };

  const heartbeat = (ctx: ActorContext) => {
    ctx.system.ref(options.tracker).ask<HeartbeatAckMsg>(
      { type: "heartbeat", run, node: id, epoch: view?.epoch ?? 0 },
      { timeoutMs: 3000 },
    ).then((ack) => ctx.self.tell({ type: "_ack", ack }), () => {});
  };

  /**
   * Closes the shard's round once it is ready. The close and the copies of
   * the state saved for the keepers run in ranges (closeInRanges,
   * stateInRanges): at a large shard they take seconds, and the host's other
   * actors go on between the ranges; this actor's mailbox waits for them
   * (nothing may touch the shard meanwhile), so its heartbeats go out from here.
   * An actor killed meanwhile (a shutdown that outwaits it) stops at the next
   * range: its half-closed shard is dropped with it, and nothing is saved or sent.
   */
  const tryClose = async (ctx: ActorContext, agg: ShardAggregator) => {
    if (!agg.ready()) return;
    const pause = async () => {
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (ctx.signal.aborted) throw new Error(`Aggregator ${id} stopped during a close`);
    };
    const { closed, state } = await beatWhile(
      (async () => ({
        closed: await agg.closeInRanges({ pause }),
        state: await agg.stateInRanges({ pause }),
      }))(),
      () => {
        if (!ctx.signal.aborted) heartbeat(ctx);
      },
      options.heartbeatMs ?? 2000,
    );
    // The state's arrays come back to the shard once the slot and the keepers let them go.
    const lease = new Lease(() => agg.recycleState(state));
    slot.save(state, lease);
    lease.seal();
    for (const r of closed.rejected) rejectTo(ctx, r);
    // The checksum of θ_{r+1} lets each trainer verify its copy.
    const update: UpdateMsg = { ...closed.update, check: agg.thetaChecksum() };
    lastUpdates.set(update.shard, update);
    const to = new Set([...(view?.trainers ?? []), ...update.contributors]);
    for (const t of to) tellSafe(ctx, t, update);
    report({
      type: "closed",
      aggregator: id,
      round: update.round,
      shard: update.shard,
      contributors: update.contributors,
      missing: closed.missing,
      reason: closed.reason,
      loss: update.loss,
      tokens: update.tokens,
      updateBytes: encodedSize(update),
      epoch: view?.epoch ?? 0,
    });
    ctx.system.ref(options.tracker).ask<ViewMsg>(
      {
        type: "round_closed",
        run,
        round: update.round,
        node: id,
        contributors: update.contributors,
        ...(view ? { view } : {}),
      },
      { timeoutMs: 3000 },
    ).then((v) => ctx.self.tell(v), () => {/* the tracker's next view will come by heartbeat */});
  };

  const serveState = (msg: RunMessage & { type: "state_request" }): StateMsg => {
    let agg = shards.get(msg.shard);
    const shard = view?.shards[msg.shard];
    if (!agg) {
      if (!view || !shard || shard.aggregator !== id) {
        throw new ProtocolError(`Cannot serve state of shard ${msg.shard}: not owned by ${id} yet`);
      }
      if (!msg.seed || msg.seed.length !== shard.length) {
        throw new ProtocolError(
          `Cannot serve state of shard ${msg.shard}: no state yet and no seed of ${shard.length} floats`,
        );
      }
      // Round 0 of a new run: the first seed offered becomes θ_0 for everyone.
      agg = new ShardAggregator({
        run,
        shard,
        theta: msg.seed,
        round: view.round,
        outer: options.outer,
        exchange: options.exchange,
        updateExchange: options.updateExchange,
        aggregate: options.aggregate,
        quorum: options.quorum,
        minWaitMs: options.minWaitMs,
        fragments: options.fragments,
      });
      agg.setView(view);
      shards.set(msg.shard, agg);
      slot.save(agg.state());
    }
    return { type: "state", run, round: agg.round, shard: msg.shard, theta: agg.theta() };
  };

  return {
    started(ctx) {
      ctx.timers.interval(options.heartbeatMs ?? 2000, { type: "_heartbeat" }, { key: "hb" });
      ctx.timers.interval(250, { type: "_check" }, { key: "check" });
      join(ctx);
    },
    receive(raw: unknown, ctx) {
      const ctl = raw as Control;
      switch (ctl?.type) {
        case "_heartbeat":
          heartbeat(ctx);
          return;
        case "_ack":
          if (!ctl.ack.known) join(ctx);
          else if (ctl.ack.view) return takeView(ctx, ctl.ack.view);
          return;
        case "_joined":
          return takeView(ctx, ctl.reply.view);
        case "_rejoin":
          join(ctx);
          return;
        case "_check":
          return (async () => {
            for (const agg of shards.values()) await tryClose(ctx, agg);
          })();
        case "crash":
          throw new Error(`Aggregator crashed on purpose: ${ctl.reason}`);
        case "status":
          return {
            id,
            shards: [...shards.values()].map((a) => ({
              shard: a.shard.index,
              round: a.round,
              received: a.received(),
              missing: a.missing(),
            })),
          };
      }
      let msg: RunMessage;
      try {
        msg = validateRunMessage(raw);
      } catch (err) {
        const error = err instanceof Error ? err.message : String(err);
        const m = (raw ?? {}) as Record<string, unknown>;
        if (m?.type === "contribution" && typeof m.trainer === "string") {
          // A malformed contribution is named like any other rejection.
          rejectTo(ctx, {
            round: Number(m.round ?? -1),
            trainer: m.trainer as string,
            shard: Number(m.shard ?? -1),
            reason: "malformed",
            detail: error,
          });
        } else report({ type: "refused", aggregator: id, error });
        return { type: "error", error };
      }
      return handle(ctx, msg);
    },
  };

  function handle(ctx: ActorContext, m: RunMessage): unknown {
    switch (m.type) {
      case "view":
        return takeView(ctx, m);
      case "contribution":
        return offer(ctx, m);
      case "state_request":
        try {
          return serveState(m);
        } catch (err) {
          if (err instanceof ProtocolError) return { type: "error", error: err.message };
          throw err;
        }
      default: {
        const error = `Aggregator cannot handle a "${m.type}" message`;
        report({ type: "refused", aggregator: id, error });
        return { type: "error", error };
      }
    }
  }

  function tellSafe(ctx: ActorContext, path: string, msg: unknown) {
    // A bad path from the wire must not fail the aggregator.
    tellLater(ctx.system, path, msg, (err) => {
      report({ type: "refused", aggregator: id, error: `Cannot send to ${path}: ${err}` });
    });
  }

  async function offer(ctx: ActorContext, msg: ContributionMsg) {
    const agg = shards.get(msg.shard);
    if (!agg) {
      const rejection: Rejection = {
        round: msg.round,
        trainer: msg.trainer,
        shard: msg.shard,
        reason: "wrong_shard",
        detail: `trainer ${msg.trainer} round ${msg.round}: ${id} does not hold shard ${msg.shard}`,
      };
      rejectTo(ctx, rejection);
      return;
    }
    const last = lastUpdates.get(msg.shard);
    if (msg.resend && last?.round === msg.round && last.contributors.includes(msg.trainer)) {
      // Counted already: what the trainer lacks is the update (lost, or behind a long close).
      tellSafe(ctx, msg.trainer, last);
      report({
        type: "update_resent",
        aggregator: id,
        trainer: msg.trainer,
        round: msg.round,
        shard: msg.shard,
      });
      return;
    }
    const r = agg.offer(msg);
    if (r.status === "rejected") rejectTo(ctx, r.rejection);
    await tryClose(ctx, agg);
  }
}
