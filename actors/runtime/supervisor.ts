/**
 * Supervisors after Erlang/OTP, with Akka-style restart backoff.
 *
 * A supervisor is an actor whose children are described by plain data
 * ({@linkcode ChildSpec}); it starts them in order, restarts them by its
 * strategy when they exit, gives up past its restart intensity (stopping its
 * children and failing itself, which its own supervisor sees), and stops them
 * in reverse order, each within its shutdown timeout.
 *
 * Defaults, chosen on purpose:
 * - intensity 5 restarts per 30 s ({@linkcode DEFAULT_INTENSITY},
 *   {@linkcode DEFAULT_PERIOD_MS}). OTP's 1 per 5 s suits code bugs, which
 *   recur at once; a training run mostly sees transient network faults
 *   (a peer drops, a socket resets), and an actor that reconnects may fail a
 *   few times in a row before the link settles. Five in 30 s rides out such a
 *   burst while a real crash loop still escalates within seconds.
 * - child shutdown 5 s ({@linkcode DEFAULT_SHUTDOWN_MS}), OTP's worker
 *   default; give a nested supervisor `shutdownMs: Infinity` (OTP's
 *   supervisor default) or the sum of its children's timeouts.
 * - restart "permanent", strategy "one_for_one", no backoff.
 *
 * One departure from OTP: a child that fails to start while the supervisor
 * itself starts is handled like any other failure (restarted within the
 * intensity), rather than aborting the supervisor's start at once, because at
 * boot a run's actors often fail on a peer that is not up yet. Past the
 * intensity the supervisor's spawn rejects with {@linkcode RestartIntensityError}.
 *
 * Somewhat over 600 lines (a quarter of them the specs' field docs and the
 * runnable example) because it is one thing, as OTP's `supervisor` is: the
 * plain data that describes a tree and the one state machine that follows
 * from it. Start in order, the three strategies, the intensity window,
 * backoff and stop in reverse order all act on the same ordered child list
 * and restart history, and their rules (a group restarts in start order
 * after stopping in reverse, a restart counts against the window before it
 * runs) hold only when read together.
 *
 * @module
 */

import {
  type ActorContext,
  type Behavior,
  DEFAULT_SHUTDOWN_MS,
  describeReason,
  type DownNotice,
  type ExitReason,
  isAbnormal,
} from "./behavior.ts";
import type { OverflowPolicy } from "./mailbox.ts";
import type { ActorRef } from "./ref.ts";

/**
 * When a child is restarted (OTP semantics): "permanent" always, even after a
 * normal exit; "transient" only after an abnormal exit (see `isAbnormal`);
 * "temporary" never (and it is forgotten when it exits).
 */
export type RestartType = "permanent" | "transient" | "temporary";

/**
 * Which children restart when one must: "one_for_one" only that child;
 * "one_for_all" all children (the others are stopped in reverse order, then
 * all start in order); "rest_for_one" that child and those started after it.
 */
export type SupervisorStrategy = "one_for_one" | "one_for_all" | "rest_for_one";

/** Restarts allowed within {@linkcode DEFAULT_PERIOD_MS} before giving up. */
export const DEFAULT_INTENSITY = 5;
/** The window, in milliseconds, over which restarts are counted. */
export const DEFAULT_PERIOD_MS = 30_000;

/** One child of a supervisor, as plain data. */
export interface ChildSpec {
  /** Unique among the supervisor's children. */
  id: string;
  /** Makes a fresh behavior for each start; a throw (or rejection) is a start failure. */
  start: () => Behavior | Promise<Behavior>;
  /** Default "permanent". */
  restart?: RestartType;
  /** Time the child gets to stop before it is killed. Default 5000 ms. */
  shutdownMs?: number;
  /** Registered name. Default `<supervisor name>/<id>`. */
  name?: string;
  /** The child's mailbox capacity. */
  mailboxSize?: number;
  /** The child's mailbox overflow policy. */
  overflow?: OverflowPolicy;
}

/**
 * Exponential backoff between restarts (Akka's BackoffSupervisor): the n-th
 * consecutive restart of a child waits `min(maxBackoffMs, minBackoffMs * 2^n)`
 * scaled by `1 - randomFactor * random()`. With the default randomFactor 1
 * this is "full jitter" (uniform in (0, cap]), which spreads the reconnects
 * of many trainers that lost the same peer at once.
 */
