import { deepEqual, equal, ok, throws } from "@std/assert";
import { Membership } from "./membership.ts";
import type { JoinMsg, Role } from "./run_protocol.ts";

const RUN = "run-m";

function join(node: string, roles: Role[] = ["trainer"], extra: Partial<JoinMsg> = {}): JoinMsg {
  return { type: "join", run: RUN, node, roles, ...extra };
}

function started(clock: { t: number }, trainers = ["t0", "t1"], params = 2000) {
  const m = new Membership({ run: RUN, params, now: () => clock.t });
  m.join(join("agg0", ["aggregator"]));
  m.join(join("agg1", ["aggregator"]));
  for (const t of trainers) m.join(join(t));
  m.start();
  return m;
}

Deno.test("joins before the start are members; the shard map covers the params on block bounds", () => {
  const clock = { t: 0 };
  const m = started(clock);
  const v = m.view;
  deepEqual(v.trainers, ["t0", "t1"]);
  deepEqual(v.aggregators, ["agg0", "agg1"]);
  equal(v.round, 0);
  deepEqual(v.shards.map((s) => [s.start, s.length, s.aggregator]), [
    [0, 1024, "agg0"],
    [1024, 976, "agg1"],
  ]);
  deepEqual(v.dataShards, [0, 1]);
  ok(m.started);
  throws(() => m.join({ ...join("x"), run: "other" }), /other/);
});

Deno.test("a joiner after the start is admitted at the next round boundary, once", () => {
  const clock = { t: 0 };
  const m = started(clock);
  const epoch = m.view.epoch;
  const r = m.join(join("t2"));
  equal(r.reply.status, "pending");
  equal(r.view, undefined, "the running round's view does not change");
  ok(!m.view.trainers.includes("t2"));
  const closed = m.roundClosed({ type: "round_closed", run: RUN, round: 0, node: "agg0" });
  equal(closed.view?.round, 1);
  deepEqual(closed.view?.trainers, ["t0", "t1", "t2"]);
  equal(closed.view?.epoch, epoch + 1);
  // The second aggregator's report of the same round gets the same view.
  const again = m.roundClosed({ type: "round_closed", run: RUN, round: 0, node: "agg1" });
  equal(again.view?.epoch, epoch + 1);
  equal(m.members().find((x) => x.node === "t2")?.status, "member");
});

Deno.test("a silent trainer is evicted after 6 s; the view keeps the round, bumps the epoch", () => {
  const clock = { t: 0 };
  const m = started(clock, ["t0", "t1", "t2"]);
  const before = m.view;
  for (let i = 0; i < 4; i++) {
    clock.t += 2000;
    for (const n of ["agg0", "agg1", "t0", "t2"]) {
      m.heartbeat({ type: "heartbeat", run: RUN, node: n, epoch: before.epoch });
    }
    const change = m.tick();
    if (clock.t <= 6000) deepEqual(change.evicted, [], `at ${clock.t} ms`);
    else {
      deepEqual(change.evicted, ["t1"]);
      deepEqual(change.view?.trainers, ["t0", "t2"]);
      equal(change.view?.round, before.round);
      equal(change.view?.epoch, before.epoch + 1);
      deepEqual(change.view?.shards, before.shards);
    }
  }
  ok(!m.view.trainers.includes("t1"));
});

Deno.test("heartbeats: unknown nodes are told to re-announce, lagging ones get the view", () => {
  const clock = { t: 0 };
  const m = started(clock);
  const unknown = m.heartbeat({ type: "heartbeat", run: RUN, node: "ghost", epoch: 0 });
  equal(unknown.known, false);
  const lag = m.heartbeat({ type: "heartbeat", run: RUN, node: "t0", epoch: 0 });
  ok(lag.known);
  equal(lag.view?.epoch, m.view.epoch);
  const current = m.heartbeat({ type: "heartbeat", run: RUN, node: "t0", epoch: m.view.epoch });
  equal(current.view, undefined);
});

