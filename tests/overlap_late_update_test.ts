/**
 * An overlapped trainer asked to evaluate while its round's update is late.
 *
 * Overlapped, a trainer that sent round r goes on with round r+1 and its
 * Worker waits at step τ for round r's merge. An evaluation asked for then
 * (the dashboard asks after every round) must still be answered: queued
 * behind the waiting phase, the trainer actor awaiting it took no update, so
 * the merge never came; its heartbeats stopped too, the tracker evicted it
 * and the run stalled (a browser tab closed mid-round made that round late
 * every time, tests/browser_join_test.ts).
 *
 * Here the update is late because the other trainer stalls in its inner
 * phase and the round waits for both (quorum 1). The evaluation must be
 * answered, with the open round's θ, and the run must finish every round
 * with both trainers, equal θ hashes and no eviction.
 *
 * Slow (two Workers compile shaders): run alone with
 * `deno test -A tests/overlap_late_update_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";
import { startRunHost } from "../actors/host.ts";
import type { RunEvent } from "../actors/monitor.ts";

interface TrainerStatus {
  round: number;
  awaiting: boolean;
}
interface AggregatorStatus {
  shards: { round: number; received: string[]; missing: string[] }[];
}

Deno.test({
  name: "overlapped: a trainer evaluates while its round's update is late, and the rounds go on",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const rounds = 5;
    const events: RunEvent[] = [];
    const host = await startRunHost({
      run: "late-update",
      config: "tiny",
      rounds,
      // τ = 1 of 2: round r+1's phase waits for round r's merge after one step.
      innerSteps: 2,
      sync: "overlapped",
      outer: { lr: 1, momentum: 0 },
      localTrainers: 2,
      quorum: 1,
      emit: (e) => events.push(e),
    });
    try {
      const [fast, slow] = host.trainerPaths;
      const ask = <T>(path: string, msg: unknown) =>
        host.system.ref(path).ask<T>(msg, { timeoutMs: 60_000 });
      await host.monitor.roundEmitted(0);
      // The slow trainer holds its next inner phase long after the fast one sent the same round.
      host.system.ref(slow).tell({ type: "worker_fault", kind: "stall", atStep: 1, ms: 10_000 });
      // It takes the fault at its next inner phase: round 2 (phase 1 started with round 0's
      // update). Wait until round 2 or later is open, sent by the fast trainer only.
      let open = -1;
      while (open < 0) {
        if (host.monitor.rounds.length >= rounds) {
          throw new Error("The run ended before a round waited on the stalled trainer");
        }
        const [f, s, a] = await Promise.all([
          ask<TrainerStatus>(fast, { type: "status" }),
          ask<TrainerStatus>(slow, { type: "status" }),
          ask<AggregatorStatus>(host.aggregatorPaths[0], { type: "status" }),
        ]);
        const r = a.shards[0]?.round ?? -1;
        const waiting = r >= 2 && a.shards[0].received.includes(fast) &&
          a.shards[0].missing.includes(slow);
        if (waiting && f.awaiting && f.round === r && s.round === r && !s.awaiting) open = r;
        else await new Promise((r) => setTimeout(r, 20));
      }
      // The fast trainer's Worker waits for round `open`'s merge: evaluate now.
      const evaluated = await ask<{ loss: number; round: number }>(fast, {
        type: "eval",
        maxWindows: 4,
      });
      ok(Number.isFinite(evaluated.loss), `eval loss ${evaluated.loss}`);
      equal(evaluated.round, open, "the evaluation took the open round's θ");
      await host.monitor.done;
      const rs = events.filter((e) => e.event === "round");
      deepEqual(rs.map((e) => e.round), [...Array(rounds).keys()]);
      for (const e of rs) {
        equal(e.trainers, 2, `round ${e.round}: ${e.contributors}`);
        equal(e.theta_hashes.length, 2, `round ${e.round}: both trainers reported`);
        equal(new Set(e.theta_hashes).size, 1, `round ${e.round}: ${e.theta_hashes}`);
      }
      const logs = events.filter((e) => e.event === "log").map((e) => String(e.message));
      ok(!logs.some((l) => l.includes("evicted")), logs.join("\n"));
    } finally {
      await host.shutdown();
    }
  },
});
