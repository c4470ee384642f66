/**
 * Which node a run message speaks for: the trainer a contribution or report
 * names, the member a join, heartbeat or leave names, the keeper a keeper
 * message names. The host's transport refuses a message from a peer that
 * names a path on another node (`ActorTransportOptions.claims`), so that a
 * peer holding a valid key cannot contribute, report or keep for another.
 *
 * @module
 */

/** The identity field of each message type that speaks for its sender. */
const SENDER_FIELD: Record<string, "node" | "trainer" | "keeper"> = {
  join: "node",
  leave: "node",
  heartbeat: "node",
  round_closed: "node",
  contribution: "trainer",
  trainer_report: "trainer",
  keeper_hello: "keeper",
  keeper_ack: "keeper",
  keeper_failed: "keeper",
  keeper_manifest: "keeper",
  keeper_missing: "keeper",
};

/**
 * The paths a run message claims to come from (empty for messages that name
 * no sender). A reply from the tracker names the joiner (`join_reply`): only
 * the types above speak for their sender.
 *
 * @example
 * ```ts
 * import { runMessageClaims } from "./run_identity.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(runMessageClaims({ type: "contribution", trainer: "t-1/node/trainer" }), [
 *   "t-1/node/trainer",
 * ]);
 * assert.deepEqual(runMessageClaims({ type: "join_reply", node: "t-1/node/trainer" }), []);
 * ```
 */
export function runMessageClaims(payload: unknown): string[] {
  if (payload === null || typeof payload !== "object") return [];
  const m = payload as Record<string, unknown>;
  const field = typeof m.type === "string" && Object.hasOwn(SENDER_FIELD, m.type)
    ? SENDER_FIELD[m.type]
    : undefined;
  const claimed = field === undefined ? undefined : m[field];
  return typeof claimed === "string" ? [claimed] : [];
}
