/**
 * Several processes on loopback, real WebSockets: a host (tracker,
 * aggregator) and three `--join`ed trainers train together; a fourth joins
 * mid-run and contributes from a later round without anyone waiting for its
 * start-up; one trainer process is killed with SIGKILL, is evicted, and the
 * run goes on with no round lost or repeated. A node with the wrong secret
 * cannot join. GET /status answers on the host's port. The run exchanges
 * top-5% both ways (`--exchange`, `--update-exchange`), so the sparse codes
 * and the aggregator's sparse update cross real sockets, joiners and all.
 *
 * Slow (five processes, each compiling shaders): run alone with
 * `deno test -A tests/run_multiprocess_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";
import { type NodeProcess, startNode } from "./_node_process.ts";

type Proc = NodeProcess;
const start = (args: string[]) => startNode(args, { timeoutMs: 180_000 });

Deno.test({
  name:
    "host plus joined trainers: a late joiner contributes, a killed trainer is evicted, no round lost",
  async fn() {
    const port = 7900 + Math.floor(Math.random() * 90);
    const url = `ws://127.0.0.1:${port}`;
    const rounds = 14;
    // Checkpoints go to a temporary folder, not the default runs/<run id>.
    const runDir = await Deno.makeTempDir({ prefix: "run_multiprocess_" });
    const host = start([
      "--run-dir",
      runDir,
      "--host",
      `127.0.0.1:${port}`,
      "--secret",
      "s3cret",
      "--min-trainers",
      "3",
      "--rounds",
      String(rounds),
      "--config",
      "tiny",
      "--inner-steps",
      "40",
      "--exchange",
      "topk:0.05",
      "--update-exchange",
      "topk:0.05",
    ]);
    const procs: Proc[] = [host];
    try {
      await host.waitFor((l) => String(l.message ?? "").startsWith("hosting run"), "the host");
      const joiners = [0, 1, 2].map(() => start(["--join", url, "--secret", "s3cret"]));
      procs.push(...joiners);
      // A node with the wrong secret is refused and exits non-zero.
      const bad = start(["--join", url, "--secret", "wrong"]);
      const badStatus = await bad.done;
      equal(badStatus.code, 1);
      ok(bad.lines.some((l) => /Cannot join run.*authentication failed/i.test(String(l.message))));

      const isRound = (l: Record<string, unknown>) => l.event === "round";
      await host.waitFor((l) => isRound(l) && l.round === 1, "round 1");
      const status = await (await fetch(`http://127.0.0.1:${port}/status`)).json();
      equal(status.run, "run");
      ok(status.members.some((m: { roles: string[] }) => m.roles.includes("aggregator")));
      equal(
        status.members.filter((m: { roles: string[] }) => m.roles.includes("trainer")).length,
        3,
      );

      // A fourth trainer joins mid-run.
      const late = start(["--join", url, "--secret", "s3cret"]);
      procs.push(late);
      const lateJoined = await late.waitFor(
        (l) => String(l.message ?? "").startsWith("joined run"),
        "the late joiner",
      );
      const lateId = String(lateJoined.message).split(" as ")[1];
      const firstWith = await host.waitFor(
        (l) => isRound(l) && (l.contributors as string[]).includes(lateId),
        "a round with the late joiner",
      );
      ok((firstWith.round as number) >= 2);
      // Kill one of the first trainers outright.
      joiners[0].child.kill("SIGKILL");
      const killedAt = host.lines.filter(isRound).length;
      await host.waitFor((l) => String(l.message ?? "").includes("evicted"), "the eviction");
      const done = await host.waitFor((l) => l.event === "done", "the end of the run");
      const rs = host.lines.filter(isRound);
      // Every round closed exactly once, in order.
      deepEqual(rs.map((r) => r.round), [...Array(rounds).keys()]);
      for (const r of rs) {
        equal(new Set(r.theta_hashes as string[]).size, 1, `round ${r.round}`);
      }
      // The late joiner contributed in every round after its first one, up to the end.
      for (const r of rs.filter((r) => (r.round as number) >= (firstWith.round as number))) {
        ok((r.contributors as string[]).includes(lateId), `round ${r.round}: ${r.contributors}`);
      }
      // Rounds went on after the kill, without the killed trainer.
      const after = rs.slice(killedAt + 2);
      ok(after.length > 0, "rounds after the eviction");
      for (const r of after) equal(r.trainers, 3, `round ${r.round}: ${r.contributors}`);
      ok(done.hashes_equal);
      // The final θ's text sample (the CLI's default: 64 bytes after "The "), written by a
      // joined trainer asked over the WebSocket.
      equal(done.sample_prompt, "The ");
      ok(
        new TextEncoder().encode(String(done.final_sample)).length >= 64,
        JSON.stringify(done.final_sample),
      );
      // What a trainer downloads is the top-5% update: a fraction of the int8 one's byte a value.
      equal(done.update_exchange, "topk:0.05");
      ok(
        (done.bytes_down_per_round_per_trainer as number) < (done.params as number) / 4,
        JSON.stringify(done),
      );
      equal((await host.done).code, 0);
      // A joined trainer shows each round it applied: θ's hash the host's for that round, the
      // run's loss as the host closed it; and its totals when it leaves.
      const hashOf = new Map(rs.map((r) => [r.round, (r.theta_hashes as string[])[0]]));
      const lossOf = new Map(rs.map((r) => [r.round, r.loss as number]));
      const mine = await late.waitFor((l) => l.event === "done", "the late joiner's summary");
      const trained = late.lines.filter((l) => l.event === "trained");
      ok(trained.length >= 2, JSON.stringify(late.lines.slice(-5)));
      for (const t of trained) {
        equal(t.theta_hash, hashOf.get(t.round as number), `round ${t.round}`);
        ok(Math.abs((t.run_loss as number) - lossOf.get(t.round as number)!) < 1e-3);
        if (t.contributed) ok((t.tokens_per_s as number) > 0 && (t.loss as number) > 0);
      }
      equal(mine.rounds, trained.length);
      // The host's evaluations reach the joiner through the tracker's heartbeat acks, as they are.
      const hostEvals = new Map(
        host.lines.filter((l) => l.event === "eval").map((l) => [l.round, l]),
      );
      const heard = late.lines.filter((l) => l.event === "eval");
      ok(heard.length >= 1, JSON.stringify([...hostEvals.values()]));
      for (const e of heard) {
        const h = hostEvals.get(e.round);
        if (!h) throw new Error(`round ${e.round}: the host made no such evaluation`);
        equal(e.eval_loss, h.eval_loss);
        deepEqual(e.sample, h.sample);
      }
      equal(mine.rounds_contributed, trained.filter((t) => t.contributed).length);
      ok((mine.rounds_contributed as number) >= 1 && (mine.tokens as number) > 0);
    } finally {
      for (const p of procs) {
        try {
          p.child.kill("SIGKILL");
        } catch {
          // Already exited.
        }
        await p.done;
      }
      await Deno.remove(runDir, { recursive: true }).catch(() => {});
    }
  },
});
