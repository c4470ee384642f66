/**
 * The actor system: spawning, a named registry, location-transparent refs,
 * bounded mailboxes processed one message at a time, lifecycle hooks, watch,
 * timers, remote links, and ordered shutdown.
 *
 * @module
 */

import { assertRemoteFrame, nodeOf } from "./_remote.ts";
import type { RemoteErrorPayload, RemoteFrame, RemoteLink } from "./_remote.ts";
import { DEFAULT_MAILBOX_SIZE, Mailbox } from "./mailbox.ts";
import type { OverflowPolicy } from "./mailbox.ts";
import {
  ActorStoppedError,
  AskTimeoutError,
  assertName,
  DEFAULT_ASK_TIMEOUT_MS,
  MailboxFullError,
  parsePath,
  RemoteActorError,
  RemoteUnavailableError,
} from "./ref.ts";
import type { ActorRef, AskOptions } from "./ref.ts";
import { Timers } from "./timers.ts";

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
 * import { ActorSystem, type ActorContext, type Behavior } from "./system.ts";
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

/** Options for {@linkcode ActorSystem}. */
export interface ActorSystemOptions {
  /** This node's id; the first segment of every local path. No `/`. */
  node: string;
  /** Called for each message that could not be delivered. */
  onDeadLetter?: (target: string, msg: unknown) => void;
  /** Called when an actor stops abnormally (for logs). */
  onFailure?: (path: string, reason: ExitReason) => void;
}

/** Counters of one system. */
export interface SystemStats {
  /** This node's id. */
  node: string;
  /** Live actors. */
  actors: number;
  /** Messages addressed to no running actor, or to an unconnected node. */
  deadLetters: number;
  /** Messages refused or evicted by full mailboxes. */
  dropped: number;
  /** Asks to other nodes still waiting for a reply. */
  pendingRemoteAsks: number;
  /** Connected nodes. */
  remotes: string[];
}

/** Options for {@linkcode ActorSystem.stop}. */
export interface StopOptions {
  /** The exit reason. Default "shutdown". */
  reason?: ExitReason;
  /** How long to wait before killing. Default: the actor's `shutdownMs`. */
  timeoutMs?: number;
}

type Watcher = Cell | ((notice: DownNotice) => void);
interface Reply {
  resolve(value: unknown): void;
  reject(error: unknown): void;
}
type Envelope = { kind: "msg"; msg: unknown; reply?: Reply } | {
  kind: "down";
  notice: DownNotice;
};
interface Router {
  tell(ref: Ref, msg: unknown): void;
  ask(ref: Ref, msg: unknown, options: AskOptions): Promise<unknown>;
}
interface PendingAsk {
  node: string;
  target: string;
  settle(error: unknown, value?: unknown): void;
}

class Ref implements ActorRef {
  readonly path: string;
  readonly node: string;
  readonly name: string;
  #router: Router;
  constructor(router: Router, node: string, name: string) {
    this.#router = router;
    this.node = node;
    this.name = name;
    this.path = `${node}/${name}`;
  }
  tell(msg: unknown): void {
    this.#router.tell(this, msg);
  }
  ask<R = unknown>(msg: unknown, options: AskOptions = {}): Promise<R> {
    return this.#router.ask(this, msg, options) as Promise<R>;
  }
  toString(): string {
    return this.path;
  }
  toJSON(): string {
    return this.path;
  }
}

class Cell {
  readonly ref: Ref;
  readonly mailbox: Mailbox<Envelope>;
  readonly timers: Timers;
  readonly abort = new AbortController();
  readonly children = new Set<Cell>();
  readonly watchers = new Set<Watcher>();
  readonly watching = new Set<Cell>();
  state: "starting" | "running" | "stopping" | "stopped" = "starting";
  startedOk = false;
  busy: Promise<void> | null = null;
  stopAfter: ExitReason | undefined;
  stopping: Promise<"stopped" | "killed"> | undefined;
  exit: ExitReason | undefined;
  ctx!: ActorContext;
  constructor(
    ref: Ref,
    readonly behavior: Behavior,
    readonly parent: Cell | undefined,
    readonly shutdownMs: number,
    mailbox: Mailbox<Envelope>,
    send: (msg: unknown) => void,
  ) {
    this.ref = ref;
    this.mailbox = mailbox;
    this.timers = new Timers(send);
  }
}