Deno.test("heartbeats pass the run's newest evaluation on to each member until it has heard of it", () => {
  const m = started({ t: 0 });
  const hb = (node: string, news?: number) =>
    m.heartbeat({
      type: "heartbeat",
      run: RUN,
      node,
      epoch: m.view.epoch,
      ...(news !== undefined ? { news } : {}),
    });
  equal(hb("t0").news, undefined);
  const first = { round: 3, eval_loss: 2.9, sample: { prompt: "The ", text: "people" } };
  m.news = first;
  deepEqual(hb("t0").news, first);
  deepEqual(hb("t1", 2).news, first);
  equal(hb("t0", 3).news, undefined);
  // Not to a node the tracker does not know; an older evaluation does not replace a newer one.
  equal(hb("ghost").news, undefined);
  m.news = { round: 1, eval_loss: 4 };
  deepEqual(hb("t1", 2).news, first);
  m.news = { round: 6, eval_loss: 2.6 };
  deepEqual(hb("t0", 3).news, { round: 6, eval_loss: 2.6 });
});

Deno.test("a leave publishes a view without the node and frees its data shard", () => {
  const clock = { t: 0 };
  const m = started(clock);
  const shard = m.view.dataShards[0];
  const change = m.leave("t0");
  deepEqual(change.view?.trainers, ["t1"]);
  deepEqual(m.leave("nobody"), { evicted: [] });
  const r = m.join(join("t9"));
  equal(r.reply.dataShard, shard);
});

Deno.test("a restarted tracker rebuilds the view from its members' re-announcements", () => {
  const clock = { t: 0 };
  const m = started(clock, ["t0", "t1", "t2"]);
  m.roundClosed({ type: "round_closed", run: RUN, round: 0, node: "agg0" });
  m.join(join("t3")); // pending when the tracker dies
  m.roundClosed({ type: "round_closed", run: RUN, round: 1, node: "agg0" });
  m.join(join("t4")); // pending when the tracker dies
  const last = m.view;
  const dataShardOf = (n: string) => m.members().find((x) => x.node === n)!.dataShard;
  // The tracker restarts with nothing.
  clock.t += 1000;
  const fresh = new Membership({ run: RUN, params: 2000, now: () => clock.t, incarnation: 1 });
  equal(fresh.incarnation, 1);
  const hb = fresh.heartbeat({ type: "heartbeat", run: RUN, node: "t0", epoch: last.epoch });
  equal(hb.known, false);
  // Members re-announce with their last view and data shard.
  fresh.join(join("t1", ["trainer"], { view: last, dataShard: dataShardOf("t1") }));
  fresh.join(join("agg0", ["aggregator"], { view: last }));
  fresh.join(join("t4", ["trainer"], { dataShard: dataShardOf("t4") }));
  deepEqual(fresh.view, last);
  ok(fresh.started);
  // The joiner that was pending is pending again; the others are members.
  equal(fresh.members().find((x) => x.node === "t4")?.status, "pending");
  equal(
    fresh.heartbeat({ type: "heartbeat", run: RUN, node: "t2", epoch: last.epoch }).known,
    true,
  );
  const next = fresh.roundClosed({
    type: "round_closed",
    run: RUN,
    round: last.round,
    node: "agg1",
  });
  equal(next.view?.round, last.round + 1);
  deepEqual(next.view?.trainers, ["t0", "t1", "t2", "t3", "t4"]);
  equal(next.view?.dataShards[4], dataShardOf("t4"));
  ok(next.view!.epoch > last.epoch);
});

Deno.test("a restarted tracker evicts members that never re-announce", () => {
  const clock = { t: 0 };
  const m = started(clock, ["t0", "t1"]);
  const last = m.view;
  const fresh = new Membership({ run: RUN, params: 2000, now: () => clock.t, incarnation: 1 });
  fresh.join(join("agg0", ["aggregator"], { view: last }));
  for (let i = 0; i < 4; i++) {
    clock.t += 2000;
    for (const n of ["agg0", "agg1", "t0"]) {
      fresh.heartbeat({ type: "heartbeat", run: RUN, node: n, epoch: last.epoch });
    }
    fresh.tick();
  }
  deepEqual(fresh.view.trainers, ["t0"]);
  equal(fresh.view.round, last.round);
});

Deno.test("round reports from the past do not move the round back", () => {
  const clock = { t: 0 };
  const m = started(clock);
  m.roundClosed({ type: "round_closed", run: RUN, round: 0, node: "agg0" });
  m.roundClosed({ type: "round_closed", run: RUN, round: 1, node: "agg0" });
  equal(m.view.round, 2);
  const old = m.roundClosed({ type: "round_closed", run: RUN, round: 0, node: "agg1" });
  equal(old.view?.round, 2);
  const s = m.status();
  equal(s.round, 2);
  deepEqual(s.members.map((x) => x.node), ["agg0", "agg1", "t0", "t1"]);
});