export interface BackoffOptions {
  /** The first delay's cap, in milliseconds (> 0). */
  minBackoffMs: number;
  /** The largest delay, in milliseconds (>= minBackoffMs). */
  maxBackoffMs: number;
  /** 0 (no jitter) to 1 (full jitter). Default 1. */
  randomFactor?: number;
  /**
   * A child that ran this long since its last start is stable again: its
   * next failure starts over from minBackoffMs. Default maxBackoffMs, since a
   * child that outlived the longest wait is past the fault that caused it.
   */
  resetAfterMs?: number;
}

/**
 * What a supervisor reports through `onEvent`: "started" after every start of
 * a child (first or restart), "failed" on an abnormal exit or start failure,
 * "exited" on a normal exit, "backoff" before a delayed restart, "restarted"
 * after a restart's start succeeded (one per child restarted), "killed" when a
 * child outlived its shutdown timeout, "gave_up" when intensity was exceeded.
 */
export type SupervisorEvent =
  | { type: "started"; supervisor: string; child: string; path: string }
  | { type: "failed"; supervisor: string; child: string; reason: ExitReason }
  | { type: "exited"; supervisor: string; child: string; reason: ExitReason }
  | { type: "backoff"; supervisor: string; child: string; delayMs: number }
  | { type: "restarted"; supervisor: string; child: string; restarts: number }
  | { type: "killed"; supervisor: string; child: string; shutdownMs: number }
  | { type: "gave_up"; supervisor: string; reason: RestartIntensityError };

/** Options (sup flags and children) of a {@linkcode Supervisor}. */
export interface SupervisorOptions {
  /** Default "one_for_one". */
  strategy?: SupervisorStrategy;
  /** Restarts allowed within `periodMs`; one more and the supervisor gives up. Default 5. */
  intensity?: number;
  /** Default 30 000 ms. */
  periodMs?: number;
  /** Children, started in this order and stopped in reverse. */
  children: ChildSpec[];
  /** Wait between restarts; none by default. */
  backoff?: BackoffOptions;
  /** Randomness for jitter, in [0, 1). Default Math.random; inject a seeded one in tests. */
  random?: () => number;
  /** Clock in milliseconds for intensity and backoff reset. Default performance.now. */
  now?: () => number;
  /** Observes starts, failures, restarts, kills and giving up. */
  onEvent?: (event: SupervisorEvent) => void;
}

/** A child as {@linkcode Supervisor.stats} reports it. */
export interface ChildStats {
  /** The spec's id. */
  id: string;
  /** The child's path. */
  path: string;
  /** Times this child was restarted. */
  restarts: number;
  /** Whether it is running now. */
  running: boolean;
}

/** Restart counters of one supervisor. */
export interface SupervisorStats {
  /** Restarts of all children together. */
  restarts: number;
  /** Per child, in start order. */
  children: ChildStats[];
}

/** A supervisor exceeded its restart intensity and gave up. */
export class RestartIntensityError extends Error {
  /** The supervisor's path. */
  readonly supervisor: string;
  /** The child whose failure was one too many. */
  readonly child: string;
  /** Creates the error; the cause is the last child's exit reason. */
  constructor(
    supervisor: string,
    child: string,
    limits: { intensity: number; periodMs: number },
    reason: ExitReason,
  ) {
    super(
      `Supervisor ${supervisor} gave up: more than ${limits.intensity} restarts in ${limits.periodMs} ms, last exit of child "${child}": ${
        describeReason(reason)
      }`,
      { cause: reason },
    );
    this.name = "RestartIntensityError";
    this.supervisor = supervisor;
    this.child = child;
  }
}

/**
 * A small seeded PRNG (mulberry32) returning numbers in [0, 1), for
 * reproducible backoff jitter in tests.
 *
 * @example
 * ```ts
 * import { seededRandom } from "./supervisor.ts";
 * import assert from "node:assert/strict";
 *
 * const a = seededRandom(42), b = seededRandom(42);
 * assert.equal(a(), b());
 * ```
 */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Child {
  spec: ChildSpec;
  ref: ActorRef | undefined;
  restarts: number;
  attempt: number;
  startedAt: number | undefined;
  waiting: boolean;
  name: string;
}

class Command {
  constructor(
    readonly op: "restart" | "start_child" | "terminate_child",
    readonly arg: unknown,
  ) {}
}

const RESTART_TYPES: ReadonlySet<string> = new Set(["permanent", "transient", "temporary"]);
const STRATEGIES: ReadonlySet<string> = new Set(["one_for_one", "one_for_all", "rest_for_one"]);

