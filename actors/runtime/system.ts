/**
 * The actor system: spawning, a named registry, location-transparent refs,
 * bounded mailboxes processed one message at a time, lifecycle (start,
 * stop, kill, ordered shutdown), watch, and the routing of messages to local
 * actors or, through the remote side (`_remote_nodes.ts`), to other nodes.
 * What an actor is (behavior, context, exit reasons) is in `behavior.ts`,
 * the record kept per actor in `_cell.ts`, and an ask's settlement in
 * `_ask.ts`.
 *
 * Somewhat over 600 lines because what is left is one state machine: the
 * steps of a local actor's life (spawn, run loop, stop, kill, finalize,
 * watch notices) all read and change the same registry and cell states, and
 * their ordering rules (children stop in reverse, a stopping actor takes no
 * mail, a killed one's children die with it) hold only when read together.
 *
 * @module
 */

import { assertRemoteFrame, nodeOf } from "./_remote.ts";
import type { RemoteFrame, RemoteLink } from "./_remote.ts";
import {
  type ActorContext,
  type Behavior,
  DEFAULT_SHUTDOWN_MS,
  describeReason,
  type DownNotice,
  type ExitReason,
  isAbnormal,
  type SpawnOptions,
} from "./behavior.ts";
import { DEFAULT_MAILBOX_SIZE, Mailbox } from "./mailbox.ts";
import {
  ActorStoppedError,
  assertName,
  DEFAULT_ASK_TIMEOUT_MS,
  MailboxFullError,
  parsePath,
} from "./ref.ts";
import type { ActorRef, AskOptions } from "./ref.ts";
import {
  accepting,
  Cell,
  type Envelope,
  isStopped,
  Ref,
  type Reply,
  type Router,
  toError,
  type Watcher,
} from "./_cell.ts";
import { openAsk } from "./_ask.ts";
import { RemoteNodes } from "./_remote_nodes.ts";

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

/**
 * Hosts actors on one node and routes messages to actors on other nodes
 * through remote links.
 *
 * @example Spawn, ask, watch, shut down
 * ```ts
 * import type { DownNotice } from "./behavior.ts";
 * import { ActorSystem } from "./system.ts";
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
  #remotes: RemoteNodes;
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
    this.#remotes = new RemoteNodes(node, {
      deadLetter: (target, msg) => this.#deadLetter(target, msg),
      notify: (watcher, notice) => this.#notify(watcher, notice),
      isShutDown: () => this.#closed,
    });
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
      pendingRemoteAsks: this.#remotes.pendingAsks,
      remotes: this.#remotes.nodes(),
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
      this.#remotes.close();
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
    this.#remotes.add(nodeId, link);
  }

  /**
   * Disconnects a peer node: asks waiting on it reject with
   * {@linkcode RemoteUnavailableError}, and watchers of its actors get a
   * notice with that error as the reason. Returns whether it was connected.
   */
  removeRemote(nodeId: string, reason: string | Error = "link closed"): boolean {
    return this.#remotes.remove(nodeId, reason);
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
          this.#remotes.reply(
            from,
            id,
            new ActorStoppedError(frame.to, `not on node ${this.node}`),
          );
          return;
        }
        this.#ask(this.ref(frame.to) as Ref, frame.payload, { timeoutMs: Infinity }).then(
          (value) => this.#remotes.reply(from, id, undefined, value),
          (error) => this.#remotes.reply(from, id, error),
        );
        return;
      }
      default: {
        this.#remotes.answer(frame);
      }
    }
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
    this.#remotes.dropWatcher(cell);
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
    if (ref.node !== this.node) return this.#remotes.watch(watcher, ref);
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
    if (ref.node !== this.node) return this.#remotes.unwatch(watcher, ref);
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
    if (ref.node !== this.node) return this.#remotes.tell(ref, msg);
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
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    let askId: number | undefined;
    const { promise, settle } = openAsk(ref.path, {
      timeoutMs,
      signal: options.signal,
      giveUp: () => {
        if (askId !== undefined) this.#remotes.forget(askId);
      },
    });

    if (ref.node !== this.node) {
      askId = this.#remotes.ask(ref, msg, settle);
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
}
