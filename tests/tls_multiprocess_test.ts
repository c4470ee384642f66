/**
 * TLS with real processes on loopback: a host serves `wss://` and
 * `https://` with a self-signed certificate made in the test; a trainer
 * process that trusts it (`--ca`) joins over `wss://` and the run closes its
 * rounds; a joiner given another certificate as its CA is refused with one
 * line that names the untrusted certificate and `--ca`.
 *
 * Slow (two processes compile shaders): run alone with
 * `deno test -A tests/tls_multiprocess_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";
import { hostFlags, type NodeProcess, startNode, stopNodes, TINY_RUN } from "./_node_process.ts";
import { selfSignedCert } from "./_tls.ts";

Deno.test({
  name:
    "TLS across processes: a run over wss:// with a self-signed certificate; a wrong CA refused",
  async fn() {
    const port = 30_000 + Math.floor(Math.random() * 10_000);
    const dir = await Deno.makeTempDir({ prefix: "tls_multiprocess_" });
    const cert = await selfSignedCert(dir, "host");
    const other = await selfSignedCert(dir, "other");
    const url = `wss://127.0.0.1:${port}`;
    const rounds = 3;
    const procs: NodeProcess[] = [];
    const https = Deno.createHttpClient({ caCerts: [cert.cert] });
    try {
      const host = startNode([
        ...hostFlags(`${dir}/host`, port),
        "--secret",
        "tls-token",
        "--tls-cert",
        cert.certFile,
        "--tls-key",
        cert.keyFile,
        "--keepers",
        "0",
        "--min-trainers",
        "1",
        "--rounds",
        String(rounds),
        ...TINY_RUN,
      ], { timeoutMs: 180_000 });
      procs.push(host);
      const hosting = await host.waitFor(
        (l) => String(l.message ?? "").startsWith("hosting run"),
        "the host",
      );
      ok(String(hosting.message).includes("wss://"), String(hosting.message));

      const wrong = startNode(["--join", url, "--secret", "tls-token", "--ca", other.certFile]);
      procs.push(wrong);
      equal((await wrong.done).code, 1);
      const line = wrong.lines.find((l) => /^Cannot join run/.test(String(l.message)));
      ok(
        /^Cannot join run at wss:\/\/127\.0\.0\.1:\d+: Cannot connect to wss:\/\/\S+: TLS certificate not trusted \(invalid peer certificate: \w+\); give the host's certificate with --ca FILE$/
          .test(String(line?.message)),
        JSON.stringify(wrong.lines.slice(-3)),
      );

      // The trainer also pins the host's key, as printed by the host.
      const hostKey = await host.waitFor(
        (l) => String(l.message ?? "").startsWith("host key"),
        "the host key",
      );
      const fp = String(hostKey.message).slice("host key ".length, "host key ".length + 64);
      const trainer = startNode([
        "--join",
        url,
        "--secret",
        "tls-token",
        "--ca",
        cert.certFile,
        "--host-key",
        fp.slice(0, 16),
      ], { timeoutMs: 180_000 });
      procs.push(trainer);
      await host.waitFor((l) => l.event === "round" && l.round === 0, "round 0 over wss://");
      const status = await (await fetch(`https://127.0.0.1:${port}/status`, { client: https }))
        .json();
      equal(status.run, "run");
      const joined = status.members.find((m: { node: string }) => m.node.startsWith("trainer-"));
      ok(/^[0-9a-f]{64}$/.test(joined?.key), JSON.stringify(status.members));
      await trainer.waitFor(
        (l) => l.message === `host key ${fp}`,
        "the trainer's log of the host key",
      );
      const done = await host.waitFor((l) => l.event === "done", "the end of the run");
      deepEqual(
        host.lines.filter((l) => l.event === "round").map((l) => l.round),
        [...Array(rounds).keys()],
      );
      ok(done.hashes_equal);
      equal((await host.done).code, 0);
    } finally {
      https.close();
      await stopNodes(procs);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
