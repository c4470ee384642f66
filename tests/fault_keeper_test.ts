/**
 * Fault suite, checkpoint keepers inside a real embedded run: three keepers
 * (under a supervisor) fed by the aggregator through a KeeperFeedSlot, with
 * a commit coordinator. Injected: one keeper's disk full (every write fails
 * with ENOSPC) for a while, another's rename failing with EIO in the middle
 * of a round's write, and an exception in a third keeper. The run never
 * waits on a keeper: rounds go on; failures are reported with their code;
 * the crashed keeper is restarted; rounds keep being committed (two
 * replicas) after the disks heal; and every committed round still on a
 * holder's disk verifies (file hashes against the manifest).
 */
import { deepEqual, ok } from "@std/assert";
import { FaultRun } from "./_fault_run.ts";
import { faultSeed, scheduleRandom } from "./_fault_plan.ts";
import { Supervisor } from "../actors/runtime/supervisor.ts";
import { keeperBehavior, type KeeperEvent } from "../actors/keeper.ts";
import { commitCoordinatorBehavior, type CommitEvent } from "../actors/keeper_commit.ts";
import { KeeperFeedSlot } from "../actors/keeper_feed.ts";
import { CheckpointStore, denoFs, type StoreFs } from "../checkpoint/store.ts";
import { getConfig } from "../kernels/config.ts";

function failing(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

Deno.test({
  name: "fault suite (keepers): disk full, write failure mid-commit, keeper exception",
  async fn() {
    const seed = faultSeed("fault_keeper", 33);
    const random = scheduleRandom(seed, "keeper");
    const keepers = ["host/keepers/0", "host/keepers/1", "host/keepers/2"];
    const dirs = await Promise.all(
      keepers.map(() => Deno.makeTempDir({ prefix: "fault_keeper_" })),
    );
    const commits: CommitEvent[] = [];
    const events: KeeperEvent[] = [];
    // Switchable faults per keeper's file system.
    let diskFull = false;
    let renameFailures = 0;
    const fsOf = (i: number): StoreFs => ({
      ...denoFs,
      writeFile: (path, bytes) =>
        i === 1 && diskFull
          ? Promise.reject(failing("ENOSPC", "No space left on device (os error 28)"))
          : denoFs.writeFile(path, bytes),
      rename: (from, to) => {
        // A round's files are written, then the rename into place fails.
        if (i === 2 && renameFailures > 0 && from.includes("tmp")) {
          renameFailures--;
          return Promise.reject(failing("EIO", "Input/output error (os error 5)"));
        }
        return denoFs.rename(from, to);
      },
    });
    let system: ReturnType<FaultRun["system"]> | undefined;
    const slot = new KeeperFeedSlot(
      {
        get system() {
          return system!;
        },
        run: "fault-run",
        keepers,
        config: getConfig("tiny").model,
      } as ConstructorParameters<typeof KeeperFeedSlot>[0],
    );
    const run = await FaultRun.start({ seed, trainers: 2, rounds: 0, innerSteps: 3, slot });
    const restarts: Record<string, number> = {};
    try {
      system = run.system("host");
      await system.spawn(
        commitCoordinatorBehavior({ run: "fault-run", keepers, onEvent: (e) => commits.push(e) }),
        { name: "commit" },
      );
      await system.spawn(
        new Supervisor({
          intensity: 10,
          periodMs: 60_000,
          children: keepers.map((id, i) => ({
            id: String(i),
            start: () =>
              keeperBehavior({
                run: "fault-run",
                id,
                dir: dirs[i],
                config: getConfig("tiny").model,
                coordinator: "host/commit",
                peers: keepers,
                fs: fsOf(i),
                ackIntervalMs: 200,
                onEvent: (e) => events.push(e),
              }),
          })),
          onEvent: (e) => {
            if (e.type === "restarted") restarts[e.child] = (restarts[e.child] ?? 0) + 1;
          },
        }),
        { name: "keepers", shutdownMs: Infinity },
      );
      const committed = () =>
        commits.filter((c) => c.type === "committed").map((c) => c.round as number);
      const waitFor = async (what: string, pred: () => boolean) => {
        for (let i = 0; i < 600 && !pred(); i++) await run.sleep(100);
        ok(pred(), `timed out waiting for ${what}; log tail:\n${run.lines.slice(-20).join("\n")}`);
      };
      await waitFor("a first commit", () => committed().length > 0);
      // Disk full on keeper 1 for a while (a seeded number of rounds).
      const from = run.monitor.rounds.length;
      diskFull = true;
      await run.roundDone(from + 3 + Math.floor(random() * 4));
      await waitFor(
        "ENOSPC reported",
        () => commits.some((c) => c.type === "write_failed" && c.code === "ENOSPC"),
      );
      // Keeper 2's next rename fails mid-commit, while keeper 1's disk is still full.
      renameFailures = 1;
      await waitFor(
        "EIO reported",
        () => commits.some((c) => c.type === "write_failed" && c.code === "EIO"),
      );
      const whileFailing = run.monitor.rounds.length;
      diskFull = false;
      // An exception inside keeper 0.
      run.tell("host/keepers/0", { type: "crash", reason: "injected" });
      await waitFor("keeper 0 restarted", () => (restarts["0"] ?? 0) >= 1);
      // After healing, new rounds are committed again.
      await waitFor(
        "a commit after the disks healed",
        () => committed().some((r) => r > whileFailing + 2),
      );
      const end = run.monitor.rounds.length;
      await run.roundDone(end + 2);
      deepEqual(run.violations(), []);
      ok(run.monitor.rounds.length > whileFailing + 2, "rounds went on");
      // Every committed round a holder still keeps verifies. Stop the run first: running
      // keepers may prune a round (retention) between the listing and the read.
      await run.close();
      let verified = 0;
      for (const c of commits) {
        if (c.type !== "committed") continue;
        for (const holder of c.holders) {
          const store = new CheckpointStore(dirs[keepers.indexOf(holder)]);
          if (!(await store.rounds()).includes(c.round)) continue; // pruned by retention
          const m = await store.verify(c.round);
          ok(m.params_hash === c.params_hash, `round ${c.round} on ${holder}: hash`);
          verified++;
        }
      }
      ok(verified >= 2, `verified ${verified} committed replicas`);
      const failed = events.filter((e) => e.type === "write_failed").map((e) => e.code);
      ok(failed.includes("ENOSPC") && failed.includes("EIO"), JSON.stringify(failed));
      console.log(
        `fault_keeper: ${run.monitor.rounds.length} rounds, ${committed().length} commits, ` +
          `${verified} replicas verified, write failures ${JSON.stringify(failed)}`,
      );
    } finally {
      await run.close();
      for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
    }
  },
});
