import { deepEqual, equal, throws } from "@std/assert";
import {
  checkFragments,
  fragmentOfRound,
  fragmentPiece,
  roundPiece,
  roundRanges,
} from "./fragments.ts";
import { shardMap } from "./run_protocol.ts";

Deno.test("fragments: the pieces of a shard are block-aligned and cover it once", () => {
  for (const [length, f] of [[1000, 2], [2560, 3], [256, 1], [10_000, 7]]) {
    let next = 0;
    for (let i = 0; i < f; i++) {
      const p = fragmentPiece(length, f, i, 256);
      equal(p.lo, next, `${length}/${f} piece ${i}`);
      equal(p.lo % 256, 0);
      equal(p.hi > p.lo, true);
      next = p.hi;
    }
    equal(next, length);
  }
  deepEqual(fragmentPiece(1000, 2, 0, 256), { lo: 0, hi: 512 });
  deepEqual(fragmentPiece(1000, 2, 1, 256), { lo: 512, hi: 1000 });
});

Deno.test("fragments: round r synchronises fragment r mod F, one piece of every shard", () => {
  deepEqual([0, 1, 2, 3, 4].map((r) => fragmentOfRound(r, 3)), [0, 1, 2, 0, 1]);
  const shards = shardMap(2048, { aggregators: ["a", "b"], block: 256 });
  deepEqual(roundRanges(shards, 0, 2, 256), [{ lo: 0, hi: 512 }, { lo: 1024, hi: 1536 }]);
  deepEqual(roundRanges(shards, 3, 2, 256), [{ lo: 512, hi: 1024 }, { lo: 1536, hi: 2048 }]);
  // One fragment: every round is the whole shard.
  deepEqual(roundPiece(shards[1], 5, 1, 256), { lo: 0, hi: 1024 });
});

Deno.test("fragments: bad counts are refused by name", () => {
  throws(() => checkFragments(0, "--fragments"), /Invalid --fragments: .*got 0/);
  throws(() => checkFragments(1.5), /Invalid fragments/);
  throws(() => checkFragments(65), /from 1 to 64/);
  // More fragments than blocks would leave a piece empty.
  throws(() => fragmentPiece(512, 3, 0, 256), /3 fragments of a shard of 2 blocks/);
});
