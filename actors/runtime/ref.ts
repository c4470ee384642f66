/**
 * Actor references and the errors a send can end in.
 *
 * @module
 */

/** Options for {@linkcode ActorRef.ask}. */
export interface AskOptions {
  /**
   * How long to wait for the reply, in milliseconds; `Infinity` waits until
   * the target answers or stops. Default 5000.
   */
  timeoutMs?: number;
  /** Aborting this signal rejects the ask with the signal's reason. */
  signal?: AbortSignal;
}

/** The default ask timeout in milliseconds. */
export const DEFAULT_ASK_TIMEOUT_MS = 5000;

/**
 * A handle to an actor, local or on another node, by its path `node/name`.
 *
 * A ref names an actor rather than holding it: a ref to a supervised child
 * keeps working after the child is restarted under the same name, and a ref
 * to an actor on another node is used exactly like a local one. To put a ref
 * in a message that may cross the wire, send its `path` and turn it back
 * into a ref with `system.ref(path)`.
 *
 * @example Telling and asking
 * ```ts
 * import { ActorSystem } from "./system.ts";
 * import assert from "node:assert/strict";
 *
 * const system = new ActorSystem({ node: "local" });
 * let count = 0;
 * const counter = await system.spawn({ receive: (n: number) => count += n }, { name: "counter" });
 * counter.tell(2);
 * assert.equal(await counter.ask(3), 5);
 * assert.equal(counter.path, "local/counter");
 * await system.shutdown();
 * ```
 */
export interface ActorRef<M = unknown> {
  /** The actor's full path `node/name`. */
  readonly path: string;
  /** The node that hosts the actor. */
  readonly node: string;
  /** The actor's name on its node. */
  readonly name: string;
  /**
   * Sends a message without waiting for an answer. A message that cannot be
   * delivered (no such actor, a full mailbox under the "drop-newest" or
   * "drop-oldest" policy, no link to the node) is counted as dropped or as a
   * dead letter; under the "fail" policy a full local mailbox throws
   * {@linkcode MailboxFullError}.
   */
  tell(msg: M): void;
  /**
   * Sends a message and resolves with the value the actor's `receive`
   * returns. Rejects with {@linkcode AskTimeoutError},
   * {@linkcode ActorStoppedError}, {@linkcode MailboxFullError},
   * {@linkcode RemoteUnavailableError}, the error the actor threw, or the
   * abort reason of `options.signal`.
   */
  ask<R = unknown>(msg: M, options?: AskOptions): Promise<R>;
}

/** An ask got no reply in time. */
export class AskTimeoutError extends Error {
  /** The path of the actor that was asked. */
  readonly target: string;
  /** Creates the error for an ask to `target` that waited `timeoutMs`. */
  constructor(target: string, timeoutMs: number, options?: ErrorOptions) {
    super(`Ask to ${target} timed out: no reply within ${timeoutMs} ms`, options);
    this.name = "AskTimeoutError";
    this.target = target;
  }
}

/** The target actor does not exist, or stopped before it handled the message. */
export class ActorStoppedError extends Error {
  /** The path of the actor that was addressed. */
  readonly target: string;
  /** Creates the error; `detail` says why, e.g. "no such actor". */
  constructor(target: string, detail: string, options?: ErrorOptions) {
    super(`Cannot reach ${target}: ${detail}`, options);
    this.name = "ActorStoppedError";
    this.target = target;
  }
}

/** The node that hosts the target is not connected, or the link failed. */
export class RemoteUnavailableError extends Error {
  /** The path of the actor that was addressed. */
  readonly target: string;
  /** Creates the error; `detail` says why, e.g. "node b is not connected". */
  constructor(target: string, detail: string, options?: ErrorOptions) {
    super(`Cannot reach ${target}: ${detail}`, options);
    this.name = "RemoteUnavailableError";
    this.target = target;
  }
}

/** The target's mailbox is full and its overflow policy refused the message. */
export class MailboxFullError extends Error {
  /** The path of the actor that was addressed. */
  readonly target: string;
  /** Creates the error for a mailbox of `capacity` messages. */
  constructor(target: string, capacity: number, options?: ErrorOptions) {
    super(`Cannot deliver to ${target}: mailbox full (capacity ${capacity})`, options);
    this.name = "MailboxFullError";
    this.target = target;
  }
}

/**
 * An ask to an actor on another node failed there: its `receive` threw. The
 * remote error's class name is kept in `remoteName`.
 */
export class RemoteActorError extends Error {
  /** The path of the actor that was asked. */
  readonly target: string;
  /** The class name of the error on the remote node, e.g. "TypeError". */
  readonly remoteName: string;
  /** Creates the error from the remote error's name and message. */
  constructor(target: string, remote: { name: string; message: string }) {
    super(`Ask to ${target} failed: ${remote.name}: ${remote.message}`);
    this.name = "RemoteActorError";
    this.target = target;
    this.remoteName = remote.name;
  }
}

/**
 * Splits and checks an actor path. A bare name (no `/`) is taken to be on
 * `defaultNode`.
 */
export function parsePath(path: string, defaultNode: string): { node: string; name: string } {
  if (typeof path !== "string" || path.length === 0) {
    throw new TypeError(`Invalid actor path: expected a non-empty string, got ${String(path)}`);
  }
  const slash = path.indexOf("/");
  const node = slash === -1 ? defaultNode : path.slice(0, slash);
  const name = slash === -1 ? path : path.slice(slash + 1);
  if (node.length === 0) throw new TypeError(`Invalid actor path "${path}": empty node`);
  assertName(name, path);
  return { node, name };
}

/** Throws a TypeError unless `name` is a valid actor name (segments joined by `/`). */
export function assertName(name: string, context = name): void {
  if (typeof name !== "string" || name.length === 0) {
    throw new TypeError(`Invalid actor path "${context}": empty name`);
  }
  if (name.split("/").some((s) => s.length === 0)) {
    throw new TypeError(`Invalid actor path "${context}": empty segment in name "${name}"`);
  }
}
