/**
 * Which node a run message speaks for: the trainer a contribution or report
 * names, the member a join, heartbeat or leave names, the keeper a keeper
 * message names. The host's transport refuses a message from a peer that
 * speaks for a path on another node (`ActorTransportOptions.claims`), so
 * that a peer holding a valid key cannot contribute, report or keep for
 * another, nor crash or drive another node's actors.
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
 * Whether a message type is one that only a node sends to its own actors:
 * injected faults (`crash`), timer ticks, and the `_`-prefixed messages an
 * actor sends itself (a trainer's `_state` carries the θ it adopts).
 */
function isLocalOnly(type: string): boolean {
  return type === "crash" || type === "tick" || type.startsWith("_");
}

/**
 * The paths a run message to `to` claims to come from (empty for messages
 * that name no sender). A reply from the tracker names the joiner
 * (`join_reply`): only the types above speak for their sender. A local-only
 * message speaks for its target's own node, so no other node may send it.
 *
 * @example
 * ```ts
 * import { runMessageClaims } from "./run_identity.ts";
 * import assert from "node:assert/strict";
 * const to = "host/run/aggregators/0";
 * assert.deepEqual(runMessageClaims({ type: "contribution", trainer: "t-1/node/trainer" }, to), [
 *   "t-1/node/trainer",
 * ]);
 * assert.deepEqual(runMessageClaims({ type: "join_reply", node: "t-1/node/trainer" }, to), []);
 * assert.deepEqual(runMessageClaims({ type: "crash", reason: "x" }, to), [to]);
 * ```
 */
export function runMessageClaims(payload: unknown, to: string): string[] {
  if (payload === null || typeof payload !== "object") return [];
  const m = payload as Record<string, unknown>;
  if (typeof m.type !== "string") return [];
  if (isLocalOnly(m.type)) return [to];
  const field = Object.hasOwn(SENDER_FIELD, m.type) ? SENDER_FIELD[m.type] : undefined;
  const claimed = field === undefined ? undefined : m[field];
  return typeof claimed === "string" ? [claimed] : [];
}
