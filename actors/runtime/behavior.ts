/**
 * What an actor is to the system: the {@linkcode Behavior} an actor
 * implements, the {@linkcode ActorContext} its handlers see, the options it
 * is spawned with, and why it stopped ({@linkcode ExitReason}). Plain types
 * and two small functions on exit reasons, so that roles, the supervisor and
 * Worker actors depend on the contract and not on the system's machinery.
 *
 * @module
 */

import type { OverflowPolicy } from "./mailbox.ts";
import type { ActorRef } from "./ref.ts";
import type { ActorSystem } from "./system.ts";
import type { Timers } from "./timers.ts";

/**
 * Why an actor stopped:
 * - "normal": it stopped itself, or its work was done.
 * - "shutdown": its parent, supervisor or the system stopped it.
 * - "killed": it did not stop within its shutdown timeout and was abandoned.
 * - "noproc": (in a watch notice) there was no such actor to watch.
 * - an Error: it failed (a handler or hook threw, or it was stopped with an error).
 *
 * "normal" and "shutdown" are normal exits; the rest are abnormal (see
 * {@linkcode isAbnormal}), which is what a "transient" child is restarted on.
 */
export type ExitReason = "normal" | "shutdown" | "killed" | "noproc" | Error;

/** Whether an exit reason is a failure (anything but "normal" and "shutdown"). */
export function isAbnormal(reason: ExitReason): boolean {
  return reason !== "normal" && reason !== "shutdown";
}

/** A short text for an exit reason, for logs and error messages. */
export function describeReason(reason: ExitReason): string {
  return reason instanceof Error ? `${reason.name}: ${reason.message}` : reason;
}

/** The notice a watcher gets when a watched actor stops. */
export interface DownNotice {
  /**
   * The stopped actor. For a local actor this is the very ref `spawn`
   * returned for that incarnation, so `notice.ref === ref` tells a restarted
   * actor's old incarnation from the new one.
   */
  ref: ActorRef;
  /** Why it stopped. */
  reason: ExitReason;
}

/**
 * What an actor does. A plain object or a class instance; only `receive` is
 * required. Hooks and handlers may be async: the actor awaits each before
 * taking the next message, so an actor handles one message at a time.
 *
 * A throw from any hook or handler is the actor's failure: it stops with the
 * error as its exit reason (an ask being handled rejects with that error), and
 * its watchers and supervisor are told.
 *
 * @example A class behavior with a timer
 * ```ts
 * import type { ActorContext, Behavior } from "./behavior.ts";
 * import { ActorSystem } from "./system.ts";
 * import assert from "node:assert/strict";
 *
 * class Ticker implements Behavior {
 *   ticks = 0;
 *   started(ctx: ActorContext) {
 *     ctx.timers.interval(1, "tick", { key: "tick" });
 *   }
 *   receive(msg: unknown) {
 *     if (msg === "tick") this.ticks++;
 *     return this.ticks;
 *   }
 * }
 *
 * const system = new ActorSystem({ node: "local" });
 * const ref = await system.spawn(new Ticker());
 * while ((await ref.ask<number>("count")) < 3) await new Promise((r) => setTimeout(r, 2));
 * await system.shutdown(); // timers die with their actor
 * assert.ok(true);
 * ```
 */
// deno-lint-ignore no-explicit-any
export interface Behavior<M = any> {
  /** Runs before the first message. A throw here is a failure to start. */
  started?(ctx: ActorContext<M>): unknown;
  /** Handles one message; the return value (awaited) answers an ask. */
  receive(msg: M, ctx: ActorContext<M>): unknown;
  /** Handles the death notice of an actor this one watches. Default: ignore it. */
  down?(notice: DownNotice, ctx: ActorContext<M>): unknown;
  /**
   * Runs once when the actor stops, after its current message and before its
   * children are stopped. Not called when `started` failed.
   */
  stopped?(ctx: ActorContext<M>, reason: ExitReason): unknown;
}

/** Options for {@linkcode ActorSystem.spawn}. */
export interface SpawnOptions {
  /**
   * The actor's name on this node, unique while it lives; segments may be
   * joined with `/`. Default: a generated name like "$7".
   */
  name?: string;
  /** Mailbox capacity in messages. Default {@linkcode DEFAULT_MAILBOX_SIZE}. */
  mailboxSize?: number;
  /** What a full mailbox does with a new message. Default "drop-newest". */
  overflow?: OverflowPolicy;
  /**
   * How long the actor gets to stop (finish its message, run `stopped`, stop
   * its children) when stopped by its parent or the system, before it is
   * killed. Default {@linkcode DEFAULT_SHUTDOWN_MS}; `Infinity` waits forever.
   */
  shutdownMs?: number;
}

/** Default time an actor gets to stop before it is killed (OTP's worker default). */
export const DEFAULT_SHUTDOWN_MS = 5000;

/** What an actor's handlers see of the system and of themselves. */
// deno-lint-ignore no-explicit-any
export interface ActorContext<M = any> {
  /** This actor's ref. */
  readonly self: ActorRef<M>;
  /** The system hosting this actor. */
  readonly system: ActorSystem;
  /** The actor that spawned this one, if any. */
  readonly parent: ActorRef | undefined;
  /** This actor's timers; they send to its own mailbox and die with it. */
  readonly timers: Timers;
  /** Aborted when this actor has stopped or was killed. */
  readonly signal: AbortSignal;
  /** Whether this actor has been asked to stop. */
  readonly stopping: boolean;
  /** Spawns a child, stopped (in reverse spawn order) when this actor stops. */
  spawn<C>(behavior: Behavior<C>, options?: SpawnOptions): Promise<ActorRef<C>>;
  /** The live children, in spawn order. */
  children(): ActorRef[];
  /**
   * Watches another actor: when it stops, this actor's `down` hook gets a
   * {@linkcode DownNotice}, in order with its messages. Watching an actor that
   * is not running gives a notice at once ("noproc" if it never existed here).
   * For a remote actor, the notice comes when its node is removed.
   */
  watch(ref: ActorRef): void;
  /** Stops watching. */
  unwatch(ref: ActorRef): void;
  /**
   * Stops this actor with `reason` (default "normal") once the current
   * message is handled. An Error reason is a failure.
   */
  stop(reason?: ExitReason): void;
}