/**
 * Hosts actors on one node and routes messages to actors on other nodes
 * through remote links.
 *
 * @example Spawn, ask, watch, shut down
 * ```ts
 * import { ActorSystem, type DownNotice } from "./system.ts";
 * import assert from "node:assert/strict";
 *
 * const system = new ActorSystem({ node: "a" });
 * const echo = await system.spawn({ receive: (msg: string) => msg.toUpperCase() }, {
 *   name: "echo",
 * });
 * assert.equal(await echo.ask("hi"), "HI");
 * assert.equal(await system.ref("a/echo").ask("again"), "AGAIN");
 *
 * const notices: DownNotice[] = [];
 * system.watch(echo, (n) => notices.push(n));
 * await system.stop(echo, { reason: "normal" });
 * assert.equal(notices[0].reason, "normal");
 * await system.shutdown();
 * ```
 *
 * @example Two systems joined by an in-memory link
 * ```ts
 * import { ActorSystem } from "./system.ts";
 * import assert from "node:assert/strict";
 *
 * const a = new ActorSystem({ node: "a" });
 * const b = new ActorSystem({ node: "b" });
 * a.addRemote("b", { send: (frame) => b.deliverRemote(frame) });
 * b.addRemote("a", { send: (frame) => a.deliverRemote(frame) });
 * await b.spawn({ receive: (n: number) => n * 2 }, { name: "double" });
 * assert.equal(await a.ref("b/double").ask(21), 42);
 * await a.shutdown();
 * await b.shutdown();
 * ```
 */
export class ActorSystem {
  /** This node's id. */
  readonly node: string;
  #options: ActorSystemOptions;
  #registry = new Map<string, Cell>();
  #cells = new WeakMap<ActorRef, Cell>();
  #topLevel: Cell[] = [];
  #nextName = 0;
  #deadLetters = 0;
  #dropped = 0;
  #closed = false;
  #shutdown: Promise<void> | undefined;
  #links = new Map<string, RemoteLink>();
  #pending = new Map<number, PendingAsk>();
  #nextAskId = 0;
  #remoteWatchers = new Map<string, Set<{ watcher: Watcher; ref: ActorRef }>>();
  #router: Router;