Deno.test("a resumed run deals each returning trainer its own saved data shard, new ones the unsaved", () => {
  const clock = { t: 0 };
  const dataShard = (m: Membership, n: string) => m.members().find((x) => x.node === n)!.dataShard;
  // The host's trainers t0 and t1 saved shards 3 and 5; a joiner of the old run saved shard 1.
  const resumedShards = { byTrainer: { t0: 3, t1: 5 }, saved: [1, 3, 5] };
  const m = new Membership({ run: RUN, params: 2000, now: () => clock.t, resumedShards });
  m.join(join("agg0", ["aggregator"]));
  // Join order does not decide: t1 and a new joiner come first, t0 last.
  for (const t of ["t1", "j0", "j1", "t0"]) m.join(join(t));
  equal(dataShard(m, "t0"), 3);
  equal(dataShard(m, "t1"), 5);
  // The new joiner takes the saved shard no returning trainer is owed; the next one a fresh shard.
  equal(dataShard(m, "j0"), 1);
  equal(dataShard(m, "j1"), 0);
  m.start();
  // Once the run is open, a new trainer never starts a saved shard over.
  m.join(join("j2"));
  equal(dataShard(m, "j2"), 2);
  m.join(join("j3"));
  equal(dataShard(m, "j3"), 4);

  // Fewer trainers than saved shards: each takes its own; the others' shards stay unread.
  const few = new Membership({ run: RUN, params: 2000, now: () => clock.t, resumedShards });
  few.join(join("t1"));
  few.start();
  equal(dataShard(few, "t1"), 5);
});

Deno.test("a stall of the tracker itself is not counted as its members' silence", () => {
  const clock = { t: 0 };
  const m = started(clock, ["t0", "t1"]);
  const everyone = ["agg0", "agg1", "t0", "t1"];
  const beat = (nodes: string[]) => {
    for (const n of nodes) {
      m.heartbeat({ type: "heartbeat", run: RUN, node: n, epoch: m.view.epoch });
    }
  };
  // Ticks every second, heartbeats every two.
  for (; clock.t < 4000;) {
    clock.t += 1000;
    if (clock.t % 2000 === 0) beat(everyone);
    deepEqual(m.tick(), { evicted: [] });
  }
  // The tracker's process is busy for 14 s (the last heartbeats came at 4 s): the
  // members' heartbeats sent meanwhile wait behind the next tick.
  clock.t += 14_000;
  const after = m.tick();
  deepEqual(after.evicted, [], "nobody is evicted for the tracker's own stall");
  equal(after.stalledMs, 13_000);
  beat(everyone);
  // Silence after the stall still counts: t1 falls silent after its heartbeat at
  // 18 s and goes at the first tick past 6 s of it.
  const evictedAt: number[] = [];
  for (let i = 0; i < 8; i++) {
    clock.t += 1000;
    if (clock.t % 2000 === 0) beat(["agg0", "agg1", "t0"]);
    const c = m.tick();
    equal(c.stalledMs, undefined);
    if (c.evicted.length > 0) {
      deepEqual(c.evicted, ["t1"]);
      evictedAt.push(clock.t);
    }
  }
  deepEqual(evictedAt, [18_000 + 7000]);
});

Deno.test("a tracker that ticks late but within twice its interval compensates nothing", () => {
  const clock = { t: 0 };
  const m = new Membership({ run: RUN, params: 2000, now: () => clock.t, tickMs: 500 });
  m.join(join("agg0", ["aggregator"]));
  m.join(join("t0"));
  m.start();
  m.tick();
  // Silent for 7 s in ticks 1 s apart (twice the 500 ms interval): evicted at 7 s.
  let evicted: string[] = [];
  for (let i = 0; i < 7 && evicted.length === 0; i++) {
    clock.t += 1000;
    const c = m.tick();
    equal(c.stalledMs, undefined);
    evicted = c.evicted;
  }
  deepEqual(evicted, ["agg0", "t0"]);
  equal(clock.t, 7000);
});
