/**
 * Whole-run resume across processes, on loopback with real WebSockets: a host
 * (tracker, aggregator, two checkpoint keepers) and two `--join`ed trainer
 * processes train; every process is killed with SIGKILL in the middle of a
 * round; `deno task node --host ... --resume DIR` and two new joiners go on
 * from the newest committed round. Checked: no round reported committed
 * before the kill is newer than the resumed round, each one still on disk
 * verifies and the newest is held by both keepers; the loaded parameters'
 * hash equals the hash recorded at its commit and the θ hash the trainers
 * reported for it; every trainer of the resumed run starts from exactly that
 * θ, with its data cursor, and the resumed run closes rounds from there with
 * bit-identical θ everywhere.
 *
 * Slow (six processes, each compiling shaders): run alone with
 * `deno test -A tests/resume_multiprocess_test.ts`.
 */
import { equal, ok } from "@std/assert";
import { CheckpointStore } from "../checkpoint/store.ts";
import { killNode, type Line, type NodeProcess, startNode } from "./_node_process.ts";

type Proc = NodeProcess;
const start = (args: string[]) => startNode(args, { timeoutMs: 90_000 });
const kill = killNode;

const isRound = (l: Line) => l.event === "round";
const message = (l: Line) => String(l.message ?? "");

Deno.test({
  name: "SIGKILL of every process mid-round, then --resume goes on from the newest committed round",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "resume_mp_" });
    const runDir = `${dir}/runs/demo`;
    const procs: Proc[] = [];
    const common = ["--secret", "s3cret", "--run-id", "demo"];
    const hostArgs = (port: number, more: string[]) => [
      "--host",
      `127.0.0.1:${port}`,
      ...common,
      "--min-trainers",
      "2",
      "--run-dir",
      runDir,
      ...more,
    ];
    try {
      // ---- first life: host + 2 joined trainers, killed mid-round.
      const port1 = 7000 + Math.floor(Math.random() * 400);
      const host = start(hostArgs(port1, [
        "--rounds",
        "40",
        "--config",
        "tiny",
        "--inner-steps",
        "20",
      ]));
      procs.push(host);
      await host.waitFor((l) => message(l).startsWith("hosting run"), "the host");
      const joiners = [0, 1].map(() => start(["--join", `ws://127.0.0.1:${port1}`, ...common]));
      procs.push(...joiners);
      // Wait for a few committed rounds, then kill everyone shortly after a round closed
      // (the next round's inner steps are then running).
      await host.waitFor((l) => l.event === "committed" && (l.round as number) >= 3, "commit 3");
      const last = host.lines.filter(isRound).length;
      await host.waitFor(
        (l) => isRound(l) && host.lines.filter(isRound).indexOf(l) >= last,
        "the next round",
      );
      await new Promise((r) => setTimeout(r, 150));
      for (const p of [host, ...joiners]) kill(p);
      await Promise.all([host, ...joiners].map((p) => p.done));
      const committed = new Map<number, string>();
      for (const l of host.lines.filter((l) => l.event === "committed")) {
        committed.set(l.round as number, l.params_hash as string);
      }
      // θ_{r+1} as the trainers reported it at round r.
      const reported = new Map<number, string>();
      for (const l of host.lines.filter(isRound)) {
        const hashes = l.theta_hashes as string[];
        equal(new Set(hashes).size, 1, `round ${l.round}: ${hashes}`);
        reported.set((l.round as number) + 1, hashes[0]);
      }
      const newestCommitted = Math.max(...committed.keys());
      ok(newestCommitted >= 3, `committed: ${[...committed.keys()]}`);

      // Every committed round still on disk verifies, with the hash of its commit; the
      // newest one is held by both keepers.
      for (const [round, hash] of committed) {
        let holders = 0;
        for (const k of ["keeper-0", "keeper-1"]) {
          const store = new CheckpointStore(`${runDir}/${k}`);
          if (!(await store.rounds()).includes(round)) continue;
          const m = await store.verify(round);
          equal(m.params_hash, hash, `${k} round ${round}`);
          holders++;
        }
        if (round === newestCommitted) equal(holders, 2, `holders of round ${round}`);
        if (reported.has(round)) equal(reported.get(round), hash, `trainers' θ of round ${round}`);
      }

      // ---- second life: --resume, with new joiner processes.
      const port2 = port1 + 400 + Math.floor(Math.random() * 400);
      const host2 = start(hostArgs(port2, ["--resume", runDir, "--rounds", "40"]));
      procs.push(host2);
      const resumed = await host2.waitFor((l) => l.event === "resumed", "the resume");
      const R = resumed.round as number;
      const H = resumed.params_hash as string;
      ok(R >= newestCommitted, `resumed ${R}, newest committed ${newestCommitted}`);
      for (const c of committed.keys()) ok(c <= R, `committed ${c} > resumed ${R}`);
      if (committed.has(R)) equal(H, committed.get(R), "hash at commit");
      if (reported.has(R)) equal(H, reported.get(R), "trainers' θ hash of the round");
      equal(resumed.cursors, 2, "data cursors of both trainers");
      console.log(
        `rounds closed before the kill: ${reported.size}, committed: ${[...committed.keys()]}, ` +
          `resumed at ${R} (${H})`,
      );
      await host2.waitFor((l) => message(l).startsWith("hosting run"), "the resumed host");
      const joiners2 = [0, 1].map(() => start(["--join", `ws://127.0.0.1:${port2}`, ...common]));
      procs.push(...joiners2);
      // Both trainers start from the resumed θ, fetched from the keepers.
      for (const j of joiners2) {
        const st = await j.waitFor((l) => message(l).includes("start state: round"), "θ");
        equal(message(st).split("start state: ")[1], `round ${R}, θ ${H}`);
        await j.waitFor((l) => /data shard \d+ resumes at step/.test(message(l)), "cursor");
        ok(
          j.lines.some((l) =>
            /start state of round \d+ fetched from host\/run\/keepers/.test(message(l))
          ),
        );
      }
      const first = await host2.waitFor(isRound, "the first resumed round");
      equal(first.round, R);
      equal(first.trainers, 2);
      const second = await host2.waitFor((l) => isRound(l) && l.round === R + 1, "round R+1");
      equal(new Set(second.theta_hashes as string[]).size, 1);
      // θ_{R+1} is committed too.
      await host2.waitFor((l) => l.event === "committed" && (l.round as number) > R, "a commit");
    } finally {
      for (const p of procs) kill(p);
      await Promise.all(procs.map((p) => p.done));
      await Deno.remove(dir, { recursive: true });
    }
  },
});
