/**
 * Restoring the aggregators of a resumed run: a round read back from the
 * checkpoint store (checkpoint/resume.ts) cut into the per-shard states that
 * each aggregator restores as after a restart. It lives with the roles
 * because it speaks their types (shards, aggregator states); the store below
 * knows only rounds.
 *
 * @module
 */
import type { RoundState } from "../checkpoint/store.ts";
import type { AggregatorState } from "./aggregation.ts";
import type { Shard } from "./run_protocol.ts";

/**
 * Cuts a resumed round into the aggregator states of a shard map, for a
 * run's keeper slot: each aggregator then restores its shards at the resumed
 * round as after a restart.
 *
 * @example
 * ```ts
 * import { aggregatorStates } from "./restore.ts";
 * const states = aggregatorStates(
 *   { run: "r", round: 7, params: new Float32Array(4).fill(1), momentum: new Float32Array(4) },
 *   [{ index: 0, start: 0, length: 2, aggregator: "a" }, { index: 1, start: 2, length: 2, aggregator: "b" }],
 * );
 * console.log(states.map((s) => [s.round, s.theta.length])); // [[7, 2], [7, 2]]
 * ```
 */
export function aggregatorStates(
  resumed: Pick<RoundState, "run" | "round" | "params" | "momentum" | "residual" | "view">,
  shards: readonly Shard[],
): AggregatorState[] {
  const n = resumed.params.length;
  return shards.map((shard) => {
    if (shard.start + shard.length > n) {
      throw new RangeError(
        `Cannot restore shard ${shard.index}: [${shard.start}, ${
          shard.start + shard.length
        }) is past the ${n} parameters`,
      );
    }
    const cut = (x: Float32Array | undefined) =>
      x && x.length === n
        ? x.slice(shard.start, shard.start + shard.length)
        : new Float32Array(shard.length);
    return {
      run: resumed.run,
      shard: { ...shard },
      round: resumed.round,
      theta: resumed.params.slice(shard.start, shard.start + shard.length),
      momentum: cut(resumed.momentum),
      residual: cut(resumed.residual),
      norms: [],
    };
  });
}
