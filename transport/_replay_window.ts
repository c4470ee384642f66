/**
 * Anti-replay: the window of envelope sequence numbers a channel has seen.
 * A peer (or the network, or the fault layer) that sends an envelope again
 * gets it dropped instead of handled twice; reordering within the window is
 * still accepted. Its own module because it is one rule with one piece of
 * state, and tests can reason about it apart from the socket.
 *
 * @module
 */

/** How far below the highest sequence number a late envelope is still accepted. */
const WINDOW = 2048;

/** The sequence numbers seen on one channel, pruned to {@linkcode WINDOW} below the highest. */
export class ReplayWindow {
  #seen = new Set<number>();
  #highestSeen = -1;

  /** True the first time a sequence number is seen. */
  fresh(seq: number): boolean {
    if (seq > this.#highestSeen) {
      this.#highestSeen = seq;
      this.#seen.add(seq);
      if (this.#seen.size > 2 * WINDOW) {
        const floor = this.#highestSeen - WINDOW;
        for (const s of this.#seen) if (s < floor) this.#seen.delete(s);
      }
      return true;
    }
    if (seq < this.#highestSeen - WINDOW || this.#seen.has(seq)) return false;
    this.#seen.add(seq);
    return true;
  }
}
