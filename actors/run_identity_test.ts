import { deepEqual } from "@std/assert";
import { runMessageClaims } from "./run_identity.ts";

Deno.test("run identity: senders' own messages claim their path, replies and views claim none", () => {
  const to = "host/run/tracker/tracker";
  deepEqual(runMessageClaims({ type: "join", node: "t-1/node/trainer" }, to), ["t-1/node/trainer"]);
  deepEqual(runMessageClaims({ type: "heartbeat", node: "t-1/node/trainer" }, to), [
    "t-1/node/trainer",
  ]);
  deepEqual(runMessageClaims({ type: "trainer_report", trainer: "t-1/node/trainer" }, to), [
    "t-1/node/trainer",
  ]);
  deepEqual(runMessageClaims({ type: "keeper_manifest", keeper: "k-1/node/keeper" }, to), [
    "k-1/node/keeper",
  ]);
  // A request carries no sender; a reply names the asker; a malformed field claims nothing.
  deepEqual(runMessageClaims({ type: "keeper_manifest", run: "r" }, to), []);
  deepEqual(runMessageClaims({ type: "join_reply", node: "t-1/node/trainer" }, to), []);
  deepEqual(runMessageClaims({ type: "view", trainers: ["a/b"] }, to), []);
  deepEqual(runMessageClaims({ type: "contribution", trainer: 7 }, to), []);
  deepEqual(runMessageClaims("status", to), []);
});

Deno.test("run identity: faults, ticks and an actor's own messages speak for the target's node", () => {
  const to = "host/run/trainers/0";
  deepEqual(runMessageClaims({ type: "crash", reason: "x" }, to), [to]);
  deepEqual(runMessageClaims({ type: "tick" }, to), [to]);
  deepEqual(runMessageClaims({ type: "_state", theta: new Float32Array(1) }, to), [to]);
});
