/**
 * Inbound rate limiting: a token bucket for frames and one for bytes per
 * channel, and the rule that a flood is reported to the peer at most once a
 * second (reporting every dropped frame would itself be a flood). Its own
 * module because the admission rule is independent of what the frames say.
 *
 * @module
 */
import type { Limits } from "./envelope.ts";
import { FrameError } from "./errors.ts";

class TokenBucket {
  #rate: number;
  #burst: number;
  #tokens: number;
  #last = performance.now();
  constructor(rate: number, burst: number) {
    this.#rate = rate;
    this.#burst = burst;
    this.#tokens = burst;
  }
  take(n: number): boolean {
    const now = performance.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) / 1000) * this.#rate);
    this.#last = now;
    if (this.#tokens < n) return false;
    this.#tokens -= n;
    return true;
  }
}

/** The frame and byte budgets of one channel's incoming side. */
export class RateLimit {
  #limits: Limits;
  #frames: TokenBucket;
  #bytes: TokenBucket;
  #rateLimited = 0;
  #lastRateError = -Infinity;

  /** Starts with full buckets of `limits.framesBurst` frames and `limits.bytesBurst` bytes. */
  constructor(limits: Limits) {
    this.#limits = limits;
    this.#frames = new TokenBucket(limits.framesPerSecond, limits.framesBurst);
    this.#bytes = new TokenBucket(limits.bytesPerSecond, limits.bytesBurst);
  }

  /**
   * Takes one frame of `byteLength` bytes from the budgets. Undefined when it
   * may pass; when it is dropped, the error to report, or null when one was
   * reported less than a second ago.
   */
  admit(byteLength: number): FrameError | null | undefined {
    if (this.#frames.take(1) && this.#bytes.take(byteLength)) return undefined;
    this.#rateLimited++;
    const now = performance.now();
    if (now - this.#lastRateError <= 1000) return null;
    this.#lastRateError = now;
    return new FrameError(
      "rate_limited",
      `Rate limit exceeded: ${this.#rateLimited} frames dropped (limit ${this.#limits.framesPerSecond} frames/s)`,
    );
  }
}
