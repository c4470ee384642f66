/**
 * The overlapped outer step against the blocking one on a slow network: a
 * host and two joined trainers, each in its own network namespace, over
 * veth links shaped with tc tbf to RATE, so that a blocking sync costs a
 * good part of a round (tests/_netns_layout.ts). The same run, blocking and
 * then overlapped (`--sync overlapped`), in one layout.
 *
 * Asserted: every round of both runs closes with both trainers and with
 * their θ hashes equal. Printed, not asserted (tests never assert on time):
 * each run's utilization (INTELLECT-1's inner time / (inner + blocked)) and
 * the share of a round a blocking trainer spends waiting.
 *
 * Needs root and `ip netns` / `tc`; otherwise the test is ignored and says
 * why. Every namespace is deleted in `finally`.
 */
import { equal, ok } from "@std/assert";
import { netnsUnavailable } from "./_netns.ts";
import { hostAndJoin, netnsLayout } from "./_netns_layout.ts";

const reason = netnsUnavailable();
if (reason) console.log(`netns_overlap_test: skipped: ${reason}`);

/** The link: slow enough that the tiny model's int8 exchange takes a good part of a round. */
const RATE = "2mbit";
const ROUNDS = 16;
/** Inner steps per round: an inner phase longer than the exchange, which overlap can then hide. */
const INNER_STEPS = 30;

Deno.test({
  name: `netns: blocking and overlapped outer step side by side over ${RATE} links${
    reason ? ` (skipped: ${reason})` : ""
  }`,
  ignore: reason !== undefined,
  async fn() {
    const layout = await netnsLayout({ tag: `o${Deno.pid % 10000}`, trainers: 2, rate: RATE });
    const figures: Record<string, number> = {};
    try {
      for (const [i, sync] of (["blocking", "overlapped"] as const).entries()) {
        const h = await hostAndJoin(layout, {
          port: 7821 + i,
          args: [
            "--rounds",
            String(ROUNDS),
            "--config",
            "tiny",
            "--inner-steps",
            String(INNER_STEPS),
            "--sync",
            sync,
            "--keepers",
            "0",
          ],
        });
        const done = h.lines.find((l) => l.event === "done")!;
        const rs = h.lines.filter((l) => l.event === "round");
        equal(rs.length, ROUNDS, sync);
        for (const r of rs) {
          equal(r.trainers, 2, `${sync} round ${r.round}: ${r.contributors}`);
          const hashes = r.theta_hashes as string[];
          equal(hashes.length, 2, `${sync} round ${r.round}`);
          equal(new Set(hashes).size, 1, `${sync} round ${r.round}: ${hashes}`);
        }
        ok(done.hashes_equal, sync);
        equal((await h.done).code, 0, sync);
        figures[sync] = done.utilization as number;
        console.log(
          `netns_overlap_test: ${sync}: utilization ${done.utilization}, ` +
            `per round ${rs.map((r) => r.utilization).join(" ")}, wall ${done.wall_s} s`,
        );
      }
      console.log(
        `netns_overlap_test: over ${RATE}, utilization blocking ${figures.blocking} ` +
          `(waiting ${((1 - figures.blocking) * 100).toFixed(1)}% of a round), ` +
          `overlapped ${figures.overlapped}`,
      );
    } finally {
      await layout.close();
    }
  },
});
