/**
 * The run's start-state source served by checkpoint keepers
 * ({@linkcode keeperStateSource}): a joining trainer takes θ of the view's
 * round from the keepers (keeper_fetch.ts), falling back to another source
 * when no keeper holds it.
 *
 * @module
 */
import type { ActorContext } from "./runtime/behavior.ts";
import type { StartStateSource } from "./start_state.ts";
import type { StateMsg, ViewMsg } from "./run_protocol.ts";
import { decodeRound } from "../checkpoint/store.ts";
import { FetchError, type FetchOptions, fetchRound, listCandidates } from "./keeper_fetch.ts";

/** What a {@linkcode keeperStateSource} reports. */
export type SourceEvent =
  | {
    type: "fetched";
    round: number;
    keepers: string[];
    bytes: number;
    resumed: number;
    ms: number;
  }
  | { type: "fallback"; round: number; reason: string };

/** Options of {@linkcode keeperStateSource}. */
export interface KeeperSourceOptions {
  /** Keeper actor paths (or a function giving the current ones). */
  keepers: readonly string[] | (() => readonly string[]);
  /**
   * Where to get θ when no keeper holds the round (round 0 of a new run, or
   * keepers lagging past `waitMs`), typically the aggregators' source.
   */
  fallback?: StartStateSource;
  /** How long to wait for a keeper to get the round in flight, ms (default 5000). */
  waitMs?: number;
  /** Chunk size and retries of the fetch. */
  fetch?: Pick<FetchOptions, "chunkBytes" | "window" | "retries" | "timeoutMs" | "backoffMs">;
  /** Reports fetches and fallbacks. */
  onEvent?: (e: SourceEvent) => void;
}

/**
 * The run's start-state source served by checkpoint keepers: θ of the view's
 * round, fetched once per round (all shards share one fetch), verified
 * against the manifest bit for bit, then cut into the requested shard.
 *
 * @example
 * ```ts ignore
 * trainerBehavior({ ..., stateSource: keeperStateSource({ keepers: ["host/keepers/0"],
 *   fallback: aggregatorStateSource }) });
 * ```
 */
export function keeperStateSource(options: KeeperSourceOptions): StartStateSource {
  const cache = new Map<string, Promise<Float32Array | undefined>>();
  const keepers = () => typeof options.keepers === "function" ? options.keepers() : options.keepers;
  const waitMs = options.waitMs ?? 5000;

  const fetchTheta = async (
    ctx: ActorContext,
    view: ViewMsg,
  ): Promise<Float32Array | undefined> => {
    const deadline = performance.now() + waitMs;
    for (;;) {
      const list = keepers();
      const { candidates, missing } = await listCandidates(ctx.system, list, {
        run: view.run,
        round: view.round,
        timeoutMs: 3000,
      });
      if (candidates.length > 0) break;
      // Wait only while the round is in flight (a keeper holds the one before).
      const inFlight = missing.some((m) => m.newest === view.round - 1);
      if (!inFlight || performance.now() > deadline) {
        options.onEvent?.({
          type: "fallback",
          round: view.round,
          reason: `no keeper of ${list.length} holds round ${view.round}`,
        });
        return undefined;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const t0 = performance.now();
    const got = await fetchRound(ctx.system, keepers(), {
      run: view.run,
      round: view.round,
      paramsOnly: true,
      ...options.fetch,
    });
    const state = await decodeRound(got.manifest, got.files, { source: got.keepers.join(",") });
    options.onEvent?.({
      type: "fetched",
      round: got.round,
      keepers: got.keepers,
      bytes: got.bytes,
      resumed: got.resumed,
      ms: performance.now() - t0,
    });
    return state.params;
  };

  return {
    async startState(ctx, view, req): Promise<StateMsg> {
      const key = `${view.run}/${view.round}`;
      let p = cache.get(key);
      if (!p) {
        p = fetchTheta(ctx, view);
        cache.set(key, p);
        p.catch(() => cache.delete(key));
        for (const k of cache.keys()) if (cache.size > 2 && k !== key) cache.delete(k);
      }
      const theta = await p;
      if (!theta) {
        if (!options.fallback) {
          throw new FetchError(
            `Cannot fetch start state of round ${view.round}: no keeper holds it`,
          );
        }
        return options.fallback.startState(ctx, view, req);
      }
      if (theta.length !== view.params) {
        throw new FetchError(
          `Cannot use checkpoint round ${view.round}: it holds ${theta.length} parameters, the view ${view.params}`,
        );
      }
      const s = view.shards[req.shard];
      if (!s) throw new RangeError(`Cannot serve start state: no shard ${req.shard} in the view`);
      return {
        type: "state",
        run: view.run,
        round: view.round,
        shard: req.shard,
        theta: theta.slice(s.start, s.start + s.length),
      };
    },
  };
}
