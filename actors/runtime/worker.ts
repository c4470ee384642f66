/**
 * Actors whose behavior runs in a Deno Worker, so that heavy work (the
 * trainer's WebGPU steps) never blocks the event loop that carries messages
 * and heartbeats.
 *
 * The host side is an ordinary actor behavior ({@linkcode workerActor}): it
 * starts a Worker running `worker_main.ts`, which imports the behavior module,
 * then forwards each message (tell or ask) to the Worker and awaits the
 * answer, so the hosted behavior also handles one message at a time. The
 * Worker's death (an uncaught error or rejection, `self.close()`, a message
 * that cannot be decoded, or `terminate` through the {@linkcode WorkerHandle})
 * is the actor's failure with a {@linkcode WorkerDiedError}; its supervisor
 * restarts it by calling the child spec's `start` again, which makes a fresh
 * Worker.
 *
 * Messages and replies cross the Worker boundary by structured clone: plain
 * data and typed arrays, no functions.
 *
 * @module
 */

import { type ActorContext, type Behavior, describeReason, type ExitReason } from "./behavior.ts";

/** What a behavior hosted in a Worker sees. */
export interface WorkerContext {
  /** The hosting actor's path. */
  path: string;
  /** The `args` given to {@linkcode workerActor}. */
  args: unknown;
  /** Aborted when the actor stops. */
  signal: AbortSignal;
}

/**
 * A behavior that runs inside a Worker. The module passed to
 * {@linkcode workerActor} default-exports one of these, or a function
 * (sync or async) that takes `args` and returns one.
 */
// deno-lint-ignore no-explicit-any
export interface WorkerBehavior<M = any> {
  /** Runs in the Worker before the first message; a throw is a start failure. */
  started?(ctx: WorkerContext): unknown;
  /** Handles one message; the return value answers an ask; a throw is the actor's failure. */
  receive(msg: M, ctx: WorkerContext): unknown;
  /** Runs in the Worker when the actor stops gracefully; `reason` is a description. */
  stopped?(ctx: WorkerContext, reason: string): unknown;
}

/** Control over the Worker behind one incarnation of a worker actor. */
export interface WorkerHandle {
  /** The Worker itself. */
  readonly worker: Worker;
  /** Terminates the Worker; the actor fails with a {@linkcode WorkerDiedError}. */
  terminate(reason?: string): void;
}

/** Options for {@linkcode workerActor}. */
export interface WorkerActorOptions {
  /** Structured-cloneable data for the module's factory and `ctx.args`. */
  args?: unknown;
  /** Passed to `new Worker` (e.g. `deno.permissions`); `type` is always "module". */
  workerOptions?: Omit<WorkerOptions, "type">;
  /** Called with a handle each time a Worker is started (for fault injection and tests). */
  onStart?: (handle: WorkerHandle) => void;
}

/** The Worker behind an actor died; the actor fails with this error. */
export class WorkerDiedError extends Error {
  /** The actor's path. */
  readonly target: string;
  /** Creates the error; `detail` says how the Worker died. */
  constructor(target: string, detail: string, options?: ErrorOptions) {
    super(`Worker of actor ${target} died: ${detail}`, options);
    this.name = "WorkerDiedError";
    this.target = target;
  }
}

type Outbound =
  | { type: "ok"; id: number; value: unknown }
  | { type: "fail"; id: number; error: { name: string; message: string; stack?: string } }
  | { type: "closed" };

const ENTRY = new URL("./worker_main.ts", import.meta.url);

/**
 * Makes a behavior that hosts the behavior module `module` in a fresh Worker.
 * Call it once per start (e.g. in a child spec's `start`): each call makes
 * its own Worker.
 *
 * @example A worker-hosted actor (the module here is a data: URL; normally a file beside yours)
 * ```ts
 * import { ActorSystem } from "./system.ts";
 * import { workerActor } from "./worker.ts";
 * import assert from "node:assert/strict";
 *
 * const module = "data:text/javascript," +
 *   encodeURIComponent("export default { receive: (n) => n * n };");
 * const system = new ActorSystem({ node: "local" });
 * const square = await system.spawn(workerActor(module), { name: "square" });
 * assert.equal(await square.ask(7), 49);
 * await system.shutdown(); // terminates the Worker
 * ```
 */
