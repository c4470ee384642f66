/**
 * Fault suite, network run: one actor system per node (tracker node, host
 * with the aggregator, three trainer nodes) on real WebSockets through the
 * transport's seeded fault layer. Injected in turn: dropped, delayed,
 * duplicated, reordered and corrupted frames; one node partitioned from the
 * rest, then the tracker from every trainer, each healed; a bandwidth limit;
 * a peer with the wrong secret; malformed msgpack and an oversized frame from
 * an unauthenticated socket; malformed protocol messages from an
 * authenticated node. After the run: every round closed once and in order,
 * θ bit-identical on every trainer at every round it reported, no
 * contribution counted twice, and the loss within 5% of a fault-free run.
 */
import { deepEqual, ok } from "@std/assert";
import type { ScheduledFault } from "./_fault_inject.ts";
import { faultSeed } from "./_fault_plan.ts";
import { runWithFaults } from "./_fault_compare.ts";

Deno.test({
  name: "fault suite (network): frame faults, partitions, bandwidth, hostile peers",
  async fn() {
    const seed = faultSeed("fault_network", 22);
    const hold = 1500;
    const faults: ScheduledFault[] = [
      { afterRound: 0, kind: "wrong_secret" },
      { afterRound: 0, kind: "malformed_msgpack" },
      { afterRound: 0, kind: "oversized_frame" },
      { afterRound: 1, kind: "malformed_message" },
      { afterRound: 2, kind: "drop_frames", holdMs: hold },
      { afterRound: 3, kind: "delay_frames", holdMs: hold },
      { afterRound: 4, kind: "duplicate_frames", holdMs: hold },
      { afterRound: 5, kind: "reorder_frames", holdMs: hold },
      { afterRound: 6, kind: "corrupt_frames", holdMs: hold },
      { afterRound: 7, kind: "bandwidth_limit", holdMs: hold },
      { afterRound: 8, kind: "partition_node", target: 1, holdMs: 5000 },
      { afterRound: 9, kind: "partition_tracker", holdMs: 5000 },
    ];
    const { run, injected, final, cleanLoss, clean } = await runWithFaults(
      { seed, trainers: 3, innerSteps: 3, network: true },
      faults,
    );
    deepEqual(run.violations(), []);
    deepEqual(clean.violations(), []);
    ok(run.monitor.rounds.length >= final.round, "every round up to the end closed");
    const detail = (kind: string) => injected.find((o) => o.fault.kind === kind)?.detail ?? "";
    ok(/refused: .*authentication failed/i.test(detail("wrong_secret")), detail("wrong_secret"));
    ok(!/ACCEPTED/.test(detail("wrong_secret")));
    ok(
      /closed with 4\d\d\d|closed with 1\d\d\d/.test(detail("malformed_msgpack")),
      detail("malformed_msgpack"),
    );
    ok(/closed with/.test(detail("oversized_frame")), detail("oversized_frame"));
    ok(!/ok/.test(detail("malformed_message").replace("answers", "")), detail("malformed_message"));
    const counts = run.faults!.actionCounts();
    console.log(`fault_network: fault layer actions ${JSON.stringify(counts)}`);
    for (
      const a of ["drop", "delay", "duplicate", "reorder", "corrupt", "partition", "throttled"]
    ) {
      ok((counts[a] ?? 0) > 0, `the fault layer applied "${a}": ${JSON.stringify(counts)}`);
    }
    // While the tracker was cut off from the trainers, the aggregator's round
    // reports kept them alive: nobody was evicted.
    const cut = injected.find((o) => o.fault.kind === "partition_tracker")!;
    const evictedAt = run.lines.filter((l) => l.includes("tracker evicted"))
      .map((l) => Number(/^\[([\d.]+)s\]/.exec(l)?.[1] ?? -1));
    ok(
      evictedAt.every((t) => t < cut.at || t > cut.at + 6),
      `evictions at ${evictedAt} during the tracker partition from ${cut.at} s`,
    );
    // The partitioned node was evicted, and was back in the view later.
    const n1 = run.trainerPaths[1];
    const part = injected.find((o) => o.fault.kind === "partition_node")!;
    ok(
      run.lines.some((l) => l.includes(`evicted ${n1}`)),
      `${n1} was evicted during its partition`,
    );
    const last = run.monitor.rounds.at(-1)!.round;
    ok(
      run.monitor.rounds.some((r) =>
        r.round > part.fault.afterRound + 3 && r.contributors.includes(n1)
      ),
      `${n1} contributes again after the partition healed (rounds up to ${last})`,
    );
    // The run ended whole: a round after the last fault had every trainer (schedule waits for it).
    ok(
      run.monitor.rounds.some((r) => r.round > cut.fault.afterRound && r.contributors.length === 3),
    );
    const rel = Math.abs(final.loss - cleanLoss) / cleanLoss;
    console.log(
      `fault_network: ${injected.length} faults, ${final.round} rounds, loss ${
        final.loss.toFixed(4)
      } ` +
        `vs fault-free ${cleanLoss.toFixed(4)}`,
    );
    ok(
      rel < 0.05,
      `final loss ${final.loss} vs fault-free ${cleanLoss} (${(rel * 100).toFixed(2)}%)`,
    );
  },
});
