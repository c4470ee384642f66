/**
 * Liveness of an open channel: when the peer was last heard from, and the
 * ping timer that closes a channel whose peer went silent. Bytes the peer's
 * TCP stack has taken off the socket count as heard, so a peer busy reading
 * a large transfer (and late with its pongs) is not mistaken for a dead one.
 *
 * @module
 */

/** What the ping timer needs of its channel. */
export interface LivenessHost {
  /** Bytes queued in the socket but not yet written. */
  bufferedAmount(): number;
  /** Sends a ping (the client side does; the server answers). */
  ping(): void;
  /** Nothing arrived for `timeoutMs`: the channel should close. */
  timedOut(timeoutMs: number): void;
}

/** The silence clock of one channel. */
export class Liveness {
  #lastHeard = performance.now();
  #sentBytes = 0;
  #lastDrained = 0;
  #timer: ReturnType<typeof setInterval> | undefined;

  /** Something arrived from the peer. */
  heard(): void {
    this.#lastHeard = performance.now();
  }

  /** `byteLength` bytes were handed to the socket. */
  sent(byteLength: number): void {
    this.#sentBytes += byteLength;
  }

  /**
   * Checks every `intervalMs` (0 disables) whether the peer was heard within
   * `timeoutMs`, and pings it if `host.ping` should.
   */
  start(intervalMs: number, timeoutMs: number, host: LivenessHost): void {
    if (!(intervalMs > 0)) return;
    this.#timer = setInterval(() => {
      // Bytes the peer's TCP stack has taken off our buffer also prove it alive: a peer busy
      // reading a large transfer answers pings late, but keeps draining the socket.
      const drained = this.#sentBytes - host.bufferedAmount();
      if (drained > this.#lastDrained) {
        this.#lastDrained = drained;
        this.#lastHeard = performance.now();
      }
      if (performance.now() - this.#lastHeard > timeoutMs) {
        host.timedOut(timeoutMs);
        return;
      }
      host.ping();
    }, intervalMs);
  }

  /** Stops the ping timer. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
  }
}