  /** Creates an empty system for node `options.node`. */
  constructor(options: ActorSystemOptions) {
    const node = options?.node;
    if (typeof node !== "string" || node.length === 0 || node.includes("/")) {
      throw new TypeError(
        `Invalid node id: expected a non-empty string without "/", got ${String(node)}`,
      );
    }
    this.node = node;
    this.#options = options;
    this.#router = {
      tell: (ref, msg) => this.#tell(ref, msg),
      ask: (ref, msg, opts) => this.#ask(ref, msg, opts),
    };
  }

  /** Whether `shutdown` has been called. */
  get isShutDown(): boolean {
    return this.#closed;
  }

  /**
   * Starts a top-level actor and resolves with its ref once its `started`
   * hook has run. Rejects (after stopping the actor) if `started` throws.
   */
  spawn<M>(behavior: Behavior<M>, options: SpawnOptions = {}): Promise<ActorRef<M>> {
    return this.#spawn(behavior, options, undefined) as Promise<ActorRef<M>>;
  }

  /**
   * A ref to the actor at `path` ("node/name", or a bare name on this node).
   * The actor need not exist yet: messages are routed when sent.
   */
  ref<M = unknown>(path: string): ActorRef<M> {
    const { node, name } = parsePath(path, this.node);
    return new Ref(this.#router, node, name) as ActorRef<M>;
  }

  /** Whether a local actor with the ref's name is running. */
  isAlive(ref: ActorRef): boolean {
    const cell = this.#exactCellOf(ref);
    return cell !== undefined && cell.state !== "stopped";
  }

  /**
   * Stops a local actor: it finishes its current message, runs `stopped`,
   * stops its children; past the timeout it is killed (abandoned).
   * Resolves with "stopped" or "killed"; "stopped" if it was not running.
   */
  stop(ref: ActorRef, options: StopOptions = {}): Promise<"stopped" | "killed"> {
    if (ref.node !== this.node) {
      return Promise.reject(
        new TypeError(`Cannot stop ${ref.path}: it is not on node ${this.node}`),
      );
    }
    const cell = this.#exactCellOf(ref);
    if (cell === undefined) return Promise.resolve("stopped");
    return this.#stop(cell, options.reason ?? "shutdown", options.timeoutMs ?? cell.shutdownMs);
  }

  /**
   * Calls `onDown` once when the actor stops (at once if it is not running).
   * Returns a function that cancels the watch.
   */
  watch(ref: ActorRef, onDown: (notice: DownNotice) => void): () => void {
    this.#watch(onDown, ref);
    return () => this.#unwatch(onDown, ref);
  }

  /** Counters for this node. */
  stats(): SystemStats {
    return {
      node: this.node,
      actors: this.#registry.size,
      deadLetters: this.#deadLetters,
      dropped: this.#dropped,
      pendingRemoteAsks: this.#pending.size,
      remotes: [...this.#links.keys()],
    };
  }

  /**
   * Stops every actor in reverse start order (each stops its children in
   * reverse order first), awaiting their `stopped` hooks within their
   * shutdown timeouts, then fails the asks still waiting on other nodes and
   * drops the remote links. Idempotent.
   */
  shutdown(): Promise<void> {
    this.#shutdown ??= (async () => {
      this.#closed = true;
      while (this.#topLevel.length > 0) {
        const cell = this.#topLevel[this.#topLevel.length - 1];
        await this.#stop(cell, "shutdown", cell.shutdownMs);
        const i = this.#topLevel.lastIndexOf(cell);
        if (i !== -1) this.#topLevel.splice(i, 1);
      }
      for (const [id, p] of this.#pending) {
        this.#pending.delete(id);
        p.settle(new RemoteUnavailableError(p.target, `actor system ${this.node} shut down`));
      }
      this.#links.clear();
    })();
    return this.#shutdown;
  }

  /** Shuts the system down, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.shutdown();
  }

  // --- remote ---------------------------------------------------------------

  /**
   * Connects a peer node: frames for actors on `nodeId` go through `link`.
   * Replacing an existing link (a reconnect) keeps the asks waiting on it.
   */
  addRemote(nodeId: string, link: RemoteLink): void {
    if (typeof nodeId !== "string" || nodeId.length === 0 || nodeId.includes("/")) {
      throw new TypeError(
        `Invalid node id: expected a non-empty string without "/", got ${nodeId}`,
      );
    }
    if (nodeId === this.node) {
      throw new TypeError(`Cannot add remote ${nodeId}: it is this node`);
    }
    if (typeof link?.send !== "function") {
      throw new TypeError(`Cannot add remote ${nodeId}: link has no send function`);
    }
    this.#links.set(nodeId, link);
  }

  /**
   * Disconnects a peer node: asks waiting on it reject with
   * {@linkcode RemoteUnavailableError}, and watchers of its actors get a
   * notice with that error as the reason. Returns whether it was connected.
   */
  removeRemote(nodeId: string, reason: string | Error = "link closed"): boolean {
    const had = this.#links.delete(nodeId);
    const why = reason instanceof Error ? reason.message : reason;
    for (const [id, p] of this.#pending) {
      if (p.node !== nodeId) continue;
      this.#pending.delete(id);
      p.settle(
        new RemoteUnavailableError(p.target, `node ${nodeId} disconnected: ${why}`, {
          cause: reason,
        }),
      );
    }
    const watchers = this.#remoteWatchers.get(nodeId);
    this.#remoteWatchers.delete(nodeId);
    for (const { watcher, ref } of watchers ?? []) {
      const error = new RemoteUnavailableError(ref.path, `node ${nodeId} disconnected: ${why}`);
      this.#notify(watcher, { ref, reason: error });
    }
    return had;
  }

  /**
   * Takes one frame from the transport. Tells and asks go to local actors
   * (an ask's reply or error goes back through the link of `frame.from`);
   * replies settle the asks this node sent. Throws a TypeError for a
   * malformed frame; never throws for a frame it merely cannot deliver.
   */
  deliverRemote(frame: RemoteFrame): void {
    assertRemoteFrame(frame);
    switch (frame.kind) {
      case "tell": {
        if (nodeOf(frame.to) !== this.node) return this.#deadLetter(frame.to, frame.payload);
        try {
          this.#tell(this.ref(frame.to) as Ref, frame.payload);
        } catch {
          // A "fail" mailbox refused it; the remote sender cannot be told, so count it.
          this.#dropped++;
        }
        return;
      }
      case "ask": {
        const from = frame.from as string;
        const id = frame.id as number;
        if (nodeOf(frame.to) !== this.node) {
          this.#replyRemote(from, id, new ActorStoppedError(frame.to, `not on node ${this.node}`));
          return;
        }
        this.#ask(this.ref(frame.to) as Ref, frame.payload, { timeoutMs: Infinity }).then(
          (value) => this.#replyRemote(from, id, undefined, value),
          (error) => this.#replyRemote(from, id, error),
        );
        return;
      }
      default: {
        const pending = this.#pending.get(frame.id as number);
        if (pending === undefined) return; // late reply to a timed-out ask
        if (frame.from !== undefined && frame.from !== pending.node) return;
        this.#pending.delete(frame.id as number);
        if (frame.kind === "reply") pending.settle(undefined, frame.payload);
        else pending.settle(errorFromWire(pending.target, frame.payload as RemoteErrorPayload));
      }
    }
  }

  #replyRemote(to: string, id: number, error: unknown, value?: unknown): void {
    const link = this.#links.get(to);
    if (link === undefined) return;
    const errorFrame = (e: unknown): RemoteFrame => ({
      kind: "error",
      to,
      from: this.node,
      id,
      payload: {
        name: e instanceof Error ? e.name : "Error",
        message: e instanceof Error ? e.message : String(e),
      },
    });
    const send = (frame: RemoteFrame, fallback: boolean) => {
      try {
        const r = link.send(frame);
        if (r instanceof Promise && fallback) r.catch((e) => send(errorFrame(e), false));
        else if (r instanceof Promise) r.catch(() => {});
      } catch (e) {
        // The reply could not be encoded or sent; tell the asker why, once.
        if (fallback) send(errorFrame(new TypeError(`Cannot send reply: ${errMsg(e)}`)), false);
      }
    };
    if (error !== undefined) send(errorFrame(error), false);
    else send({ kind: "reply", to, from: this.node, id, payload: value }, true);
  }

  // --- internals --------------------------------------------------------------

  // Messages follow the name, so a ref outlives restarts under the same name.
  #cellOf(ref: ActorRef): Cell | undefined {
    if (ref.node !== this.node) return undefined;
    return this.#registry.get(ref.name);
  }

  // Watch and stop follow the incarnation when the ref came from spawn, so a
  // stale ref never stops or watches its successor.
  #exactCellOf(ref: ActorRef): Cell | undefined {
    if (ref.node !== this.node) return undefined;
    return this.#cells.get(ref) ?? this.#registry.get(ref.name);
  }

  async #spawn(behavior: Behavior, options: SpawnOptions, parent: Cell | undefined): Promise<Ref> {
    if (this.#closed) {
      throw new TypeError(`Cannot spawn actor: actor system ${this.node} is shut down`);
    }
    if (typeof behavior?.receive !== "function") {
      throw new TypeError("Cannot spawn actor: behavior has no receive function");
    }
    if (parent !== undefined && parent.state !== "running" && parent.state !== "starting") {
      throw new ActorStoppedError(parent.ref.path, "cannot spawn a child of a stopping actor");
    }
    const name = options.name ?? `$${++this.#nextName}`;
    assertName(name, `${this.node}/${name}`);
    if (this.#registry.has(name)) {
      throw new TypeError(`Cannot spawn ${this.node}/${name}: name already taken`);
    }
    const shutdownMs = options.shutdownMs ?? DEFAULT_SHUTDOWN_MS;
    if (typeof shutdownMs !== "number" || !(shutdownMs >= 0)) {
      throw new RangeError(`Invalid shutdownMs: expected a number >= 0, got ${shutdownMs}`);
    }
    const mailbox = new Mailbox<Envelope>(
      options.mailboxSize ?? DEFAULT_MAILBOX_SIZE,
      options.overflow ?? "drop-newest",
    );
    const ref = new Ref(this.#router, this.node, name);
    const cell: Cell = new Cell(ref, behavior, parent, shutdownMs, mailbox, (msg) => {
      try {
        this.#tell(ref, msg);
      } catch {
        this.#dropped++;
      }
    });
    cell.ctx = this.#context(cell);
    this.#cells.set(ref, cell);
    this.#registry.set(name, cell);
    if (parent) parent.children.add(cell);
    else this.#topLevel.push(cell);

    let failure: unknown;
    const start = (async () => {
      try {
        await behavior.started?.(cell.ctx);
      } catch (e) {
        failure = e;
      }
    })();
    cell.busy = start;
    await start;
    cell.busy = null;
    if (failure !== undefined) {
      const error = toError(failure);
      await this.#stop(cell, error, cell.shutdownMs);
      throw error;
    }
    cell.startedOk = true;
    const requested = cell.stopAfter;
    if (requested instanceof Error && cell.state === "starting") {
      await this.#stop(cell, requested, cell.shutdownMs);
      throw requested;
    }
    if (cell.state === "starting") {
      cell.state = "running";
      if (requested !== undefined) void this.#stop(cell, requested, cell.shutdownMs);
      else this.#schedule(cell);
    }
    return ref;
  }

  #context(cell: Cell): ActorContext {
    // deno-lint-ignore no-this-alias
    const system = this;
    return {
      self: cell.ref,
      system,
      parent: cell.parent?.ref,
      timers: cell.timers,
      signal: cell.abort.signal,
      get stopping() {
        return cell.state === "stopping" || cell.state === "stopped" ||
          cell.stopAfter !== undefined;
      },
      spawn: (behavior, options) => this.#spawn(behavior, options ?? {}, cell),
      children: () => [...cell.children].map((c) => c.ref),
      watch: (ref) => this.#watch(cell, ref),
      unwatch: (ref) => this.#unwatch(cell, ref),
      stop: (reason = "normal") => {
        if (cell.state === "stopping" || cell.state === "stopped") return;
        if (cell.busy !== null) {
          if (cell.stopAfter === undefined || reason instanceof Error) cell.stopAfter = reason;
        } else {
          void this.#stop(cell, reason, cell.shutdownMs);
        }
      },
    } as ActorContext;
  }

  #schedule(cell: Cell): void {
    if (cell.state !== "running" || cell.busy !== null || cell.mailbox.size === 0) return;
    if (cell.stopAfter !== undefined) return;
    // Start the loop on a microtask so that `busy` is set before any handler
    // runs: a handler that synchronously causes a message back to this actor
    // must not start a second loop (two handlers at once).
    const run = Promise.resolve().then(() => this.#run(cell));
    cell.busy = run;
    run.then(() => {
      if (cell.busy === run) cell.busy = null;
      if (cell.stopAfter !== undefined && cell.state === "running") {
        void this.#stop(cell, cell.stopAfter, cell.shutdownMs);
      } else {
        this.#schedule(cell);
      }
    });
  }

  async #run(cell: Cell): Promise<void> {
    while (cell.state === "running" && cell.stopAfter === undefined) {
      const env = cell.mailbox.shift();
      if (env === undefined) return;
      try {
        if (env.kind === "msg") {
          const value = await cell.behavior.receive(env.msg, cell.ctx);
          env.reply?.resolve(value);
        } else if (cell.behavior.down) {
          await cell.behavior.down(env.notice, cell.ctx);
        }
      } catch (e) {
        const error = toError(e);
        if (env.kind === "msg") env.reply?.reject(error);
        cell.stopAfter = error;
        return;
      }
    }
  }

  #stop(cell: Cell, reason: ExitReason, timeoutMs: number): Promise<"stopped" | "killed"> {
    if (cell.stopping) return cell.stopping;
    if (cell.state === "stopped") return Promise.resolve("stopped");
    cell.state = "stopping";
    cell.stopping = (async () => {
      const graceful = this.#stopGracefully(cell, reason).then(() => "stopped" as const);
      if (timeoutMs === Infinity) return await graceful;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const deadline = new Promise<"killed">((resolve) => {
        timer = setTimeout(() => resolve("killed"), timeoutMs);
      });
      const outcome = await Promise.race([graceful, deadline]);
      clearTimeout(timer);
      if (outcome === "killed") this.#finalize(cell, reason instanceof Error ? reason : "killed");
      return outcome;
    })();
    return cell.stopping;
  }

  async #stopGracefully(cell: Cell, reason: ExitReason): Promise<void> {
    cell.timers.close();
    this.#rejectQueued(cell, reason);
    if (cell.busy !== null) await cell.busy;
    if (cell.state === "stopped") return;
    this.#rejectQueued(cell, reason);
    if (cell.startedOk && cell.behavior.stopped) {
      try {
        await cell.behavior.stopped(cell.ctx, reason);
      } catch (e) {
        this.#options.onFailure?.(cell.ref.path, toError(e));
      }
    }
    for (const child of [...cell.children].reverse()) {
      if (isStopped(cell)) return;
      await this.#stop(child, "shutdown", child.shutdownMs);
    }
    this.#finalize(cell, reason);
  }

  #rejectQueued(cell: Cell, reason: ExitReason): void {
    for (const env of cell.mailbox.drain()) {
      if (env.kind !== "msg") continue;
      if (env.reply) {
        env.reply.reject(
          new ActorStoppedError(cell.ref.path, `actor stopped (${describeReason(reason)})`),
        );
      } else {
        this.#deadLetter(cell.ref.path, env.msg);
      }
    }
  }

  #finalize(cell: Cell, reason: ExitReason): void {
    if (cell.state === "stopped") return;
    cell.state = "stopped";
    cell.exit = reason;
    cell.timers.close();
    this.#rejectQueued(cell, reason);
    // A killed actor's children are killed with it: nobody is left to stop them.
    for (const child of [...cell.children].reverse()) this.#finalize(child, "killed");
    if (this.#registry.get(cell.ref.name) === cell) this.#registry.delete(cell.ref.name);
    if (cell.parent) cell.parent.children.delete(cell);
    else {
      const i = this.#topLevel.indexOf(cell);
      if (i !== -1 && !this.#closed) this.#topLevel.splice(i, 1);
    }
    for (const target of cell.watching) target.watchers.delete(cell);
    cell.watching.clear();
    for (const set of this.#remoteWatchers.values()) {
      for (const entry of set) if (entry.watcher === cell) set.delete(entry);
    }
    cell.abort.abort(reason);
    if (isAbnormal(reason)) this.#options.onFailure?.(cell.ref.path, reason);
    const notice: DownNotice = { ref: cell.ref, reason };
    const watchers = [...cell.watchers];
    cell.watchers.clear();
    for (const w of watchers) this.#notify(w, notice);
  }

  #notify(watcher: Watcher, notice: DownNotice): void {
    if (typeof watcher === "function") {
      try {
        watcher(notice);
      } catch (e) {
        this.#options.onFailure?.(notice.ref.path, toError(e));
      }
      return;
    }
    if (watcher.state !== "running" && watcher.state !== "starting") return;
    watcher.mailbox.pushSystem({ kind: "down", notice });
    this.#schedule(watcher);
  }

  #watch(watcher: Watcher, ref: ActorRef): void {
    if (ref.node !== this.node) {
      let set = this.#remoteWatchers.get(ref.node);
      if (set === undefined) this.#remoteWatchers.set(ref.node, set = new Set());
      if (!this.#links.has(ref.node)) {
        const reason = new RemoteUnavailableError(ref.path, `node ${ref.node} is not connected`);
        queueMicrotask(() => this.#notify(watcher, { ref, reason }));
        return;
      }
      set.add({ watcher, ref });
      return;
    }
    const cell = this.#exactCellOf(ref);
    if (cell === undefined || cell.state === "stopped") {
      const reason: ExitReason = cell?.exit ?? "noproc";
      queueMicrotask(() => this.#notify(watcher, { ref, reason }));
      return;
    }
    cell.watchers.add(watcher);
    if (typeof watcher !== "function") watcher.watching.add(cell);
  }

  #unwatch(watcher: Watcher, ref: ActorRef): void {
    if (ref.node !== this.node) {
      const set = this.#remoteWatchers.get(ref.node);
      for (const entry of set ?? []) {
        if (entry.watcher === watcher && entry.ref.path === ref.path) set!.delete(entry);
      }
      return;
    }
    const cell = this.#exactCellOf(ref);
    if (cell === undefined) return;
    cell.watchers.delete(watcher);
    if (typeof watcher !== "function") watcher.watching.delete(cell);
  }

  #deadLetter(target: string, msg: unknown): void {
    this.#deadLetters++;
    this.#options.onDeadLetter?.(target, msg);
  }

  #tell(ref: Ref, msg: unknown): void {
    if (ref.node !== this.node) return this.#remoteTell(ref, msg);
    const cell = this.#cellOf(ref);
    if (cell === undefined || !accepting(cell)) return this.#deadLetter(ref.path, msg);
    const result = cell.mailbox.push({ kind: "msg", msg });
    if (!result.accepted) {
      if (cell.mailbox.overflow === "fail") {
        throw new MailboxFullError(cell.ref.path, cell.mailbox.capacity);
      }
      this.#dropped++;
      return;
    }
    if (result.evicted) this.#evicted(cell, result.evicted);
    this.#schedule(cell);
  }

  #evicted(cell: Cell, env: Envelope): void {
    this.#dropped++;
    if (env.kind === "msg" && env.reply) {
      env.reply.reject(new MailboxFullError(cell.ref.path, cell.mailbox.capacity));
    }
  }

  #ask(ref: Ref, msg: unknown, options: AskOptions): Promise<unknown> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_ASK_TIMEOUT_MS;
    if (typeof timeoutMs !== "number" || !(timeoutMs >= 0)) {
      return Promise.reject(
        new RangeError(`Invalid ask timeout: expected a number >= 0, got ${timeoutMs}`),
      );
    }
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let done = false;
    let askId: number | undefined;
    const forget = () => {
      if (askId !== undefined) this.#pending.delete(askId);
    };
    const onAbort = () => {
      forget();
      settle(signal!.reason);
    };
    const settle = (error: unknown, value?: unknown) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (error !== undefined) reject(error);
      else resolve(value);
    };
    if (timeoutMs !== Infinity) {
      timer = setTimeout(() => {
        forget();
        settle(new AskTimeoutError(ref.path, timeoutMs));
      }, timeoutMs);
    }
    signal?.addEventListener("abort", onAbort, { once: true });

    if (ref.node !== this.node) {
      askId = this.#remoteAsk(ref, msg, settle);
      return promise;
    }
    const cell = this.#cellOf(ref);
    if (cell === undefined || !accepting(cell)) {
      settle(
        new ActorStoppedError(ref.path, cell === undefined ? "no such actor" : "actor stopped"),
      );
      return promise;
    }
    const reply: Reply = { resolve: (v) => settle(undefined, v), reject: (e) => settle(e) };
    const result = cell.mailbox.push({ kind: "msg", msg, reply });
    if (!result.accepted) {
      this.#dropped++;
      settle(new MailboxFullError(cell.ref.path, cell.mailbox.capacity));
      return promise;
    }
    if (result.evicted) this.#evicted(cell, result.evicted);
    this.#schedule(cell);
    return promise;
  }

  #remoteTell(ref: Ref, msg: unknown): void {
    const link = this.#links.get(ref.node);
    if (link === undefined) return this.#deadLetter(ref.path, msg);
    try {
      const r = link.send({ kind: "tell", to: ref.path, from: this.node, payload: msg });
      if (r instanceof Promise) r.catch(() => this.#deadLetter(ref.path, msg));
    } catch {
      this.#deadLetter(ref.path, msg);
    }
  }

  #remoteAsk(
    ref: Ref,
    msg: unknown,
    settle: (error: unknown, value?: unknown) => void,
  ): number | undefined {
    const link = this.#links.get(ref.node);
    if (link === undefined) {
      settle(new RemoteUnavailableError(ref.path, `node ${ref.node} is not connected`));
      return undefined;
    }
    if (this.#closed) {
      settle(new RemoteUnavailableError(ref.path, `actor system ${this.node} shut down`));
      return undefined;
    }
    const id = this.#nextAskId++;
    this.#pending.set(id, { node: ref.node, target: ref.path, settle });
    const fail = (e: unknown) => {
      if (!this.#pending.delete(id)) return;
      settle(new RemoteUnavailableError(ref.path, `send failed: ${errMsg(e)}`, { cause: e }));
    };
    try {
      const r = link.send({ kind: "ask", to: ref.path, from: this.node, id, payload: msg });
      if (r instanceof Promise) r.catch(fail);
    } catch (e) {
      fail(e);
    }
    return id;
  }
}

// An actor that failed or was asked to stop takes no new messages.
function accepting(cell: Cell): boolean {
  return (cell.state === "running" || cell.state === "starting") && cell.stopAfter === undefined;
}

// A function, not an inline comparison: the state changes across awaits.
function isStopped(cell: Cell): boolean {
  return cell.state === "stopped";
}

function errMsg(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function toError(e: unknown): Error {
  if (e instanceof Error) return e;
  return new Error(`Non-error thrown: ${typeof e === "string" ? e : JSON.stringify(e)}`, {
    cause: e,
  });
}

function errorFromWire(target: string, payload: RemoteErrorPayload): Error {
  let error: Error;
  switch (payload.name) {
    case "ActorStoppedError":
      error = new ActorStoppedError(target, "");
      break;
    case "MailboxFullError":
      error = new MailboxFullError(target, 0);
      break;
    case "RemoteUnavailableError":
      error = new RemoteUnavailableError(target, "");
      break;
    default:
      return new RemoteActorError(target, payload);
  }
  // The remote message already names the target and the detail.
  error.message = payload.message;
  return error;
}
