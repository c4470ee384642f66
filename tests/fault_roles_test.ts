/**
 * Fault suite, embedded run (every actor in one process, trainers in Workers
 * on WebGPU): an exception in each actor role, a compute Worker killed, the
 * GPU device lost, a straggler, and hostile or broken contributions (NaN,
 * Inf, wrong shape, stale round, replay of an old round, a duplicated send,
 * ×1000, sign-flipped), each at a scheduled round. After the run: every
 * round closed once and in order, θ bit-identical on every trainer at every
 * round, no contribution counted twice, each failed actor restarted, each
 * bad contribution refused by name, and the final loss within 5% of a
 * fault-free run with the same seed.
 */
import { deepEqual, ok } from "@std/assert";
import type { ScheduledFault } from "./_fault_inject.ts";
import { faultSeed } from "./_fault_plan.ts";
import { runWithFaults } from "./_fault_compare.ts";

Deno.test({
  name: "fault suite (embedded): role crashes, worker and device loss, hostile updates",
  async fn() {
    const seed = faultSeed("fault_roles", 11);
    const faults: ScheduledFault[] = [
      { afterRound: 0, kind: "tracker_crash" },
      { afterRound: 1, kind: "nan_update", target: 0 },
      // Lands while the round's contributions are coming in.
      { afterRound: 1, kind: "aggregator_crash", delayMs: 150 },
      { afterRound: 2, kind: "device_lost", target: 1 },
      { afterRound: 3, kind: "wrong_shape", target: 2 },
      { afterRound: 3, kind: "inf_update", target: 0 },
      { afterRound: 4, kind: "stale_round", target: 0 },
      { afterRound: 4, kind: "replay_old_round", target: 2 },
      { afterRound: 5, kind: "duplicate_send", target: 2 },
      { afterRound: 5, kind: "trainer_crash", target: 0 },
      { afterRound: 6, kind: "worker_exit", target: 2 },
      { afterRound: 7, kind: "scaled_update", target: 1 },
      { afterRound: 8, kind: "straggler", target: 2 },
      { afterRound: 9, kind: "sign_flip", target: 1 },
    ];
    const { run, injected, final, cleanLoss, clean } = await runWithFaults(
      { seed, trainers: 3, innerSteps: 3 },
      faults,
    );
    deepEqual(run.violations(), []);
    deepEqual(clean.violations(), []);
    ok(run.monitor.rounds.length >= final.round, "every round up to the end closed");
    const t = run.trainerPaths;
    const by = run.restarts;
    ok(by.tracker >= 1, `tracker restarted: ${JSON.stringify(by)}`);
    ok(by["aggregator:0"] >= 1, `aggregator restarted: ${JSON.stringify(by)}`);
    ok(by["trainer:0"] >= 1, `trainer 0 (exception) restarted: ${JSON.stringify(by)}`);
    ok(by["trainer:1"] >= 1, `trainer 1 (device lost) restarted: ${JSON.stringify(by)}`);
    ok(by["trainer:2"] >= 1, `trainer 2 (worker exit) restarted: ${JSON.stringify(by)}`);
    const refused = (reason: string, trainer: string) =>
      run.rejections.some((r) => r.reason === reason && r.trainer === trainer);
    const rej = JSON.stringify(run.rejections.map((r) => `${r.reason} ${r.trainer} ${r.round}`));
    ok(refused("non_finite", t[0]), `NaN and Inf refused: ${rej}`);
    ok(run.rejections.filter((r) => r.reason === "non_finite").length >= 2, rej);
    ok(refused("wrong_shape", t[2]) || refused("malformed", t[2]), `wrong shape: ${rej}`);
    ok(refused("stale_round", t[0]), `stale round: ${rej}`);
    ok(refused("stale_round", t[2]), `replayed old round: ${rej}`);
    ok(refused("duplicate", t[2]), `duplicate send: ${rej}`);
    ok(refused("absurd_norm", t[1]), `×1000 update: ${rej}`);
    // The straggler missed at least one round's deadline; the rounds closed without it.
    ok(
      run.monitor.rounds.some((r) => r.missing.includes(t[2]) && r.round >= 8),
      "a round closed at its deadline without the straggler",
    );
    // The sign flip is not detectable by norm: accepted, its weight bounded by 1/n.
    ok(
      !refused("absurd_norm", t[1]) || run.rejections.filter((r) => r.trainer === t[1]).length >= 1,
    );
    const rel = Math.abs(final.loss - cleanLoss) / cleanLoss;
    console.log(
      `fault_roles: ${injected.length} faults, ${final.round} rounds, loss ${
        final.loss.toFixed(4)
      } ` +
        `vs fault-free ${cleanLoss.toFixed(4)}`,
    );
    ok(
      rel < 0.05,
      `final loss ${final.loss} vs fault-free ${cleanLoss} (${(rel * 100).toFixed(2)}%)`,
    );
  },
});
