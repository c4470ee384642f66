/**
 * `runs/<name>/latest/model.safetensors` written by a real (tiny, short)
 * embedded run — trainers in Workers, aggregator, two checkpoint keepers —
 * holds the run's final θ bit for bit, and `deno task eval` on it agrees with
 * the independent numpy GPT-2 of tests/gpt2_reference.py.
 *
 * Slow-ish (Workers compile shaders, two extra processes): run alone with
 * `deno test -A tests/run_latest_gpt2_test.ts`.
 */
import { equal, ok } from "@std/assert";
import { assertEvalAgreesWithNumpy } from "./_numpy_gpt2.ts";
import { runEmbedded } from "../actors/embedded.ts";
import type { RunEvent } from "../actors/monitor.ts";
import { resumeRunDir } from "../checkpoint/resume.ts";
import { CheckpointStore } from "../checkpoint/store.ts";

Deno.test({
  name: "embedded run: latest/model.safetensors is the final θ and numpy GPT-2 agrees with eval",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "run_latest_" });
    try {
      const runDir = `${dir}/runs/demo`;
      const events: RunEvent[] = [];
      const rounds = 2;
      await runEmbedded({
        run: "demo",
        config: "tiny",
        trainers: 2,
        rounds,
        innerSteps: 3,
        outer: { lr: 0.7, momentum: 0.9 },
        evalWindows: 8,
        timeoutMs: 120_000,
        checkpoint: { dir: runDir, keepers: 2 },
        emit: (e) => events.push(e),
      });
      const rs = events.filter((e) => e.event === "round");
      equal(rs.length, rounds);
      const finalHash = rs.at(-1)!.theta_hashes[0];
      const commits = events.filter((e) => e.event === "committed");
      ok(commits.some((c) => c.round === rounds && c.params_hash === finalHash), "final commit");
      for (const c of commits) equal(c.holders.length, 2, `holders of round ${c.round}`);
      // latest -> a keeper's store, at the final round, verifying.
      const target = await Deno.readLink(`${runDir}/latest`);
      ok(target.endsWith(`/rounds/${rounds}`), target);
      const keeper = `${runDir}/${target.split("/rounds/")[0]}`;
      equal((await new CheckpointStore(keeper).verify(rounds)).params_hash, finalHash);
      const resumed = await resumeRunDir(runDir);
      equal(resumed.round, rounds);
      equal(resumed.paramsHash, finalHash);
      equal(Object.keys(resumed.cursors ?? {}).length, 2, "a data cursor per trainer");

      await assertEvalAgreesWithNumpy(`${runDir}/latest/model.safetensors`, dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
