/**
 * The system's side of its remote links: which peer nodes are connected,
 * the asks this node sent them that still wait for a reply, who watches
 * actors on them, and what happens to all three when a node is removed or
 * the system shuts down. The frames themselves follow the contract in
 * `_remote.ts`; local actors stay the system's business (the system tells
 * this module when a watcher stops, and this module asks the system to
 * notify watchers and count dead letters).
 *
 * @module
 */

import type { DownNotice } from "./behavior.ts";
import {
  type ActorRef,
  ActorStoppedError,
  MailboxFullError,
  RemoteActorError,
  RemoteUnavailableError,
} from "./ref.ts";
import type { RemoteErrorPayload, RemoteFrame, RemoteLink } from "./_remote.ts";
import type { Watcher } from "./_cell.ts";

interface PendingAsk {
  node: string;
  target: string;
  settle(error: unknown, value?: unknown): void;
}

/** What the remote side needs of its system. */
export interface RemoteNodesHost {
  /** Counts (and reports) a message that could not be delivered. */
  deadLetter(target: string, msg: unknown): void;
  /** Tells a watcher that a watched actor is down. */
  notify(watcher: Watcher, notice: DownNotice): void;
  /** Whether the system is shut down (no new asks leave it then). */
  isShutDown(): boolean;
}

/** The connected peer nodes of one actor system, and what waits on them. */
export class RemoteNodes {
  #node: string;
  #host: RemoteNodesHost;
  #links = new Map<string, RemoteLink>();
  #pending = new Map<number, PendingAsk>();
  #nextAskId = 0;
  #remoteWatchers = new Map<string, Set<{ watcher: Watcher; ref: ActorRef }>>();

  /** The remote side of the system on node `node`. */
  constructor(node: string, host: RemoteNodesHost) {
    this.#node = node;
    this.#host = host;
  }

  /** Asks to other nodes still waiting for a reply. */
  get pendingAsks(): number {
    return this.#pending.size;
  }

  /** The connected nodes. */
  nodes(): string[] {
    return [...this.#links.keys()];
  }

  /** Connects (or reconnects) `nodeId` through `link`; see `ActorSystem.addRemote`. */
  add(nodeId: string, link: RemoteLink): void {
    if (typeof nodeId !== "string" || nodeId.length === 0 || nodeId.includes("/")) {
      throw new TypeError(
        `Invalid node id: expected a non-empty string without "/", got ${nodeId}`,
      );
    }
    if (nodeId === this.#node) {
      throw new TypeError(`Cannot add remote ${nodeId}: it is this node`);
    }
    if (typeof link?.send !== "function") {
      throw new TypeError(`Cannot add remote ${nodeId}: link has no send function`);
    }
    this.#links.set(nodeId, link);
  }

  /** Disconnects `nodeId`; see `ActorSystem.removeRemote`. */
  remove(nodeId: string, reason: string | Error): boolean {
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
      this.#host.notify(watcher, { ref, reason: error });
    }
    return had;
  }

  /** Fails the asks still waiting on other nodes and drops every link: the system shut down. */
  close(): void {
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      p.settle(new RemoteUnavailableError(p.target, `actor system ${this.#node} shut down`));
    }
    this.#links.clear();
  }

  /** Sends a tell to an actor on another node; a dead letter when it cannot go. */
  tell(ref: ActorRef, msg: unknown): void {
    const link = this.#links.get(ref.node);
    if (link === undefined) return this.#host.deadLetter(ref.path, msg);
    try {
      const r = link.send({ kind: "tell", to: ref.path, from: this.#node, payload: msg });
      if (r instanceof Promise) r.catch(() => this.#host.deadLetter(ref.path, msg));
    } catch {
      this.#host.deadLetter(ref.path, msg);
    }
  }

  /**
   * Sends an ask to an actor on another node; `settle` gets the reply or the
   * failure. Returns the ask's id while it waits, for {@linkcode forget}.
   */
  ask(
    ref: ActorRef,
    msg: unknown,
    settle: (error: unknown, value?: unknown) => void,
  ): number | undefined {
    const link = this.#links.get(ref.node);
    if (link === undefined) {
      settle(new RemoteUnavailableError(ref.path, `node ${ref.node} is not connected`));
      return undefined;
    }
    if (this.#host.isShutDown()) {
      settle(new RemoteUnavailableError(ref.path, `actor system ${this.#node} shut down`));
      return undefined;
    }
    const id = this.#nextAskId++;
    this.#pending.set(id, { node: ref.node, target: ref.path, settle });
    const fail = (e: unknown) => {
      if (!this.#pending.delete(id)) return;
      settle(new RemoteUnavailableError(ref.path, `send failed: ${errMsg(e)}`, { cause: e }));
    };
    try {
      const r = link.send({ kind: "ask", to: ref.path, from: this.#node, id, payload: msg });
      if (r instanceof Promise) r.catch(fail);
    } catch (e) {
      fail(e);
    }
    return id;
  }

  /** Stops waiting for the reply to ask `id` (it timed out or was aborted). */
  forget(id: number): void {
    this.#pending.delete(id);
  }

  /** Settles the ask a "reply" or "error" frame answers; drops a late or misrouted one. */
  answer(frame: RemoteFrame): void {
    const pending = this.#pending.get(frame.id as number);
    if (pending === undefined) return; // late reply to a timed-out ask
    if (frame.from !== undefined && frame.from !== pending.node) return;
    this.#pending.delete(frame.id as number);
    if (frame.kind === "reply") pending.settle(undefined, frame.payload);
    else pending.settle(errorFromWire(pending.target, frame.payload as RemoteErrorPayload));
  }

  /** Sends the answer to ask `id` of node `to`: its value, or the error it failed with. */
  reply(to: string, id: number, error: unknown, value?: unknown): void {
    const link = this.#links.get(to);
    if (link === undefined) return;
    const errorFrame = (e: unknown): RemoteFrame => ({
      kind: "error",
      to,
      from: this.#node,
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
    else send({ kind: "reply", to, from: this.#node, id, payload: value }, true);
  }

  /**
   * Watches an actor on another node: the notice comes when its node is
   * removed, or at once when the node is not connected.
   */
  watch(watcher: Watcher, ref: ActorRef): void {
    let set = this.#remoteWatchers.get(ref.node);
    if (set === undefined) this.#remoteWatchers.set(ref.node, set = new Set());
    if (!this.#links.has(ref.node)) {
      const reason = new RemoteUnavailableError(ref.path, `node ${ref.node} is not connected`);
      queueMicrotask(() => this.#host.notify(watcher, { ref, reason }));
      return;
    }
    set.add({ watcher, ref });
  }

  /** Stops one watch of an actor on another node. */
  unwatch(watcher: Watcher, ref: ActorRef): void {
    const set = this.#remoteWatchers.get(ref.node);
    for (const entry of set ?? []) {
      if (entry.watcher === watcher && entry.ref.path === ref.path) set!.delete(entry);
    }
  }

  /** Drops every watch `watcher` holds on other nodes: it has stopped. */
  dropWatcher(watcher: Watcher): void {
    for (const set of this.#remoteWatchers.values()) {
      for (const entry of set) if (entry.watcher === watcher) set.delete(entry);
    }
  }
}

function errMsg(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
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
