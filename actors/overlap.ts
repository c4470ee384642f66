/**
 * The overlapped outer step: how a trainer goes on training while its
 * round's pseudo-gradient is on the network, and how the round's global
 * update is merged into its running parameters once it arrives.
 *
 * Three vectors, per trainer:
 * - θ_r, the global parameters of round r: the same bits on every trainer
 *   and aggregator (the trainer actor applies the aggregators' int8 updates
 *   to its copy with {@linkcode applyUpdate}; the run hashes it).
 * - the running parameters: what the trainer's Worker trains, its own.
 * - Δ_r = θ_r − (running parameters at the end of round r's inner phase),
 *   the pseudo-gradient it sends (fp32 on the GPU, int8 on the wire).
 *
 * Blocking (the classic design): the trainer waits for θ_{r+1} and restarts
 * its running parameters from it. Overlapped: it sends Δ_r and goes straight
 * on with round r+1's inner steps from its running parameters; when θ_{r+1}
 * arrives, between two inner steps, the local move of round r is replaced by
 * the global one:
 *
 *   running ← running + ((θ_{r+1} − θ_r) + Δ_r)
 *
 * which is θ_{r+1} + (the steps taken since round r's end): the running
 * parameters after the merge are exactly what they would be had the trainer
 * restarted from θ_{r+1} and taken those steps, except that the gradients of
 * the steps before the merge were taken at the older point. Round r+1's
 * pseudo-gradient is then measured against θ_{r+1}, like a blocking
 * trainer's. A trainer waits only at the end of round r+1's inner phase, and
 * only if θ_{r+1} has still not arrived (it is more than one round behind).
 * AdamW's moments are kept throughout, as they are across blocking rounds.
 *
 * With fragments (actors/fragments.ts), the same merge runs on the ranges
 * the round synchronised; the rest of the running parameters stay local.
 *
 * @module
 */

/** How the outer step meets the inner steps. */
export type SyncMode = "blocking" | "overlapped";

/** The sync modes, in the order `--help` lists them. */
export const SYNC_MODES: readonly SyncMode[] = ["blocking", "overlapped"];

/**
 * Checks a sync mode; the RangeError names `what` (a flag or a field).
 *
 * @example
 * ```ts
 * import { checkSync } from "./overlap.ts";
 * console.log(checkSync("overlapped", "--sync")); // "overlapped"
 * ```
 */
export function checkSync(mode: unknown, what = "sync"): SyncMode {
  if (!SYNC_MODES.includes(mode as SyncMode)) {
    throw new RangeError(
      `Invalid ${what}: expected ${SYNC_MODES.join(" or ")}, got ${JSON.stringify(mode)}`,
    );
  }
  return mode as SyncMode;
}

/**
 * The default bound τ on how many inner steps of round r+1 may run before
 * round r's update is merged: a fifth of a round. A trainer whose update has
 * not arrived by then waits for it, so the steps taken at the older point,
 * and what they cost the loss, stay bounded whatever the network does. The
 * experiment (README, "Overlapped outer step") measured the cost growing with
 * τ: at H = 10, τ = 2 kept the eval loss within 1% of blocking, τ = 5 and
 * τ = 10 did not.
 */
export function defaultOverlapSteps(innerSteps: number): number {
  return Math.max(1, Math.ceil(innerSteps / 5));
}

/**
 * The sync mode of a run that names none: overlapped. It holds the loss
 * (+0.85% of blocking over three seeds at the default τ, README "Overlapped
 * outer step"), keeps every round's θ hashes equal, and the fault suite's
 * kill, partition and chaos faults pass with it; blocking is one flag away
 * (`--sync blocking`). A trainer actor given no mode by its caller blocks:
 * the default belongs to the run's settings, which every trainer of a run
 * gets through {@linkcode syncOptions}.
 */
export const DEFAULT_SYNC: SyncMode = "overlapped";

/**
 * A run's sync mode (the default when it names none) and fragments as
 * trainer options (fragments and τ absent when defaults).
 *
 * @example
 * ```ts
 * import { syncOptions } from "./overlap.ts";
 * console.log(syncOptions({}).sync); // "overlapped"
 * console.log(syncOptions({ sync: "blocking" }).sync); // "blocking"
 * ```
 */
export function syncOptions(
  s: { sync?: SyncMode; fragments?: number; overlapSteps?: number },
): { sync: SyncMode; fragments?: number; overlapSteps?: number } {
  return {
    sync: s.sync ?? DEFAULT_SYNC,
    ...(s.fragments !== undefined ? { fragments: s.fragments } : {}),
    ...(s.overlapSteps !== undefined ? { overlapSteps: s.overlapSteps } : {}),
  };
}

/**
 * Whether trainers keep their running parameters across rounds (overlapped,
 * or fragments: a round replaces only part of them) instead of restarting
 * from θ_r every round.
 */
export function keepsRunning(s: { sync?: SyncMode; fragments?: number }): boolean {
  return s.sync === "overlapped" || (s.fragments ?? 1) > 1;
}

/**
 * The data position the report of round `round` carries, from the
 * positions after each inner phase by round: that of the latest phase of
 * `round` or before, not of a later one (overlapped, phase r+1 may be over
 * before round r's update comes; a run resumed at r+1 from its position
 * would skip a round's data). Positions of older phases are dropped.
 *
 * @example
 * ```ts
 * import { reportCursor } from "./overlap.ts";
 * const at = (step: number) => ({ seed: 1, shard: { index: 0, count: 16 }, step });
 * const cursors = new Map([[3, at(40)], [4, at(50)]]);
 * console.log(reportCursor(cursors, 3)?.step); // 40
 * ```
 */
export function reportCursor<C>(cursors: Map<number, C>, round: number): C | undefined {
  const at = Math.max(-1, ...[...cursors.keys()].filter((k) => k <= round));
  for (const k of [...cursors.keys()]) if (k < at) cursors.delete(k);
  return cursors.get(at);
}

/** The merge's TypeScript twin (the Worker runs kernels/overlap_merge.ts on the GPU). */
export { mergeRangeRef as mergeRange } from "../kernels/overlap_merge.ts";
