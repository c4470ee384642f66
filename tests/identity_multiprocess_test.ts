/**
 * Node identities with real processes on loopback: a host that admits only
 * the keys of its allow-list, and peers that try what a stranger's machine
 * could. A joiner whose key is not on the list cannot join (close 4403, one
 * line naming its key); a peer with a listed key that claims another node's
 * id is refused in the handshake as an impersonation; a listed peer that
 * replays its own accepted contribution in a later round gets it refused as
 * `stale_round`, and one that sends it again in the host trainer's name gets
 * it refused as an impersonation, by the host's transport, before any actor
 * sees it; its request that the tracker crash (a fault only the host may
 * inject) is refused the same way. `/status` shows each member's key
 * fingerprint.
 *
 * Slow (the host compiles shaders): run alone with
 * `deno test -A tests/identity_multiprocess_test.ts`.
 */
import { equal, ok } from "@std/assert";
import { derivedNodeId } from "../transport/identity.ts";
import { loadIdentity } from "../transport/identity_file.ts";
import {
  hostFlags,
  type Line,
  type NodeProcess,
  startNode,
  stopNodes,
  TINY_RUN,
} from "./_node_process.ts";

const ROGUE = new URL("./fixtures/rogue_node.ts", import.meta.url).pathname;

/** Runs the rogue fixture and collects its JSON lines. */
async function rogue(args: string[], until?: (lines: Line[]) => boolean) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ROGUE, ...args],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: Line[] = [];
  let buf = "";
  const decoder = new TextDecoder();
  const reader = child.stdout.getReader();
  // A rogue that falls silent is stopped, and the assertions below say what it did print.
  const timer = setTimeout(() => reader.cancel().catch(() => {}), 120_000);
  for (;;) {
    if (until?.(lines)) break;
    const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)));
      buf = buf.slice(nl + 1);
    }
  }
  clearTimeout(timer);
  try {
    child.kill("SIGKILL");
  } catch {
    // Already exited.
  }
  await reader.cancel().catch(() => {});
  return { lines, status: await child.status };
}

Deno.test({
  name:
    "identities across processes: allow-list refusal, impostor refused, replayed and forwarded contributions refused",
  async fn() {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const url = `ws://127.0.0.1:${port}`;
    const dir = await Deno.makeTempDir({ prefix: "identity_multiprocess_" });
    const listed = await loadIdentity(`${dir}/rogue.key`);
    const other = await loadIdentity(`${dir}/other.key`);
    await Deno.writeTextFile(
      `${dir}/allow.txt`,
      `# the run's keys\n${listed.fingerprint}\n${other.fingerprint}\n`,
    );
    const procs: NodeProcess[] = [];
    try {
      const host = startNode([
        ...hostFlags(`${dir}/host`, port),
        "--allow",
        `${dir}/allow.txt`,
        "--trainers",
        "1",
        "--keepers",
        "0",
        "--rounds",
        "400",
        ...TINY_RUN,
      ], { timeoutMs: 180_000 });
      procs.push(host);
      await host.waitFor((l) => String(l.message ?? "").startsWith("hosting run"), "the host");
      const hostKey = await host.waitFor(
        (l) => String(l.message ?? "").startsWith("host key"),
        "the host key",
      );
      ok(/admits the 2 keys of/.test(String(hostKey.message)), String(hostKey.message));

      // The rogue joins a run under way (its zero contributions need the aggregator's θ).
      await host.waitFor((l) => l.event === "round" && l.round === 1, "round 1");

      // A joiner with a key of its own that the list does not name.
      const stranger = startNode(["--join", url, "--key", `${dir}/stranger.key`]);
      procs.push(stranger);
      equal((await stranger.done).code, 1);
      const strangerFp = (await loadIdentity(`${dir}/stranger.key`)).fingerprint;
      ok(
        stranger.lines.some((l) =>
          /^Cannot join run at ws:\/\/.*: Not admitted: key [0-9a-f]{16} is not on the run's allow-list \(4403\)$/
            .test(String(l.message)) && String(l.message).includes(strangerFp.slice(0, 16))
        ),
        JSON.stringify(stranger.lines.slice(-3)),
      );

      // A listed key claiming the id of the other listed node.
      const victimId = derivedNodeId("rogue", listed.fingerprint);
      const impostor = await rogue([url, `${dir}/other.key`, "impostor", victimId]);
      equal(impostor.status.code, 1);
      const refused = impostor.lines.find((l) => l.event === "refused");
      ok(/not derived from its key/.test(String(refused?.message)), JSON.stringify(refused));
      await host.waitFor(
        (l) => /impersonation/.test(String(l.message)) && String(l.message).includes(victimId),
        "the host's log of the impostor",
      );

      // A listed peer that contributes, then replays and forwards a contribution.
      const r = await rogue(
        [url, `${dir}/rogue.key`, "replay"],
        (lines) =>
          lines.some((l) => l.event === "crash") &&
          lines.some((l) => l.event === "reject" && l.reason === "stale_round"),
      );
      const contributed = r.lines.filter((l) => l.event === "contributed");
      ok(contributed.length >= 3, JSON.stringify(r.lines));
      const path = `${victimId}/rogue`;
      const first = contributed[0].round as number;
      const round = await host.waitFor(
        (l) => l.event === "round" && l.round === first,
        `round ${first}`,
      );
      ok((round.contributors as string[]).includes(path), `${round.contributors}`);
      const stale = r.lines.find((l) => l.event === "reject")!;
      equal(stale.reason, "stale_round");
      equal(stale.round, first);
      const forged = r.lines.find((l) => l.event === "forged")!;
      equal(forged.accepted, false);
      ok(
        /Refused contribution from node "rogue-[0-9a-f]{16}" speaks for "host\/run\/trainers\/0" of another node \(impersonation\)/
          .test(String(forged.message)),
        String(forged.message),
      );
      await host.waitFor(
        (l) => /transport: Refused contribution .*impersonation/.test(String(l.message)),
        "the host's log of the forwarded contribution",
      );
      const crash = r.lines.find((l) => l.event === "crash")!;
      equal(crash.accepted, false);
      ok(
        /Refused crash from node "rogue-[0-9a-f]{16}" speaks for "host\/run\/tracker\/tracker"/
          .test(String(crash.message)),
        String(crash.message),
      );
      ok(
        !host.lines.some((l) => /restart/.test(String(l.message))),
        "no actor of the host restarted",
      );
      await host.waitFor(
        (l) => /rejected contribution \(stale_round/.test(String(l.message)),
        "the host's log of the replay",
      );

      // /status names each member's key.
      const status = await (await fetch(`http://127.0.0.1:${port}/status`)).json();
      const hostFp = String(hostKey.message).match(/^host key ([0-9a-f]{64});/)?.[1];
      const hostTrainer = status.members.find((m: { node: string }) =>
        m.node === "host/run/trainers/0"
      );
      equal(hostTrainer?.key, hostFp);
    } finally {
      await stopNodes(procs);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
