/**
 * The membership tracker actor: wraps {@linkcode Membership}, answers joins,
 * heartbeats and round reports, evicts silent members once a second and
 * publishes every new view to all members.
 *
 * Member ids are actor paths (`node/name`), so a view names the very refs the
 * aggregators send updates to, on this node or another.
 *
 * A restart (after a throw) starts from an empty state with a higher
 * incarnation; members learn it from their next heartbeat (`known: false`) and
 * re-announce with their last view, from which the tracker rebuilds.
 *
 * @module
 */
import type { ActorContext, Behavior } from "./runtime/behavior.ts";
import { Membership, type MembershipOptions } from "./membership.ts";
import { type RunMessage, type RunNews, tellLater, type ViewMsg } from "./run_protocol.ts";
import { validateRunMessage } from "./run_protocol_validate.ts";

/** Options of {@linkcode trackerBehavior}. */
export interface TrackerOptions extends Omit<MembershipOptions, "incarnation"> {
  /** Opens the first round once this many trainers have joined (default 1). */
  minTrainers?: number;
  /** Gives each start of the actor its incarnation (restarts get higher ones). */
  incarnation: () => number;
  /** Receives log lines and views, for the run's monitor. */
  onEvent?: (event: TrackerEvent) => void;
}

/** What the tracker reports. */
export type TrackerEvent =
  | { type: "view"; view: ViewMsg }
  | { type: "evicted"; nodes: string[]; round: number }
  | { type: "stalled"; ms: number; round: number }
  | { type: "joined"; node: string; status: string; round: number }
  | { type: "left"; node: string }
  | { type: "started"; incarnation: number }
  | { type: "refused"; error: string };

/** Local-only control messages. */
export type TrackerControl =
  | { type: "tick" }
  | { type: "status" }
  | { type: "crash"; reason: string }
  /** The run's newest evaluation, to pass on in heartbeat acks (from the host's history). */
  | { type: "_news"; news: RunNews };

/**
 * The tracker's behavior. A fresh one is made for every (re)start.
 *
 * @example
 * ```ts ignore
 * const ref = await system.spawn(trackerBehavior({ run: "r", params: 1024, incarnation: () => 0 }));
 * ```
 */
export function trackerBehavior(options: TrackerOptions): Behavior {
  const minTrainers = options.minTrainers ?? 1;
  let m: Membership;
  const publish = (ctx: ActorContext, view: ViewMsg | undefined) => {
    if (!view) return;
    options.onEvent?.({ type: "view", view });
    for (const member of m.members()) {
      tellLater(ctx.system, member.node, view);
    }
  };
  const maybeStart = (ctx: ActorContext) => {
    if (m.started) return;
    if (m.view.trainers.length >= minTrainers && m.view.aggregators.length > 0) {
      publish(ctx, m.start());
    }
  };
  return {
    started(ctx) {
      const incarnation = options.incarnation();
      m = new Membership({ ...options, incarnation });
      ctx.timers.interval(options.tickMs ?? 1000, { type: "tick" }, { key: "tick" });
      options.onEvent?.({ type: "started", incarnation });
    },
    receive(raw: unknown, ctx) {
      const ctl = raw as TrackerControl;
      if (ctl?.type === "tick") {
        const change = m.tick();
        if (change.stalledMs !== undefined) {
          options.onEvent?.({ type: "stalled", ms: change.stalledMs, round: m.view.round });
        }
        if (change.evicted.length > 0) {
          options.onEvent?.({ type: "evicted", nodes: change.evicted, round: m.view.round });
        }
        publish(ctx, change.view);
        return;
      }
      if (ctl?.type === "status") return m.status();
      if (ctl?.type === "crash") throw new Error(`Tracker crashed on purpose: ${ctl.reason}`);
      if (ctl?.type === "_news") {
        m.news = ctl.news;
        return;
      }
      let msg: RunMessage;
      try {
        msg = validateRunMessage(raw);
      } catch (err) {
        // A bad message is answered and dropped; it never fails the tracker.
        const error = err instanceof Error ? err.message : String(err);
        options.onEvent?.({ type: "refused", error });
        return { type: "error", error };
      }
      switch (msg.type) {
        case "join": {
          const r = m.join(msg);
          options.onEvent?.({
            type: "joined",
            node: msg.node,
            status: r.reply.status,
            round: m.view.round,
          });
          publish(ctx, r.view);
          maybeStart(ctx);
          return { ...r.reply, view: m.view };
        }
        case "leave": {
          options.onEvent?.({ type: "left", node: msg.node });
          publish(ctx, m.leave(msg.node).view);
          return;
        }
        case "heartbeat":
          return m.heartbeat(msg);
        case "round_closed": {
          const before = m.view.epoch;
          const change = m.roundClosed(msg);
          if (m.view.epoch !== before) publish(ctx, change.view);
          return m.view;
        }
        default: {
          const error = `Tracker cannot handle a "${msg.type}" message`;
          options.onEvent?.({ type: "refused", error });
          return { type: "error", error };
        }
      }
    },
  };
}
