/**
 * Where a trainer gets the exact θ of its shards at the start of a round: the
 * {@linkcode StartStateSource} interface and the source the aggregators serve
 * ({@linkcode aggregatorStateSource}). The checkpoint keepers serve the same
 * interface (actors/keeper_source.ts), and a resumed run picks between them
 * (actors/run_checkpoint.ts); the trainer only asks.
 *
 * @module
 */
import type { ActorContext } from "./runtime/behavior.ts";
import type { StateMsg, ViewMsg } from "./run_protocol.ts";
import { validateRunMessage } from "./run_protocol_validate.ts";

/**
 * Where a trainer gets the exact θ of a shard at the start of the current
 * round: the aggregators ({@linkcode aggregatorStateSource}) or the
 * checkpoint keepers (actors/keeper_source.ts).
 */
export interface StartStateSource {
  /**
   * θ of `shard` at the start of the source's current round, in an array the
   * trainer may keep and write (it applies later updates to it in place): a
   * source hands out a copy, never an array it goes on using.
   */
  startState(
    ctx: ActorContext,
    view: ViewMsg,
    options: { shard: number; seed?: Float32Array },
  ): Promise<StateMsg>;
}

/** The {@linkcode StartStateSource} the aggregators serve (`state_request`). */
export const aggregatorStateSource: StartStateSource = {
  async startState(ctx, view, options) {
    const owner = view.shards[options.shard].aggregator;
    const reply = await ctx.system.ref(owner).ask<unknown>(
      {
        type: "state_request",
        run: view.run,
        shard: options.shard,
        ...(options.seed ? { seed: options.seed } : {}),
      },
      { timeoutMs: 30_000 },
    );
    const msg = validateRunMessage(reply);
    if (msg.type !== "state") {
      throw new Error(
        `Cannot fetch start state of shard ${options.shard} from ${owner}: ${
          (reply as { error?: string }).error ?? msg.type
        }`,
      );
    }
    return msg;
  },
};
