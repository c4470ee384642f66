/**
 * Multi-host test: a host and two joined trainers, each in its own network
 * namespace, joined by veth pairs whose links are limited to 10 Mbit/s with
 * tc tbf (netem is not available on these machines: delay and loss are
 * injected by the transport's own fault layer in the fault suite instead).
 *
 *   fe-host 10.77.1.1 ── veth (tbf 10mbit) ── 10.77.1.2 fe-t1
 *   fe-host 10.77.2.1 ── veth (tbf 10mbit) ── 10.77.2.2 fe-t2
 *
 * Needs root and `ip netns` / `tc`; otherwise the test is ignored and says
 * why. Every namespace is deleted in `finally`.
 */
import { equal, ok } from "@std/assert";
import { netnsUnavailable } from "./_netns.ts";
import { hostAndJoin, netnsLayout, sh } from "./_netns_layout.ts";

const reason = netnsUnavailable();
if (reason) console.log(`netns_test: skipped: ${reason}`);

Deno.test({
  name: `netns: host and two trainers in separate namespaces over 10 Mbit/s veth links${
    reason ? ` (skipped: ${reason})` : ""
  }`,
  ignore: reason !== undefined,
  async fn() {
    const tag = `${Deno.pid % 10000}`;
    const layout = await netnsLayout({ tag, trainers: 2, rate: "10mbit" });
    try {
      const rounds = 4;
      const h = await hostAndJoin(layout, {
        port: 7811,
        args: ["--rounds", String(rounds), "--config", "tiny", "--inner-steps", "3"],
      });
      const done = h.lines.find((l) => l.event === "done")!;
      const rs = h.lines.filter((l) => l.event === "round");
      equal(rs.length, rounds);
      for (const r of rs) {
        equal(r.trainers, 2, `round ${r.round}: ${r.contributors}`);
        equal(new Set(r.theta_hashes as string[]).size, 1, `round ${r.round}`);
      }
      ok(done.hashes_equal);
      // The bytes went through the rate-limited qdiscs.
      for (const [i, ns] of layout.trainers.entries()) {
        const stats = await sh([
          "ip",
          "netns",
          "exec",
          ns,
          "tc",
          "-s",
          "qdisc",
          "show",
          "dev",
          layout.trainerDev(i),
        ]);
        ok(/tbf .*rate 10Mbit/.test(stats), stats);
        const sent = Number(/Sent (\d+) bytes/.exec(stats)?.[1] ?? 0);
        ok(sent > 10_000, `trainer ${i + 1} sent ${sent} bytes through tbf`);
        console.log(`netns_test: ${ns} sent ${sent} bytes through tbf 10mbit`);
      }
      equal((await h.done).code, 0);
    } finally {
      await layout.close();
    }
  },
});
