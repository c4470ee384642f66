/**
 * The overlapped outer step against the blocking one on a slow network: a
 * host and two joined trainers, each in its own network namespace, over
 * veth links shaped with tc tbf, so that a blocking sync costs a good part
 * of a round (tests/_netns_layout.ts). For each link of LINKS, the same run
 * blocking and then overlapped (`--sync overlapped`, τ = ⌈H/5⌉ by default;
 * on the slower link also τ = H), in one layout.
 *
 * Asserted: every round of both runs closes with both trainers and with
 * their θ hashes equal. Printed, not asserted (tests never assert on time):
 * each run's utilization (INTELLECT-1's inner time / (inner + blocked)) and
 * the share of a round a blocking trainer spends waiting.
 *
 * Needs root and `ip netns` / `tc`; otherwise the test is ignored and says
 * why. Every namespace is deleted in `finally`. For figures, run it alone
 * (`deno test -A tests/netns_overlap_test.ts`): in the suite another test
 * file runs beside it, and a trainer slowed by it is waited for.
 */
import { equal, ok } from "@std/assert";
import { netnsUnavailable } from "./_netns.ts";
import { hostAndJoin, netnsLayout } from "./_netns_layout.ts";

const reason = netnsUnavailable();
if (reason) console.log(`netns_overlap_test: skipped: ${reason}`);

/**
 * The links: slow enough that the tiny model's int8 exchange takes a good
 * part of a round. At 4 Mbit/s a blocking trainer waits about 15% of a
 * round, within a few points of what the default τ (a fifth of a round) can
 * hide, so τ = H runs there too; at 5 Mbit/s about 12%, still over the 10%
 * a link must cost to show what overlap hides.
 */
const LINKS = [
  { rate: "4mbit", tauH: true },
  { rate: "5mbit", tauH: false },
];
/**
 * Rounds per run: enough that the last round, which has no next round to
 * overlap with and waits for its update as a blocking one does (its
 * utilization is the blocking run's), weighs what it weighs in a real run of
 * many rounds. At 16 rounds that one wait alone cost 0.8% of the mean.
 */
const ROUNDS = 40;
/** Inner steps per round: an inner phase longer than the exchange, which overlap can then hide. */
const INNER_STEPS = 30;

for (const [l, { rate: RATE, tauH }] of LINKS.entries()) {
  Deno.test({
    name: `netns: blocking and overlapped outer step side by side over ${RATE} links${
      reason ? ` (skipped: ${reason})` : ""
    }`,
    ignore: reason !== undefined,
    async fn() {
      const layout = await netnsLayout({
        tag: `o${l}${Deno.pid % 10000}`,
        trainers: 2,
        rate: RATE,
      });
      const figures: Record<string, number> = {};
      try {
        const runs = [
          { label: "blocking", flags: ["--sync", "blocking"] },
          // τ = H / 5 (the default): a trainer waits once it is that far into the next round.
          { label: "overlapped", flags: ["--sync", "overlapped"] },
          // τ = H: it waits only when a whole round ahead.
          ...(tauH
            ? [{
              label: "overlapped-tau-H",
              flags: ["--sync", "overlapped", "--overlap-steps", String(INNER_STEPS)],
            }]
            : []),
        ];
        for (const [i, { label: sync, flags }] of runs.entries()) {
          const h = await hostAndJoin(layout, {
            port: 7821 + 10 * l + i,
            args: [
              "--rounds",
              String(ROUNDS),
              "--config",
              "tiny",
              "--inner-steps",
              String(INNER_STEPS),
              ...flags,
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
          // The last round has no next one to overlap with: its wait is the run's drain.
          const before = rs.slice(0, -1).map((r) => r.utilization as number);
          const steady = before.reduce((x, y) => x + y, 0) / before.length;
          console.log(
            `netns_overlap_test: ${RATE} ${sync}: utilization ${done.utilization} ` +
              `(rounds before the last ${steady.toFixed(4)}), ` +
              `per round ${rs.map((r) => r.utilization).join(" ")}, wall ${done.wall_s} s`,
          );
        }
        console.log(
          `netns_overlap_test: over ${RATE}, utilization blocking ${figures.blocking} ` +
            `(waiting ${((1 - figures.blocking) * 100).toFixed(1)}% of a round), ` +
            `overlapped ${figures.overlapped}` +
            (tauH ? `, overlapped with τ = H ${figures["overlapped-tau-H"]}` : ""),
        );
      } finally {
        await layout.close();
      }
    },
  });
}
