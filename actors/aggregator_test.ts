import { deepEqual, equal, ok } from "@std/assert";
import { aggregatorBehavior, type AggregatorEvent, MemoryKeeperSlot } from "./aggregator.ts";
import { ActorSystem } from "./runtime/system.ts";
import { quantizeInt8 } from "./int8_exchange.ts";
import { type ContributionMsg, shardMap, type ViewMsg } from "./run_protocol.ts";

const n = 512;

/** An aggregator of one shard on a system of its own, with a tracker and two trainers that note what they get. */
async function oneShard() {
  const system = new ActorSystem({ node: "h" });
  const view: ViewMsg = {
    type: "view",
    run: "r",
    epoch: 1,
    round: 0,
    trainers: ["h/t0", "h/t1"],
    aggregators: ["h/agg"],
    shards: shardMap(n, { aggregators: ["h/agg"] }),
    params: n,
    block: 256,
    dataShards: [0, 1],
    started: true,
    rounds: 0,
  };
  await system.spawn({
    receive: (m: { type: string; round?: number }) => {
      if (m.type === "join") {
        return {
          type: "join_reply",
          run: "r",
          node: "h/agg",
          status: "member",
          dataShard: 0,
          view,
          incarnation: 1,
        };
      }
      if (m.type === "heartbeat") {
        return { type: "heartbeat_ack", run: "r", known: true, incarnation: 1, epoch: 1 };
      }
      if (m.type === "round_closed") return { ...view, round: m.round! + 1 };
      return undefined;
    },
  }, { name: "tracker" });
  const got: Record<string, { type: string; round: number; reason?: string }[]> = {};
  for (const t of ["t0", "t1"]) {
    got[`h/${t}`] = [];
    await system.spawn({
      receive: (m: { type: string; round: number }) => void got[`h/${t}`].push(m),
    }, {
      name: t,
    });
  }
  const events: AggregatorEvent[] = [];
  await system.spawn(
    aggregatorBehavior({
      run: "r",
      id: "h/agg",
      tracker: "h/tracker",
      outer: { lr: 1, momentum: 0 },
      slot: new MemoryKeeperSlot(),
      onEvent: (e) => events.push(e),
    }),
    { name: "agg" },
  );
  const agg = system.ref("h/agg");
  // The aggregator has the view once it answers a state request (its seed is θ_0).
  for (let i = 0; i < 100; i++) {
    const s = await agg.ask<{ type: string }>({
      type: "state_request",
      run: "r",
      shard: 0,
      seed: new Float32Array(n),
    });
    if (s.type === "state") break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const contribution = (trainer: string, round: number): ContributionMsg => ({
    type: "contribution",
    run: "r",
    round,
    epoch: 1,
    trainer,
    shard: 0,
    tokens: 64,
    n,
    ...quantizeInt8(new Float32Array(n).fill(0.01)),
    loss: 2,
  });
  const until = async (ok: () => boolean) => {
    for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  };
  return { system, agg, got, events, contribution, until };
}

Deno.test("a resent contribution of a closed round that counted it gets the round's update again, a replay is refused", async () => {
  const { system, agg, got, events, contribution, until } = await oneShard();
  try {
    agg.tell(contribution("h/t0", 0));
    agg.tell(contribution("h/t1", 0));
    await until(() => got["h/t0"].length === 1 && got["h/t1"].length === 1);
    deepEqual(got["h/t0"].map((m) => [m.type, m.round]), [["update", 0]]);
    // t0 got no update (lost, or behind a long close) and sends round 0 again, marked as resent.
    agg.tell({ ...contribution("h/t0", 0), resend: true });
    await until(() => got["h/t0"].length === 2);
    deepEqual(got["h/t0"].map((m) => [m.type, m.round]), [["update", 0], ["update", 0]]);
    const resent = events.filter((e) => e.type === "update_resent");
    deepEqual(resent, [{
      type: "update_resent",
      aggregator: "h/agg",
      trainer: "h/t0",
      round: 0,
      shard: 0,
    }]);
    ok(!events.some((e) => e.type === "rejected"));
    // The same message not marked as resent is a replay of a past round: refused as stale.
    agg.tell(contribution("h/t1", 0));
    await until(() => got["h/t1"].length === 2);
    equal(got["h/t1"][1].type, "reject");
    equal(got["h/t1"][1].reason, "stale_round");
    equal(got["h/t0"].length, 2);
  } finally {
    await system.shutdown();
  }
});