/**
 * An OTP-style supervisor behavior. Spawn it like any actor; the instance
 * stays readable (`stats()`), and `startChild` / `terminateChild` change its
 * children at run time. A Supervisor can be a child of another one (nested
 * trees): when it gives up it fails, and its parent applies its own strategy.
 *
 * @example A one_for_one tree that restarts a crashing child
 * ```ts
 * import { ActorSystem } from "./system.ts";
 * import { Supervisor, type SupervisorEvent } from "./supervisor.ts";
 * import assert from "node:assert/strict";
 *
 * const events: SupervisorEvent["type"][] = [];
 * const restarted = Promise.withResolvers<void>();
 * const sup = new Supervisor({
 *   strategy: "one_for_one",
 *   children: [{
 *     id: "worker",
 *     start: () => ({
 *       receive(msg: string) {
 *         if (msg === "crash") throw new Error("boom");
 *         return "ok";
 *       },
 *     }),
 *   }],
 *   onEvent: (e) => {
 *     events.push(e.type);
 *     if (e.type === "restarted") restarted.resolve();
 *   },
 * });
 * const system = new ActorSystem({ node: "local" });
 * await system.spawn(sup, { name: "root" });
 * const worker = system.ref("local/root/worker");
 * await assert.rejects(worker.ask("crash"), /boom/);
 * await restarted.promise;
 * assert.equal(await worker.ask("work"), "ok"); // the same ref reaches the new incarnation
 * assert.equal(sup.stats().restarts, 1);
 * assert.deepEqual(events, ["started", "failed", "started", "restarted"]);
 * await system.shutdown();
 * ```
 */
export class Supervisor implements Behavior {
  #options: SupervisorOptions;
  #strategy: SupervisorStrategy;
  #intensity: number;
  #periodMs: number;
  #random: () => number;
  #now: () => number;
  #children: Child[] = [];
  #restartTimes: number[] = [];
  #ctx: ActorContext | undefined;

  /** Checks the options; children start when the supervisor is spawned. */
  constructor(options: SupervisorOptions) {
    this.#strategy = options.strategy ?? "one_for_one";
    if (!STRATEGIES.has(this.#strategy)) {
      throw new TypeError(
        `Invalid supervisor strategy: expected one_for_one, one_for_all or rest_for_one, got ${
          String(this.#strategy)
        }`,
      );
    }
    this.#intensity = options.intensity ?? DEFAULT_INTENSITY;
    if (!Number.isSafeInteger(this.#intensity) || this.#intensity < 0) {
      throw new RangeError(
        `Invalid supervisor intensity: expected an integer >= 0, got ${this.#intensity}`,
      );
    }
    this.#periodMs = options.periodMs ?? DEFAULT_PERIOD_MS;
    if (!(this.#periodMs > 0)) {
      throw new RangeError(`Invalid supervisor period: expected > 0 ms, got ${this.#periodMs}`);
    }
    if (!Array.isArray(options.children)) {
      throw new TypeError("Invalid supervisor options: children must be an array of child specs");
    }
    const ids = new Set<string>();
    for (const spec of options.children) {
      checkSpec(spec);
      if (ids.has(spec.id)) throw new TypeError(`Invalid child spec: duplicate id "${spec.id}"`);
      ids.add(spec.id);
    }
    const b = options.backoff;
    if (b !== undefined) {
      if (!(b.minBackoffMs > 0) || !(b.maxBackoffMs >= b.minBackoffMs)) {
        throw new RangeError(
          `Invalid backoff: need 0 < minBackoffMs <= maxBackoffMs, got ${b.minBackoffMs} and ${b.maxBackoffMs}`,
        );
      }
      const f = b.randomFactor ?? 1;
      if (!(f >= 0 && f <= 1)) {
        throw new RangeError(`Invalid backoff randomFactor: expected 0 to 1, got ${f}`);
      }
    }
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? (() => performance.now());
    this.#options = options;
  }

  /** Restart counts, per child and in total. */
  stats(): SupervisorStats {
    const children = this.#children.map((c) => ({
      id: c.spec.id,
      path: c.ref?.path ?? `${this.#ctx?.self.node ?? "?"}/${c.name}`,
      restarts: c.restarts,
      running: c.ref !== undefined,
    }));
    return { restarts: children.reduce((n, c) => n + c.restarts, 0), children };
  }

