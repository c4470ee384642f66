/**
 * Fault suite, a whole node process SIGKILLed: a network run with two
 * in-process trainer nodes and a third trainer node in its own process
 * (tests/_fault_node.ts) on real WebSockets. Once the process contributes, it
 * is killed with SIGKILL in the middle of a round; the tracker evicts it and
 * rounds go on without it; a new process with the same node name comes back
 * and contributes again. Every round closed once, θ equal on every trainer
 * (the process's θ hashes reach the monitor over the wire), and the loss at
 * the end within 5% of a fault-free run with the same seed.
 */
import { deepEqual, ok } from "@std/assert";
import { FaultRun } from "./_fault_run.ts";
import { faultSeed } from "./_fault_plan.ts";

const NODE_MAIN = new URL("./_fault_node.ts", import.meta.url).pathname;

function startNode(node: string, host: string, tracker: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", NODE_MAIN, "--node", node, "--host", host, "--tracker", tracker],
    stdout: "null",
    stderr: "null",
  }).spawn();
  return child;
}

Deno.test({
  name: "fault suite (process): a trainer node SIGKILLed mid-round is evicted and comes back",
  async fn() {
    const seed = faultSeed("fault_process", 44);
    const run = await FaultRun.start({
      seed,
      trainers: 2,
      rounds: 0,
      innerSteps: 3,
      network: true,
    });
    const children: Deno.ChildProcess[] = [];
    const path = "p0/node/trainer";
    const waitFor = async (what: string, pred: () => boolean, ms = 120_000) => {
      for (let i = 0; i < ms / 100 && !pred(); i++) await run.sleep(100);
      ok(pred(), `timed out waiting for ${what}; log tail:\n${run.lines.slice(-20).join("\n")}`);
    };
    const withP0 = () => run.monitor.rounds.filter((r) => r.contributors.includes(path));
    let final: { loss: number; round: number };
    try {
      children.push(startNode("p0", run.hostListener!.url, run.trackerListener!.url));
      await waitFor("the process to contribute", () => withP0().length >= 2);
      // Kill it while the next round's inner steps run.
      await run.roundDone(run.monitor.rounds.length);
      children[0].kill("SIGKILL");
      await children[0].status;
      run.log("p0 killed with SIGKILL");
      const killedAt = run.monitor.rounds.length;
      await waitFor("the eviction", () => run.lines.some((l) => l.includes(`evicted ${path}`)));
      await waitFor(
        "rounds without p0",
        () =>
          run.monitor.rounds.filter((r) => r.round > killedAt && !r.contributors.includes(path))
            .length >= 2,
      );
      // The node comes back (a new process, same name) and contributes again.
      const before = withP0().length;
      children.push(startNode("p0", run.hostListener!.url, run.trackerListener!.url));
      await waitFor("p0 back", () => withP0().length >= before + 2);
      await run.roundDone(run.monitor.rounds.length + 1);
      final = await run.evalLoss();
      deepEqual(run.violations(), []);
      const after = run.monitor.rounds.at(-1)!;
      ok(after.contributors.includes(path), `p0 contributes at the end: ${after.contributors}`);
    } finally {
      for (const c of children) {
        try {
          c.kill("SIGKILL");
        } catch { /* already gone */ }
        await c.status;
      }
      await run.close();
    }
    const clean = await FaultRun.start({
      seed,
      trainers: 3,
      rounds: final.round,
      innerSteps: 3,
      network: true,
    });
    try {
      await clean.roundDone(final.round - 1, 300_000);
      const cleanLoss = (await clean.evalLoss()).loss;
      deepEqual(clean.violations(), []);
      const rel = Math.abs(final.loss - cleanLoss) / cleanLoss;
      console.log(
        `fault_process: ${final.round} rounds, loss ${final.loss.toFixed(4)} vs fault-free ${
          cleanLoss.toFixed(4)
        }`,
      );
      ok(rel < 0.05, `final loss ${final.loss} vs fault-free ${cleanLoss}`);
    } finally {
      await clean.close();
    }
  },
});