export function workerActor(module: string | URL, options: WorkerActorOptions = {}): Behavior {
  return new WorkerActor(module, options);
}

class WorkerActor implements Behavior {
  #module: string;
  #options: WorkerActorOptions;
  #worker: Worker | undefined;
  #pending = new Map<number, { resolve(v: unknown): void; reject(e: unknown): void }>();
  #nextId = 0;
  #dead: WorkerDiedError | undefined;
  #ctx: ActorContext | undefined;
  #terminated = false;

  constructor(module: string | URL, options: WorkerActorOptions) {
    if (typeof module !== "string" && !(module instanceof URL)) {
      throw new TypeError(`Invalid worker module: expected a URL or string, got ${typeof module}`);
    }
    this.#module = new URL(module).href;
    this.#options = options;
  }

  async started(ctx: ActorContext): Promise<void> {
    this.#ctx = ctx;
    const worker = new Worker(ENTRY, {
      name: ctx.self.path,
      ...this.#options.workerOptions,
      type: "module",
    });
    this.#worker = worker;
    worker.onmessage = (event: MessageEvent<Outbound>) => this.#onMessage(event.data);
    worker.onerror = (event: ErrorEvent) => {
      // Without preventDefault, a Worker's uncaught error also kills the host process.
      event.preventDefault();
      this.#die(`uncaught error: ${event.message}`, event.error);
    };
    worker.onmessageerror = () => this.#die("a message from it could not be decoded");
    ctx.signal.addEventListener("abort", () => this.#terminate(), { once: true });
    this.#options.onStart?.({
      worker,
      terminate: (reason = "terminated by its host") => this.#die(reason),
    });
    try {
      await this.#request({
        type: "init",
        module: this.#module,
        args: this.#options.args,
        path: ctx.self.path,
      });
    } catch (e) {
      this.#terminate();
      throw e;
    }
  }

  receive(msg: unknown): Promise<unknown> {
    return this.#request({ type: "msg", msg });
  }

  async stopped(_ctx: ActorContext, reason: ExitReason): Promise<void> {
    if (this.#dead === undefined) {
      try {
        await this.#request({ type: "stop", reason: describeReason(reason) });
      } catch {
        // The Worker is going away either way.
      }
    }
    this.#terminate();
  }

  #request(body: Record<string, unknown>): Promise<unknown> {
    if (this.#dead !== undefined) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    this.#pending.set(id, { resolve, reject });
    try {
      this.#worker!.postMessage({ ...body, id });
    } catch (e) {
      this.#pending.delete(id);
      reject(
        new TypeError(
          `Cannot send to worker actor ${this.#ctx?.self.path}: ${
            e instanceof Error ? e.message : e
          }`,
          { cause: e },
        ),
      );
    }
    return promise;
  }

  #onMessage(data: Outbound): void {
    if (data.type === "closed") return this.#die("it closed itself");
    const pending = this.#pending.get(data.id);
    if (pending === undefined) return;
    this.#pending.delete(data.id);
    if (data.type === "ok") return pending.resolve(data.value);
    const error = new Error(data.error.message);
    error.name = data.error.name;
    if (data.error.stack) error.stack = data.error.stack;
    pending.reject(error);
  }

  #die(detail: string, cause?: unknown): void {
    if (this.#dead !== undefined) return;
    const error = new WorkerDiedError(this.#ctx?.self.path ?? "?", detail, { cause });
    this.#dead = error;
    this.#terminate();
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
    this.#ctx?.stop(error);
  }

  #terminate(): void {
    if (this.#terminated || this.#worker === undefined) return;
    this.#terminated = true;
    this.#worker.terminate();
  }
}
