/**
 * A bounded FIFO mailbox with a stated overflow policy.
 *
 * @module
 */

/**
 * What a full mailbox does with a new message:
 * - "drop-newest" (default): the new message is refused. A tell is dropped
 *   and counted; an ask rejects with `MailboxFullError`.
 * - "drop-oldest": the oldest queued message is evicted (an evicted ask
 *   rejects with `MailboxFullError`) and the new one is queued. Suits streams
 *   where only recent messages matter (progress, heartbeats).
 * - "fail": the sender is told at once: a local tell throws
 *   `MailboxFullError`, an ask rejects with it. Use it for backpressure.
 */
export type OverflowPolicy = "drop-newest" | "drop-oldest" | "fail";

/** The default mailbox capacity, in messages. */
export const DEFAULT_MAILBOX_SIZE = 1000;

/** The outcome of {@linkcode Mailbox.push}. */
export interface PushResult<T> {
  /** Whether the new item was queued. */
  accepted: boolean;
  /** The item evicted to make room ("drop-oldest" only). */
  evicted?: T;
}

/**
 * A bounded queue. System items (death notices) bypass the bound so that a
 * flood of user messages can never hide a child's death from its supervisor.
 *
 * @example Overflow with "drop-oldest"
 * ```ts
 * import { Mailbox } from "./mailbox.ts";
 * import assert from "node:assert/strict";
 *
 * const box = new Mailbox<string>(2, "drop-oldest");
 * box.push("a");
 * box.push("b");
 * assert.deepEqual(box.push("c"), { accepted: true, evicted: "a" });
 * assert.equal(box.shift(), "b");
 * assert.equal(box.size, 1);
 * ```
 */
export class Mailbox<T> {
  #items: T[] = [];
  #head = 0;
  /** Maximum number of user items held. */
  readonly capacity: number;
  /** What happens when a user item arrives at a full mailbox. */
  readonly overflow: OverflowPolicy;

  /** Creates an empty mailbox. */
  constructor(capacity: number = DEFAULT_MAILBOX_SIZE, overflow: OverflowPolicy = "drop-newest") {
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new RangeError(`Invalid mailbox size: expected a positive integer, got ${capacity}`);
    }
    if (overflow !== "drop-newest" && overflow !== "drop-oldest" && overflow !== "fail") {
      throw new TypeError(
        `Invalid overflow policy: expected "drop-newest", "drop-oldest" or "fail", got ${
          String(overflow)
        }`,
      );
    }
    this.capacity = capacity;
    this.overflow = overflow;
  }

  /** The number of queued items. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  /** Queues a user item under the overflow policy. */
  push(item: T): PushResult<T> {
    if (this.size < this.capacity) {
      this.#items.push(item);
      return { accepted: true };
    }
    if (this.overflow !== "drop-oldest") return { accepted: false };
    const evicted = this.shift() as T;
    this.#items.push(item);
    return { accepted: true, evicted };
  }

  /** Queues an item regardless of the bound. */
  pushSystem(item: T): void {
    this.#items.push(item);
  }

  /** Takes the oldest item, or undefined when empty. */
  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined as T;
    this.#head++;
    // Compact once the consumed prefix dominates, keeping shift O(1) amortized.
    if (this.#head > 64 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** Removes and returns every queued item, oldest first. */
  drain(): T[] {
    const out = this.#items.slice(this.#head);
    this.#items = [];
    this.#head = 0;
    return out;
  }
}
