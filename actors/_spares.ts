/**
 * Float arrays kept for reuse. On a machine whose page faults are slow, a
 * fresh θ-sized array costs far more than the copy into it (25M parameters
 * on the project's VM: ~270 ms for `slice()`, ~6 ms for `set()` into an
 * array already touched), so the arrays a round hands on (θ's pieces to the
 * compute Worker, a keeper's assembled round to its writer thread) come back
 * and are filled again.
 *
 * @module
 */

/**
 * A few spare arrays, matched by length.
 *
 * @example
 * ```ts
 * import { SpareArrays } from "./_spares.ts";
 * const spares = new SpareArrays(2);
 * const a = spares.copyOf(new Float32Array([1, 2]));
 * spares.give([a]);
 * console.log(spares.copyOf(new Float32Array([3, 4])) === a); // true
 * ```
 */
export class SpareArrays {
  #spare: Float32Array[] = [];
  #max: number;

  /** Keeps at most `max` arrays; more given are left to the collector. */
  constructor(max: number) {
    this.#max = max;
  }

  /** Arrays kept now. */
  get size(): number {
    return this.#spare.length;
  }

  /** Keeps arrays for reuse (while there is room; detached ones are skipped). */
  give(arrays: Iterable<Float32Array>): void {
    for (const x of arrays) {
      if (this.#spare.length >= this.#max) return;
      if (x.buffer.byteLength > 0 || x.length === 0) this.#spare.push(x);
    }
  }

  /**
   * An array of `n` elements: a spare one as it was left (the caller writes
   * every element), else a fresh one of zeros.
   */
  take(n: number): Float32Array {
    const at = this.#spare.findIndex((x) => x.length === n);
    return at >= 0 ? this.#spare.splice(at, 1)[0] : new Float32Array(n);
  }

  /** A copy of `src` in a spare array of its length when there is one. */
  copyOf(src: Float32Array): Float32Array {
    const out = this.take(src.length);
    out.set(src);
    return out;
  }
}
