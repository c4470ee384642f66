/**
 * One encoding of a round for all the keepers of a process
 * ({@linkcode PreparedShare}).
 *
 * Keepers in one process are told the same lent pieces of every round
 * (keeper_feed.ts). Each used to copy them into vectors of its own, encode
 * and hash them on its writer thread and keep the resulting files to serve:
 * a host with two keepers held every round's bytes twice over and hashed
 * them twice. With a share, the first keeper to take a round has its writer
 * encode it into shared memory and announce it before writing; the others
 * write those very bytes into their own directories, and serve them, without
 * a copy. Each keeper still writes, syncs and acknowledges its own replica.
 *
 * @module
 */
import type { PreparedRound } from "../checkpoint/store.ts";

/** What {@linkcode PreparedShare.claim} answers. */
export type Claim =
  | {
    /** This keeper encodes the round, then publishes it (or its failure). */
    own: true;
    publish(prepared: PreparedRound): void;
    fail(reason: unknown): void;
  }
  | {
    /** Another keeper encodes it: its files, or a rejection when it failed. */
    own: false;
    /** The keeper that encodes it. */
    owner: string;
    prepared: Promise<PreparedRound>;
  };

/** A round in the share: the pieces' arrays, its encoder, and the encoding, pending or done. */
interface SharedRound {
  pieces: WeakRef<Float32Array>[];
  owner: string;
  pending?: Promise<PreparedRound>;
  done?: WeakRef<PreparedRound>;
}

/** Rounds kept claimable below the newest claimed: a keeper behind may still come for them. */
const KEEP_ROUNDS = 4;

/**
 * The rounds being encoded, or encoded, by one keeper of a process for the
 * others. A round is shared only between keepers holding the very same
 * piece arrays (lent by the aggregators while every keeper holds them), so
 * the bytes are the same ones they would have encoded.
 *
 * @example
 * ```ts
 * import { PreparedShare } from "./keeper_share.ts";
 * const share = new PreparedShare();
 * const pieces = [new Float32Array(8)];
 * const first = share.claim(3, pieces, "host/keepers/0");
 * const second = share.claim(3, pieces, "host/keepers/1");
 * console.log(first.own, second.own); // true false
 * ```
 */
export class PreparedShare {
  /**
   * By round: the pieces' arrays and the encoding, pending or done. A done
   * one is held weakly: the keepers' servers decide how long files stay in
   * memory, not the share (a keeper coming after they were dropped encodes
   * its own).
   */
  #rounds = new Map<number, SharedRound>();

  /**
   * Keeper `keeper`'s claim of round `round` assembled from `pieces` (each
   * piece's θ, in order): the first caller owns it; a later caller with the
   * same arrays waits for it. Call it only while the pieces are held, so
   * that no array was recycled into another round meanwhile.
   */
  claim(round: number, pieces: readonly Float32Array[], keeper: string): Claim {
    const known = this.#rounds.get(round);
    if (
      known && known.pieces.length === pieces.length &&
      known.pieces.every((p, i) => p.deref() === pieces[i])
    ) {
      const owner = known.owner;
      if (known.pending) return { own: false, owner, prepared: known.pending };
      const done = known.done?.deref();
      if (done) return { own: false, owner, prepared: Promise.resolve(done) };
    }
    const entry: SharedRound = { pieces: pieces.map((p) => new WeakRef(p)), owner: keeper };
    const { promise, resolve, reject } = Promise.withResolvers<PreparedRound>();
    // Nobody may come for it: a failure then goes unheard.
    promise.catch(() => {});
    entry.pending = promise;
    this.#rounds.set(round, entry);
    for (const r of this.#rounds.keys()) if (r < round - KEEP_ROUNDS) this.#rounds.delete(r);
    return {
      own: true,
      publish: (prepared) => {
        entry.done = new WeakRef(prepared);
        entry.pending = undefined;
        resolve(prepared);
      },
      fail: (reason) => {
        // The next keeper to come encodes it itself.
        if (this.#rounds.get(round) === entry) this.#rounds.delete(round);
        reject(reason);
      },
    };
  }

  /** Rounds claimable now, ascending (for status and tests). */
  rounds(): number[] {
    return [...this.#rounds.keys()].sort((a, b) => a - b);
  }
}
