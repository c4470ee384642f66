/**
 * A checkpoint keeper on another node: `deno task node --join URL --role
 * keeper` registers with the host, takes each round's state over the real
 * WebSocket transport, writes it to its own run directory, and counts as a
 * replica: rounds are committed with it among the holders, and what it holds
 * verifies with the hash of the commit.
 *
 * Slow-ish (two processes, one compiling shaders): run alone with
 * `deno test -A tests/remote_keeper_test.ts`.
 */
import { equal, ok } from "@std/assert";
import { CheckpointStore } from "../checkpoint/store.ts";
import { startNode } from "./_node_process.ts";

const start = (args: string[]) => startNode(args, { timeoutMs: 60_000 });

Deno.test({
  name: "a keeper joined from another process holds committed rounds that verify",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "remote_keeper_" });
    const port = 8200 + Math.floor(Math.random() * 500);
    const common = ["--secret", "s3cret", "--run-id", "rk"];
    const host = start([
      "--host",
      `127.0.0.1:${port}`,
      ...common,
      "--trainers",
      "1",
      "--keepers",
      "1",
      "--rounds",
      "30",
      "--config",
      "tiny",
      "--inner-steps",
      "10",
      "--run-dir",
      `${dir}/host`,
    ]);
    const procs = [host];
    try {
      await host.waitFor((l) => String(l.message ?? "").startsWith("hosting run"), "the host");
      const keeper = start([
        "--join",
        `ws://127.0.0.1:${port}`,
        ...common,
        "--role",
        "keeper",
        "--run-dir",
        `${dir}/remote`,
      ]);
      procs.push(keeper);
      const joined = await keeper.waitFor(
        (l) => String(l.message ?? "").startsWith("joined run"),
        "the keeper's join",
      );
      const path = String(joined.message).split(" as ")[1].split(",")[0];
      ok(path.endsWith("/node/keeper"), path);
      // With the remote keeper registered there are two keepers: a commit needs both.
      const c = await host.waitFor(
        (l) => l.event === "committed" && (l.holders as string[]).includes(path),
        "a commit held by the remote keeper",
      );
      equal((c.holders as string[]).length, 2);
      // What it holds verifies with the hash of the commit (retention may have pruned older ones).
      const store = new CheckpointStore(`${dir}/remote`);
      const held = await store.rounds();
      const commits = host.lines.filter((l) =>
        l.event === "committed" && (l.holders as string[]).includes(path) &&
        held.includes(l.round as number)
      );
      ok(commits.length > 0, `remote rounds ${held}`);
      for (const k of commits) {
        equal((await store.verify(k.round as number)).params_hash, k.params_hash);
      }
    } finally {
      for (const p of procs) {
        try {
          p.child.kill("SIGKILL");
        } catch {
          // Already exited.
        }
      }
      await Promise.all(procs.map((p) => p.done));
      await Deno.remove(dir, { recursive: true });
    }
  },
});
