import { equal } from "@std/assert";
import { ContributionOutbox } from "./trainer_contribute.ts";
import { quantizeInt8 } from "./int8_exchange.ts";
import { shardMap, type ViewMsg } from "./run_protocol.ts";
import type { DeltaReply, RoundReply } from "./trainer_worker.ts";

const n = 512;
const shards = shardMap(n, { aggregators: ["agg"] });
const view: ViewMsg = {
  type: "view",
  run: "r",
  epoch: 1,
  round: 0,
  trainers: ["t0"],
  aggregators: ["agg"],
  shards,
  params: n,
  block: 256,
  dataShards: [0],
  started: true,
  rounds: 0,
};

function phase(round: number): { reply: RoundReply; delta: DeltaReply } {
  const { q, scales } = quantizeInt8(new Float32Array(n).fill(0.01 * (round + 1)));
  const reply = {
    round,
    loss: 3,
    tokens: 64,
    innerMs: 1,
    waitedMs: 0,
    cursor: { shard: { index: 0, count: 1 }, step: 0 },
  } as unknown as RoundReply;
  return { reply, delta: { round, q, scales } };
}

Deno.test("a blocked trainer resends after 4 heartbeats, or twice the last update's wait", async () => {
  const clock = { t: 0 };
  const sent: number[] = [];
  const system = {
    ref: () => ({ tell: (m: unknown) => sent.push((m as { round: number }).round) }),
  };
  const outbox = new ContributionOutbox({
    run: "r",
    id: "t0",
    fragments: 1,
    heartbeatMs: 2000,
    now: () => clock.t,
  });
  const flush = () => new Promise((r) => setTimeout(r, 0)); // tells go out on a microtask
  const stuckAt = async (t: number) => {
    clock.t = t;
    outbox.resendIfStuck(system, view, true);
    await flush();
    return sent.length;
  };
  /** The update of the round out comes at `closeAt` (if given); round `round` goes out at `sendAt`. */
  const nextRound = async (round: number, sendAt: number, closeAt?: number) => {
    if (closeAt !== undefined) {
      clock.t = closeAt;
      outbox.closed();
    }
    const p = phase(round);
    clock.t = sendAt;
    outbox.send(system, view, p.reply, p.delta);
    await flush();
    return sent.length;
  };
  // Round 0: sent at 0; no update for 8 s (4 heartbeats): sent again.
  equal(await nextRound(0, 0), 1);
  equal(await stuckAt(7_000), 1);
  equal(await stuckAt(8_000), 2);
  // Its update comes at 12.5 s: the next round waits up to 25 s before sending again.
  equal(await nextRound(1, 20_000, 12_500), 3);
  equal(await stuckAt(28_000), 3, "8 s: a slow aggregator's close is no loss");
  equal(await stuckAt(44_000), 3);
  equal(await stuckAt(45_000), 4, "25 s, twice the last wait");
  // A very slow round: at most 30 heartbeats (60 s) between two sends.
  equal(await nextRound(2, 1_000_000, 1_000_000), 5);
  equal(await stuckAt(1_059_000), 5);
  equal(await stuckAt(1_060_000), 6);
  equal(sent.join(","), "0,0,1,1,2,2");
});
