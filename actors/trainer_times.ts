/**
 * Where a trainer's time goes, per round (INTELLECT-1's utilization: inner
 * time / (inner time + blocked time)), reported with each round by the
 * trainer actor (actors/trainer.ts). The actor says when its Worker starts
 * and stops computing and when it starts waiting on the network; this
 * module keeps the clocks and the sums of the rounds not yet reported.
 *
 * @module
 */

/** Compute and blocked time of one round, ms. */
export interface RoundTime {
  inner: number;
  blocked: number;
}

/**
 * Compute and blocked time of each round not yet reported. A wait counts
 * against the round whose work it holds up: the round just sent (blocking,
 * or nothing left to compute), or the finished inner phase whose Δ waits
 * for the previous round's update.
 *
 * @example
 * ```ts
 * import { RoundTimes } from "./trainer_times.ts";
 * const times = new RoundTimes();
 * times.innerStarted();
 * times.innerEnded(0);
 * const { inner, blocked } = times.take(0);
 * if (inner < 0 || blocked !== 0) throw new Error("unexpected times");
 * ```
 */
export class RoundTimes {
  #of = new Map<number, RoundTime>();
  #innerStart = 0;
  #blockedStart = 0;

  #add(r: number, kind: keyof RoundTime, ms: number): void {
    const t = this.#of.get(r) ?? { inner: 0, blocked: 0 };
    t[kind] += ms;
    this.#of.set(r, t);
  }

  /** The Worker starts computing (an inner phase, or a kept phase's pseudo-gradient). */
  innerStarted(): void {
    this.#innerStart = performance.now();
  }

  /**
   * The Worker's computation for round `r` ended; `waitedMs` of it the Worker
   * spent waiting for a merge (blocked, not computing).
   */
  innerEnded(r: number, waitedMs = 0): void {
    this.#add(r, "inner", performance.now() - this.#innerStart - waitedMs);
    if (waitedMs > 0) this.#add(r, "blocked", waitedMs);
  }

  /** The trainer starts waiting on the network with nothing to compute. */
  blockedStarted(): void {
    this.#blockedStart = performance.now();
  }

  /** Counts the wait so far against round `r`; the wait goes on from now. */
  blockedSoFar(r: number): void {
    const now = performance.now();
    this.#add(r, "blocked", now - this.#blockedStart);
    this.#blockedStart = now;
  }

  /** The times of round `r`, forgetting it and every round before. */
  take(r: number): RoundTime {
    const t = this.#of.get(r) ?? { inner: 0, blocked: 0 };
    for (const k of this.#of.keys()) if (k <= r) this.#of.delete(k);
    return t;
  }

  /** Forgets every round (θ is fetched again). */
  clear(): void {
    this.#of.clear();
  }
}
