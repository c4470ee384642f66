/**
 * Fragments (Streaming DiLoCo): the flat parameter vector is synchronised
 * one fragment per round instead of whole, so a round's exchange carries
 * 1/F of the bytes. Fragment f is synchronised in rounds r with r mod F = f;
 * between two of its rounds, every trainer keeps training it locally.
 *
 * How fragments compose with aggregator shards: fragment f is the f-th
 * piece of every shard (each shard cut into F block-aligned ranges, blocks
 * spread as evenly as {@linkcode shardMap} spreads them over shards), not a
 * range of the flat vector that some aggregators own and others do not. So
 * every aggregator works every round on 1/F of its shard, the load stays
 * spread over all of them, and a shard's piece of round r follows from the
 * round number alone: no message says which piece it is, and a contribution
 * or update of the wrong length is refused as before.
 *
 * @module
 */
import { DEFAULT_BLOCK, type Shard } from "./run_protocol.ts";

/** The most fragments a run may use. */
export const MAX_FRAGMENTS = 64;

/** A range of a shard, relative to its start: elements [lo, hi). */
export interface Piece {
  lo: number;
  hi: number;
}

/**
 * Checks a fragment count; the RangeError names `what` (a flag or a field).
 *
 * @example
 * ```ts
 * import { checkFragments } from "./fragments.ts";
 * checkFragments(4, "--fragments"); // ok
 * ```
 */
export function checkFragments(fragments: unknown, what = "fragments"): number {
  if (
    typeof fragments !== "number" || !Number.isSafeInteger(fragments) || fragments < 1 ||
    fragments > MAX_FRAGMENTS
  ) {
    throw new RangeError(
      `Invalid ${what}: expected an integer from 1 to ${MAX_FRAGMENTS}, got ${String(fragments)}`,
    );
  }
  return fragments;
}

/** The fragment a round synchronises. */
export function fragmentOfRound(round: number, fragments: number): number {
  return ((round % fragments) + fragments) % fragments;
}

/**
 * The piece of a shard of `length` elements that fragment `f` of `fragments`
 * covers, block-aligned; earlier pieces take the remainder blocks.
 *
 * @throws {RangeError} when the shard has fewer blocks than fragments (a piece would be empty)
 *
 * @example
 * ```ts
 * import { fragmentPiece } from "./fragments.ts";
 * console.log(fragmentPiece(1000, 2, 1, 256)); // { lo: 512, hi: 1000 }
 * ```
 */
export function fragmentPiece(
  length: number,
  fragments: number,
  f: number,
  block = DEFAULT_BLOCK,
): Piece {
  const blocks = Math.ceil(length / block);
  if (fragments > blocks) {
    throw new RangeError(
      `Invalid fragments: ${fragments} fragments of a shard of ${blocks} blocks of ${block} would leave one empty`,
    );
  }
  const base = Math.floor(blocks / fragments);
  const extra = blocks % fragments;
  const startBlock = f * base + Math.min(f, extra);
  const nBlocks = base + (f < extra ? 1 : 0);
  return {
    lo: startBlock * block,
    hi: Math.min(length, (startBlock + nBlocks) * block),
  };
}

/** The piece of `shard` that round `round` synchronises (the whole shard with one fragment). */
export function roundPiece(
  shard: Pick<Shard, "length">,
  round: number,
  fragments: number,
  block = DEFAULT_BLOCK,
): Piece {
  if (fragments === 1) return { lo: 0, hi: shard.length };
  return fragmentPiece(shard.length, fragments, fragmentOfRound(round, fragments), block);
}

/** The ranges of the flat vector that round `round` synchronises, one per shard, absolute. */
export function roundRanges(
  shards: readonly Pick<Shard, "start" | "length">[],
  round: number,
  fragments: number,
  block = DEFAULT_BLOCK,
): Piece[] {
  return shards.map((s) => {
    const p = roundPiece(s, round, fragments, block);
    return { lo: s.start + p.lo, hi: s.start + p.hi };
  });
}
