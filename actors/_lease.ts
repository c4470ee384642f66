/**
 * Arrays lent to several holders in this process, taken back by their owner
 * once the last holder let go ({@linkcode Lease}). An aggregator's saved state
 * (three θ-sized copies a round: a restart's, and the keepers' pieces) is
 * copied into arrays that come back this way: a fresh θ-sized array costs its
 * page faults on every use (31 ns a parameter a round for the three at 16M
 * parameters on the project's VM, against 0.3 ns for a copy into memory
 * already touched; `deno task bench --only aggregation`).
 *
 * A message carries its holder's let-go function under {@linkcode LET_GO}
 * (a symbol: it never goes on the wire, and a message from another process
 * has none).
 *
 * @module
 */

/** The key of the function a message's receiver calls once it no longer reads the message's arrays. */
export const LET_GO: unique symbol = Symbol("letGo");

/** A message that may carry a let-go function. */
export type Lent<T> = T & { [LET_GO]?: () => void };

/** Calls the let-go function `msg` carries, if any (at most once: the function guards itself). */
export function letGo(msg: unknown): void {
  (msg as Lent<object> | undefined)?.[LET_GO]?.();
}

/**
 * A count of holders; `back` runs once every holder let go and the lender
 * sealed it, unless a holder that cannot tell when it is done (a peer in
 * another process, whose frames are sent from the arrays as they are)
 * spoiled it.
 *
 * @example
 * ```ts
 * import { Lease } from "./_lease.ts";
 * let back = false;
 * const lease = new Lease(() => back = true);
 * const release = lease.hold();
 * lease.seal();
 * release();
 * console.log(back); // true
 * ```
 */
export class Lease {
  /** The lender's own hold, until it seals. */
  #holders = 1;
  #back: (() => void) | undefined;

  /** A lease whose arrays go back through `back`. */
  constructor(back: () => void) {
    this.#back = back;
  }

  /** One more holder: the function it calls when done (calls after the first do nothing). */
  hold(): () => void {
    this.#holders++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#drop();
    };
  }

  /** The arrays never go back (garbage once unreachable). */
  spoil(): void {
    this.#back = undefined;
  }

  /** The lender is done handing the arrays out. */
  seal(): void {
    this.#drop();
  }

  #drop(): void {
    if (--this.#holders > 0) return;
    const back = this.#back;
    this.#back = undefined;
    back?.();
  }
}