  /**
   * Adds and starts a child at the end of the order; resolves with its ref.
   * Rejects, without a restart, if its id is taken or it fails to start.
   */
  async startChild(spec: ChildSpec): Promise<ActorRef> {
    checkSpec(spec);
    // A refused child comes back as a value: a throw in receive would fail the supervisor.
    const result = await this.#self().ask<{ ref?: ActorRef; error?: Error }>(
      new Command("start_child", spec),
      { timeoutMs: Infinity },
    );
    if (result.error !== undefined) throw result.error;
    return result.ref!;
  }

  /** Stops a child and forgets its spec, so it is not restarted. */
  async terminateChild(id: string): Promise<void> {
    await this.#self().ask(new Command("terminate_child", id), { timeoutMs: Infinity });
  }

  /** Starts the children in order. */
  async started(ctx: ActorContext): Promise<void> {
    this.#ctx = ctx;
    this.#restartTimes = [];
    this.#children = this.#options.children.map((spec) => this.#newChild(spec, ctx));
    for (const child of [...this.#children]) {
      if (child.ref !== undefined || child.waiting || !this.#children.includes(child)) continue;
      const error = await this.#start(child);
      if (error !== undefined) await this.#handleExit(child, error);
    }
  }

  /** Handles internal commands; answers "stats" with {@linkcode stats}; ignores the rest. */
  async receive(msg: unknown): Promise<unknown> {
    if (msg === "stats") return this.stats();
    if (!(msg instanceof Command)) return undefined;
    switch (msg.op) {
      case "restart": {
        const ids = msg.arg as string[];
        const group = this.#children.filter((c) => ids.includes(c.spec.id));
        for (const c of group) c.waiting = false;
        await this.#restartGroup(group);
        return undefined;
      }
      case "start_child": {
        const spec = msg.arg as ChildSpec;
        if (this.#children.some((c) => c.spec.id === spec.id)) {
          return { error: new TypeError(`Cannot start child: duplicate id "${spec.id}"`) };
        }
        const child = this.#newChild(spec, this.#ctx!);
        this.#children.push(child);
        const error = await this.#start(child);
        if (error !== undefined) {
          this.#children.splice(this.#children.indexOf(child), 1);
          return { error };
        }
        return { ref: child.ref };
      }
      case "terminate_child": {
        const child = this.#children.find((c) => c.spec.id === msg.arg);
        if (child === undefined) return undefined;
        this.#ctx!.timers.cancel(`restart:${child.spec.id}`);
        await this.#stopChild(child);
        this.#children.splice(this.#children.indexOf(child), 1);
        return undefined;
      }
    }
  }

  /** A child stopped: restart it (and its group) as the strategy says. */
  async down(notice: DownNotice): Promise<void> {
    const child = this.#children.find((c) => c.ref === notice.ref);
    if (child === undefined) return; // an incarnation this supervisor already let go
    child.ref = undefined;
    await this.#handleExit(child, notice.reason);
  }

  /** Stops the children in reverse start order. */
  async stopped(): Promise<void> {
    await this.#stopAll();
  }

  #self(): ActorRef {
    if (this.#ctx === undefined) {
      throw new TypeError("Cannot change supervisor children: it has not been spawned");
    }
    return this.#ctx.self;
  }

  #newChild(spec: ChildSpec, ctx: ActorContext): Child {
    return {
      spec,
      ref: undefined,
      restarts: 0,
      attempt: 0,
      startedAt: undefined,
      waiting: false,
      name: spec.name ?? `${ctx.self.name}/${spec.id}`,
    };
  }

  #emit(event: SupervisorEvent): void {
    try {
      this.#options.onEvent?.(event);
    } catch {
      // An observer's bug must not take the tree down.
    }
  }

  /** Starts one child; returns the error if it failed to start. */
  async #start(child: Child): Promise<Error | undefined> {
    const ctx = this.#ctx!;
    try {
      const behavior = await child.spec.start();
      const ref = await ctx.spawn(behavior, {
        name: child.name,
        shutdownMs: child.spec.shutdownMs ?? DEFAULT_SHUTDOWN_MS,
        mailboxSize: child.spec.mailboxSize,
        overflow: child.spec.overflow,
      });
      ctx.watch(ref);
      child.ref = ref;
      child.startedAt = this.#now();
      this.#emit({
        type: "started",
        supervisor: ctx.self.path,
        child: child.spec.id,
        path: ref.path,
      });
      return undefined;
    } catch (e) {
      return e instanceof Error ? e : new Error(String(e));
    }
  }

  async #handleExit(first: Child, firstReason: ExitReason): Promise<void> {
    const ctx = this.#ctx!;
    const queue: [Child, ExitReason][] = [[first, firstReason]];
    while (queue.length > 0) {
      const [child, reason] = queue.shift()!;
      const restart = child.spec.restart ?? "permanent";
      const sup = ctx.self.path;
      this.#emit({
        type: isAbnormal(reason) ? "failed" : "exited",
        supervisor: sup,
        child: child.spec.id,
        reason,
      });
      if (restart === "temporary") {
        this.#children.splice(this.#children.indexOf(child), 1);
        continue;
      }
      if (restart === "transient" && !isAbnormal(reason)) continue;
      if (ctx.stopping || ctx.system.isShutDown) return;

      const now = this.#now();
      this.#restartTimes = this.#restartTimes.filter((t) => now - t < this.#periodMs);
      this.#restartTimes.push(now);
      if (this.#restartTimes.length > this.#intensity) {
        const error = new RestartIntensityError(sup, child.spec.id, {
          intensity: this.#intensity,
          periodMs: this.#periodMs,
        }, reason);
        this.#emit({ type: "gave_up", supervisor: sup, reason: error });
        await this.#stopAll();
        throw error;
      }

      const group = this.#group(child);
      for (const c of [...group].reverse()) await this.#stopChild(c);
      const delayMs = this.#backoff(child, now);
      if (delayMs > 0) {
        for (const c of group) c.waiting = true;
        this.#emit({ type: "backoff", supervisor: sup, child: child.spec.id, delayMs });
        ctx.timers.once(delayMs, new Command("restart", group.map((c) => c.spec.id)), {
          key: `restart:${child.spec.id}`,
        });
        continue;
      }
      const failed = await this.#restartGroup(group, false);
      if (failed !== undefined) queue.push(failed);
    }
  }

  /** Starts a group in order; returns the first start failure. */
  async #restartGroup(group: Child[], handle = true): Promise<[Child, Error] | undefined> {
    for (const child of group) {
      if (!this.#children.includes(child) || child.ref !== undefined || child.waiting) continue;
      if (this.#ctx!.stopping) return undefined;
      const error = await this.#start(child);
      if (error !== undefined) {
        if (handle) await this.#handleExit(child, error);
        return [child, error];
      }
      child.restarts++;
      this.#emit({
        type: "restarted",
        supervisor: this.#ctx!.self.path,
        child: child.spec.id,
        restarts: child.restarts,
      });
    }
    return undefined;
  }

  #group(child: Child): Child[] {
    switch (this.#strategy) {
      case "one_for_one":
        return [child];
      case "one_for_all":
        return [...this.#children];
      case "rest_for_one":
        return this.#children.slice(this.#children.indexOf(child));
    }
  }

  #backoff(child: Child, now: number): number {
    const b = this.#options.backoff;
    if (b === undefined) return 0;
    const resetAfter = b.resetAfterMs ?? b.maxBackoffMs;
    if (child.startedAt !== undefined && now - child.startedAt >= resetAfter) child.attempt = 0;
    const cap = Math.min(b.maxBackoffMs, b.minBackoffMs * 2 ** child.attempt);
    child.attempt++;
    return cap * (1 - (b.randomFactor ?? 1) * this.#random());
  }

  async #stopChild(child: Child): Promise<void> {
    const ref = child.ref;
    if (ref === undefined) return;
    child.ref = undefined;
    const ctx = this.#ctx!;
    ctx.unwatch(ref);
    const shutdownMs = child.spec.shutdownMs ?? DEFAULT_SHUTDOWN_MS;
    const outcome = await ctx.system.stop(ref, { reason: "shutdown", timeoutMs: shutdownMs });
    if (outcome === "killed") {
      this.#emit({ type: "killed", supervisor: ctx.self.path, child: child.spec.id, shutdownMs });
    }
  }

  async #stopAll(): Promise<void> {
    for (const child of [...this.#children].reverse()) await this.#stopChild(child);
  }
}

function checkSpec(spec: ChildSpec): void {
  if (typeof spec !== "object" || spec === null) {
    throw new TypeError("Invalid child spec: expected an object");
  }
  if (typeof spec.id !== "string" || spec.id.length === 0 || spec.id.includes("/")) {
    throw new TypeError(
      `Invalid child spec: id must be a non-empty string without "/", got ${String(spec.id)}`,
    );
  }
  if (typeof spec.start !== "function") {
    throw new TypeError(`Invalid child spec "${spec.id}": start must be a function`);
  }
  if (spec.restart !== undefined && !RESTART_TYPES.has(spec.restart)) {
    throw new TypeError(
      `Invalid child spec "${spec.id}": restart must be permanent, transient or temporary, got ${
        String(spec.restart)
      }`,
    );
  }
  if (spec.shutdownMs !== undefined && !(spec.shutdownMs >= 0)) {
    throw new RangeError(
      `Invalid child spec "${spec.id}": shutdownMs must be >= 0, got ${spec.shutdownMs}`,
    );
  }
}
