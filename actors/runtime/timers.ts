/**
 * Per-actor timers that send a message to their actor and die with it.
 *
 * @module
 */

/** Options for {@linkcode Timers.once} and {@linkcode Timers.interval}. */
export interface TimerOptions {
  /**
   * Names the timer; starting a timer under a key already in use cancels the
   * old one first. Default: a fresh key.
   */
  key?: string;
}

/**
 * Timers owned by one actor. A timer does not call code: it sends a message
 * to the actor's own mailbox, so the actor handles it in order with its other
 * messages. All timers are cancelled when the actor stops.
 *
 * @example A one-shot timer
 * ```ts
 * import { Timers } from "./timers.ts";
 * import assert from "node:assert/strict";
 *
 * const fired: unknown[] = [];
 * const timers = new Timers((msg) => fired.push(msg));
 * timers.once(5, "tick", { key: "t" });
 * assert.ok(timers.has("t"));
 * await new Promise((r) => setTimeout(r, 20));
 * assert.deepEqual(fired, ["tick"]);
 * assert.equal(timers.size, 0);
 * ```
 */
export class Timers {
  #send: (msg: unknown) => void;
  #active = new Map<string, { id: ReturnType<typeof setTimeout>; interval: boolean }>();
  #nextKey = 0;
  #closed = false;

  /** Creates timers that deliver through `send`. */
  constructor(send: (msg: unknown) => void) {
    this.#send = send;
  }

  /** The number of live timers. */
  get size(): number {
    return this.#active.size;
  }

  /** Whether a timer with this key is live. */
  has(key: string): boolean {
    return this.#active.has(key);
  }

  /** Sends `msg` once after `delayMs`. Returns the timer's key. */
  once(delayMs: number, msg: unknown, options: TimerOptions = {}): string {
    const key = this.#prepare(delayMs, options);
    const id = setTimeout(() => {
      this.#active.delete(key);
      this.#send(msg);
    }, delayMs);
    this.#active.set(key, { id, interval: false });
    return key;
  }

  /** Sends `msg` every `everyMs` until cancelled. Returns the timer's key. */
  interval(everyMs: number, msg: unknown, options: TimerOptions = {}): string {
    const key = this.#prepare(everyMs, options);
    if (everyMs <= 0) {
      throw new RangeError(`Invalid timer interval: expected > 0 ms, got ${everyMs}`);
    }
    const id = setInterval(() => this.#send(msg), everyMs);
    this.#active.set(key, { id, interval: true });
    return key;
  }

  /** Cancels one timer. Returns whether it was live. */
  cancel(key: string): boolean {
    const t = this.#active.get(key);
    if (t === undefined) return false;
    if (t.interval) clearInterval(t.id);
    else clearTimeout(t.id);
    this.#active.delete(key);
    return true;
  }

  /** Cancels every timer. */
  cancelAll(): void {
    for (const key of [...this.#active.keys()]) this.cancel(key);
  }

  /** Cancels every timer and refuses new ones (the actor has stopped). */
  close(): void {
    this.cancelAll();
    this.#closed = true;
  }

  #prepare(ms: number, options: TimerOptions): string {
    if (this.#closed) throw new TypeError("Cannot start timer: the actor has stopped");
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) {
      throw new RangeError(`Invalid timer delay: expected a finite number >= 0, got ${ms}`);
    }
    const key = options.key ?? `$timer${this.#nextKey++}`;
    this.cancel(key);
    return key;
  }
}
