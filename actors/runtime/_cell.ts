/**
 * The system's record of one actor incarnation ({@linkcode Cell}: behavior,
 * mailbox, timers, children, watchers, lifecycle state), the ref class the
 * system hands out, and the mail that fills a mailbox. Internal: only the
 * system and its remote side touch cells; everyone else holds an
 * {@linkcode ActorRef}.
 *
 * @module
 */

import type { ActorContext, Behavior, DownNotice, ExitReason } from "./behavior.ts";
import type { Mailbox } from "./mailbox.ts";
import type { ActorRef, AskOptions } from "./ref.ts";
import { Timers } from "./timers.ts";

/** Who is told when an actor stops: another actor (by mail) or a callback. */
export type Watcher = Cell | ((notice: DownNotice) => void);
/** The settling half of an ask waiting in a mailbox. */
export interface Reply {
  /** Answers the ask. */
  resolve(value: unknown): void;
  /** Fails the ask. */
  reject(error: unknown): void;
}
/** One item of a mailbox: a message (with its ask's reply) or a watched actor's death notice. */
export type Envelope = { kind: "msg"; msg: unknown; reply?: Reply } | {
  kind: "down";
  notice: DownNotice;
};
/** Where a ref sends: the system that made it. */
export interface Router {
  /** Sends a one-way message. */
  tell(ref: Ref, msg: unknown): void;
  /** Sends a request and resolves with the answer. */
  ask(ref: Ref, msg: unknown, options: AskOptions): Promise<unknown>;
}

/** The system's {@linkcode ActorRef}: an address that sends through its system. */
export class Ref implements ActorRef {
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

/** One incarnation of an actor and everything the system keeps for it. */
export class Cell {
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

/** Whether the actor takes new messages: one that failed or was asked to stop does not. */
export function accepting(cell: Cell): boolean {
  return (cell.state === "running" || cell.state === "starting") && cell.stopAfter === undefined;
}

/**
 * Whether the actor has stopped. A function, not an inline comparison: the
 * state changes across awaits.
 */
export function isStopped(cell: Cell): boolean {
  return cell.state === "stopped";
}

/** The error a throw stands for: itself if it is an Error, else one that names what was thrown. */
export function toError(e: unknown): Error {
  if (e instanceof Error) return e;
  return new Error(`Non-error thrown: ${typeof e === "string" ? e : JSON.stringify(e)}`, {
    cause: e,
  });
}
