import { deepEqual, equal, ok, throws } from "@std/assert";
import { type OfferResult, ShardAggregator, type ShardAggregatorOptions } from "./aggregation.ts";
import { applyUpdate, dequantizeInt8, quantizeInt8, thetaHash } from "./int8_exchange.ts";
import { type ContributionMsg, shardMap, type ViewMsg } from "./run_protocol.ts";
import { applyCoded, toWire } from "./exchange.ts";
import { validateRunMessage } from "./run_protocol_validate.ts";
import { decode, encode } from "../transport/codec.ts";
import { parseExchange } from "../kernels/exchange_format.ts";
import { decodeRef, encodeRef, feedbackEncodeRef } from "../kernels/lowbit_reference.ts";
import { nesterovStepRef } from "../kernels/reference.ts";
import { parseAggregate } from "./robust_aggregate.ts";

const RUN = "run-a";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

function randomVec(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = r() * scale;
  return out;
}

/** The view of round `round` over one shard of `shards`, with `trainers`. */
function viewOf(
  shards: ViewMsg["shards"],
  trainers: string[],
  round = 0,
): ViewMsg {
  const n = shards.reduce((a, sh) => Math.max(a, sh.start + sh.length), 0);
  return {
    type: "view",
    run: RUN,
    epoch: round + 1,
    round,
    trainers,
    aggregators: ["agg0"],
    shards,
    params: n,
    block: 256,
    dataShards: trainers.map((_, i) => i),
    started: true,
    rounds: 0,
  };
}

function setup(
  n: number,
  trainers: string[],
  opts: {
    now?: () => number;
    lr?: number;
    momentum?: number;
    exchange?: string;
    updateExchange?: string;
  } = {},
) {
  const shards = shardMap(n, { aggregators: ["agg0"] });
  const view = viewOf(shards, trainers);
  const theta0 = randomVec(n, 7);
  const agg = new ShardAggregator({
    run: RUN,
    shard: shards[0],
    theta: theta0,
    now: opts.now,
    outer: { lr: opts.lr ?? 0.7, momentum: opts.momentum ?? 0.9 },
    exchange: opts.exchange,
    updateExchange: opts.updateExchange,
  });
  agg.setView(view);
  return { agg, view, theta0, shard: shards[0] };
}

function contribution(
  trainer: string,
  delta: Float32Array,
  extra: Partial<ContributionMsg> = {},
): ContributionMsg {
  const { q, scales } = quantizeInt8(delta);
  return {
    type: "contribution",
    run: RUN,
    round: 0,
    epoch: 1,
    trainer,
    shard: 0,
    tokens: 128,
    n: delta.length,
    q,
    scales,
    loss: 3,
    ...extra,
  };
}

function reason(r: OfferResult): string {
  return r.status === "rejected" ? r.rejection.reason : r.status;
}

Deno.test("quantizeInt8 round trip errs by at most half a step per element", () => {
  const x = randomVec(1000, 3, 4);
  const { q, scales } = quantizeInt8(x);
  equal(scales.length, 4);
  const y = dequantizeInt8(q, scales);
  for (let i = 0; i < x.length; i++) {
    ok(Math.abs(x[i] - y[i]) <= scales[Math.floor(i / 256)] / 2 + 1e-7, `element ${i}`);
  }
  // A zero block has scale 0 and codes 0; a NaN block has a NaN scale.
  const z = quantizeInt8(new Float32Array([0, 0, 0, 0]));
  equal(z.scales[0], 0);
  ok(Number.isNaN(quantizeInt8(new Float32Array([1, NaN])).scales[0]));
});

Deno.test("aggregator counts a trainer's contribution at most once", () => {
  const { agg } = setup(600, ["t0", "t1"]);
  const d = randomVec(600, 1, 0.01);
  equal(reason(agg.offer(contribution("t0", d))), "accepted");
  equal(reason(agg.offer(contribution("t0", d))), "duplicate");
  equal(reason(agg.offer(contribution("t0", randomVec(600, 2)))), "duplicate");
  ok(!agg.ready());
  equal(reason(agg.offer(contribution("t1", d))), "accepted");
  ok(agg.ready());
  const { update } = agg.close();
  deepEqual(update.contributors, ["t0", "t1"]);
  equal(update.tokens, 256);
  equal(agg.round, 1);
});

Deno.test("aggregator rejects bad contributions by name and keeps the good ones", () => {
  const { agg } = setup(600, ["t0", "t1", "t2"]);
  const d = randomVec(600, 1, 0.01);
  const nan = new Float32Array(d);
  nan[300] = NaN;
  const inf = new Float32Array(d);
  inf[5] = Infinity;
  equal(reason(agg.offer(contribution("t0", nan))), "non_finite");
  equal(reason(agg.offer(contribution("t0", inf))), "non_finite");
  equal(reason(agg.offer(contribution("t0", d, { loss: NaN }))), "non_finite");
  equal(reason(agg.offer(contribution("t0", randomVec(500, 1)))), "wrong_shape");
  equal(reason(agg.offer(contribution("t0", d, { round: 1 }))), "future_round");
  equal(reason(agg.offer(contribution("evil", d))), "not_member");
  equal(reason(agg.offer(contribution("t0", d, { run: "other" }))), "wrong_run");
  equal(reason(agg.offer(contribution("t0", d, { shard: 3 }))), "wrong_shard");
  const bad = contribution("t0", d);
  equal(reason(agg.offer({ ...bad, scales: new Float32Array(2) })), "wrong_shape");
  const neg = contribution("t0", d);
  neg.scales[0] = -1;
  equal(reason(agg.offer(neg)), "non_finite");
  // The rejections did not use up t0's one contribution.
  equal(reason(agg.offer(contribution("t0", d))), "accepted");
  equal(reason(agg.offer(contribution("t1", d))), "accepted");
  equal(reason(agg.offer(contribution("t2", d))), "accepted");
  agg.close();
  equal(reason(agg.offer(contribution("t0", d, { round: 0 }))), "stale_round");
});

Deno.test("aggregator rejects a contribution scaled by 1000 against the median", () => {
  const { agg } = setup(600, ["t0", "t1", "t2", "t3"]);
  const d = (s: number) => randomVec(600, s, 0.01);
  // Round 0: no history yet, the round's own median catches it at close.
  agg.offer(contribution("t0", d(1)));
  agg.offer(contribution("t1", d(2)));
  agg.offer(contribution("t2", d(3)));
  const huge = d(4).map((x) => x * 1000);
  equal(reason(agg.offer(contribution("t3", huge))), "accepted");
  const closed = agg.close();
  deepEqual(closed.update.contributors, ["t0", "t1", "t2"]);
  equal(closed.rejected.length, 1);
  equal(closed.rejected[0].reason, "absurd_norm");
  equal(closed.rejected[0].trainer, "t3");
  // Round 1: the history of accepted norms rejects it on arrival.
  const r1 = agg.offer(contribution("t3", huge, { round: 1 }));
  equal(reason(r1), "absurd_norm");
  ok(r1.status === "rejected" && r1.rejection.detail.includes("t3"));
  equal(reason(agg.offer(contribution("t3", d(5), { round: 1 }))), "accepted");
});

Deno.test("every trainer applying the update ends bit-identical with the aggregator", async () => {
  const n = 1000;
  const trainers = ["t0", "t1", "t2"];
  const { agg, theta0 } = setup(n, trainers);
  const copies = trainers.map(() => new Float32Array(theta0));
  for (let round = 0; round < 5; round++) {
    for (const [i, t] of trainers.entries()) {
      agg.offer(contribution(t, randomVec(n, 100 * round + i, 0.02), { round, tokens: 100 + i }));
    }
    const { update } = agg.close();
    // The update bytes travel; each trainer applies them to its own copy.
    const wire = structuredClone(update);
    for (const c of copies) applyUpdate(c, wire);
    const hashes = await Promise.all([...copies, agg.theta()].map(thetaHash));
    equal(new Set(hashes).size, 1, `round ${round}: ${hashes}`);
  }
  ok(copies[0].some((x, i) => x !== theta0[i]));
});

Deno.test("the update does not depend on arrival order", () => {
  const n = 700;
  const trainers = ["t0", "t1", "t2"];
  const a = setup(n, trainers).agg;
  const b = setup(n, trainers).agg;
  const cs = trainers.map((t, i) => contribution(t, randomVec(n, i, 0.05), { tokens: 50 + i }));
  for (const c of cs) a.offer(c);
  for (const c of [...cs].reverse()) b.offer(c);
  const ua = a.close().update;
  const ub = b.close().update;
  deepEqual(ua.q, ub.q);
  deepEqual(ua.scales, ub.scales);
});

Deno.test("outer step with lr 1 and no momentum is the token-weighted average", () => {
  const n = 512;
  const shard = shardMap(n, { aggregators: ["agg0"] })[0];
  const theta = randomVec(n, 9);
  const agg = new ShardAggregator({ run: RUN, shard, theta, outer: { lr: 1, momentum: 0 } });
  agg.setView(viewOf([shard], ["t0", "t1"]));
  const d0 = randomVec(n, 1, 0.1);
  const d1 = randomVec(n, 2, 0.1);
  agg.offer(contribution("t0", d0, { tokens: 300 }));
  agg.offer(contribution("t1", d1, { tokens: 100 }));
  agg.close();
  const got = agg.theta();
  for (let i = 0; i < n; i++) {
    const want = theta[i] - (0.75 * d0[i] + 0.25 * d1[i]);
    ok(Math.abs(got[i] - want) < 2e-3, `element ${i}: ${got[i]} vs ${want}`);
  }
});

Deno.test("error feedback keeps θ on the exact trajectory over many rounds", () => {
  const n = 256;
  const shard = shardMap(n, { aggregators: ["agg0"] })[0];
  const theta = new Float32Array(n);
  const agg = new ShardAggregator({ run: RUN, shard, theta, outer: { lr: 1, momentum: 0 } });
  const view = viewOf([shard], ["t0", "t1"]);
  agg.setView(view);
  // Each contribution is exact in int8, but their average has one large element
  // that sets the update's scale, so the small ones fall below half a step.
  const big = new Float32Array(n);
  big[0] = -1;
  const small = new Float32Array(n).fill(-0.002);
  small[0] = 0;
  const rounds = 40;
  for (let r = 0; r < rounds; r++) {
    agg.offer(contribution("t0", big, { round: r }));
    agg.offer(contribution("t1", small, { round: r }));
    agg.close();
  }
  const got = agg.theta();
  // Without feedback θ[1] would never move (0.001 < half a step of 0.5/127).
  ok(Math.abs(got[1] - rounds * 0.001) < 0.5 / 127, `θ[1] = ${got[1]}`);
  ok(Math.abs(got[0] - rounds * 0.5) < 0.01, `θ[0] = ${got[0]}`);
});

Deno.test("a round closes at the deadline with a quorum, not before, and not without one", () => {
  let t = 1000;
  const { agg } = setup(300, ["t0", "t1", "t2", "t3"], { now: () => t });
  equal(agg.quorum(), 2);
  t += 5000;
  agg.offer(contribution("t0", randomVec(300, 1, 0.01)));
  equal(agg.deadline(), 6000 + 10_000);
  t = 15_999;
  ok(!agg.ready());
  t = 16_000;
  ok(!agg.ready(), "one of four is below the quorum");
  agg.offer(contribution("t1", randomVec(300, 2, 0.01)));
  ok(agg.ready());
  const closed = agg.close();
  equal(closed.reason, "deadline");
  deepEqual(closed.missing, ["t2", "t3"]);
});

Deno.test("an evicted trainer is no longer waited for; what it sent still counts", () => {
  const { agg, view } = setup(300, ["t0", "t1", "t2"]);
  agg.offer(contribution("t0", randomVec(300, 1, 0.01)));
  agg.offer(contribution("t2", randomVec(300, 2, 0.01)));
  ok(!agg.ready());
  // t2 is evicted after sending, t1 before.
  agg.setView({ ...view, epoch: 2, trainers: ["t0"], dataShards: [0] });
  ok(agg.ready());
  const closed = agg.close();
  deepEqual(closed.update.contributors, ["t0", "t2"]);
  equal(closed.reason, "complete");
});

Deno.test("a joiner's contribution made under a newer view waits for that view", () => {
  const { agg, view } = setup(300, ["t0"]);
  agg.offer(contribution("t0", randomVec(300, 1, 0.01)));
  agg.close();
  const early = contribution("t1", randomVec(300, 2, 0.01), { round: 1, epoch: 2 });
  equal(reason(agg.offer(early)), "parked");
  const results = agg.setView({
    ...view,
    epoch: 2,
    round: 1,
    trainers: ["t0", "t1"],
    dataShards: [0, 1],
  });
  deepEqual(results.map(reason), ["accepted"]);
  deepEqual(agg.missing(), ["t0"]);
});

Deno.test("an aggregator restored from its state continues identically", () => {
  const n = 600;
  const { agg, view, shard } = setup(n, ["t0", "t1"]);
  for (let r = 0; r < 2; r++) {
    agg.offer(contribution("t0", randomVec(n, r, 0.03), { round: r }));
    agg.offer(contribution("t1", randomVec(n, r + 9, 0.03), { round: r }));
    agg.close();
  }
  const saved = agg.state();
  const twin = new ShardAggregator({
    run: RUN,
    shard,
    theta: saved.theta,
    round: saved.round,
    outer: { lr: 0.7, momentum: 0.9 },
    restore: saved,
  });
  twin.setView({ ...view, round: 2, epoch: 2 });
  agg.setView({ ...view, round: 2, epoch: 2 });
  for (const a of [agg, twin]) {
    a.offer(contribution("t0", randomVec(n, 50, 0.03), { round: 2, epoch: 2 }));
    a.offer(contribution("t1", randomVec(n, 51, 0.03), { round: 2, epoch: 2 }));
  }
  const u1 = agg.close().update;
  const u2 = twin.close().update;
  deepEqual(u1.q, u2.q);
  deepEqual(u1.scales, u2.scales);
  deepEqual(agg.theta(), twin.theta());
});

Deno.test("closing a round with nothing accepted is an error", () => {
  const { agg } = setup(300, ["t0"]);
  throws(() => agg.close(), /no contribution accepted/);
  throws(() => applyUpdate(new Float32Array(3), quantizeInt8(new Float32Array(4))), /θ has 3/);
});

/** A contribution of `delta` in a low-bit format, as a trainer without history sends it. */
function coded(trainer: string, name: string, delta: Float32Array): ContributionMsg {
  const f = parseExchange(name);
  return {
    ...contribution(trainer, delta),
    format: name,
    ...toWire(f, encodeRef(f, delta), delta.length),
  };
}

function lowBitSetup(exchange: string, trainers: string[]) {
  return setup(600, trainers, { lr: 1, momentum: 0, exchange }).agg;
}

Deno.test("aggregator refuses a contribution in another exchange format by name", () => {
  const d = randomVec(600, 3, 0.01);
  const int4 = lowBitSetup("int4", ["t0"]);
  equal(reason(int4.offer(contribution("t0", d))), "wrong_format", "int8 to an int4 run");
  equal(reason(int4.offer(coded("t0", "topk:0.05", d))), "wrong_format");
  equal(reason(int4.offer({ ...coded("t0", "int4", d), format: "int3" })), "wrong_format");
  const r = int4.offer(coded("t0", "topk:0.1", d));
  ok(r.status === "rejected" && /topk:0.1, the run exchanges int4/.test(r.rejection.detail));
  const topk = lowBitSetup("topk:0.05", ["t0"]);
  equal(reason(topk.offer(coded("t0", "topk:0.1", d))), "wrong_format", "another fraction");
  equal(reason(topk.offer(coded("t0", "topk:0.05", d))), "accepted", "`topk:.05` is one format");
  const int8 = lowBitSetup("int8", ["t0"]);
  equal(reason(int8.offer(coded("t0", "int4", d))), "wrong_format", "int4 to an int8 run");
});

Deno.test("aggregator refuses int4 codes and top-k offsets of the wrong length or place", () => {
  const d = randomVec(600, 4, 0.01);
  const int4 = lowBitSetup("int4", ["t0"]);
  const c4 = coded("t0", "int4", d);
  equal(c4.q.length, 300);
  equal(reason(int4.offer({ ...c4, q: c4.q.subarray(0, 299) })), "wrong_shape");
  equal(reason(int4.offer({ ...c4, q: new Int8Array(600) })), "wrong_shape", "int8's length");
  equal(reason(int4.offer({ ...c4, scales: c4.scales.subarray(1) })), "wrong_shape");
  equal(reason(int4.offer({ ...c4, idx: new Uint8Array(1) })), "wrong_shape", "idx is top-k's");
  const bad = { ...c4, scales: c4.scales.slice() };
  bad.scales[3] = Infinity;
  equal(reason(int4.offer(bad)), "non_finite");
  equal(reason(int4.offer(c4)), "accepted");

  // 600 values: blocks of 256, 256 and 88; at 5%, 13 + 13 + 5 values.
  const topk = lowBitSetup("topk:0.05", ["t0"]);
  const ck = coded("t0", "topk:0.05", d);
  equal(ck.idx!.length, 31);
  equal(reason(topk.offer({ ...ck, idx: ck.idx!.subarray(1) })), "wrong_shape");
  equal(
    reason(topk.offer({ ...ck, q: ck.q.subarray(1), idx: ck.idx!.subarray(1) })),
    "wrong_shape",
  );
  equal(reason(topk.offer({ ...ck, idx: undefined })), "wrong_shape");
  const at = (j: number, offset: number) => {
    const idx = ck.idx!.slice();
    idx[j] = offset;
    return topk.offer({ ...ck, idx });
  };
  const outside = at(30, 88);
  ok(outside.status === "rejected" && outside.rejection.reason === "bad_index");
  ok(
    outside.status === "rejected" &&
      /offset 88 of block 2 is outside its 88 values/.test(outside.rejection.detail),
  );
  const repeated = at(1, ck.idx![0]);
  ok(repeated.status === "rejected" && repeated.rejection.reason === "bad_index");
  ok(repeated.status === "rejected" && /is repeated/.test(repeated.rejection.detail));
  equal(reason(at(0, 255)), "bad_index", "offsets that do not increase");
  equal(reason(topk.offer(ck)), "accepted");
});

Deno.test("aggregator averages int4 and top-k contributions in fp32 as the trainers coded them", () => {
  for (const name of ["int4", "topk:0.05"]) {
    const f = parseExchange(name);
    const agg = lowBitSetup(name, ["t0", "t1"]);
    const d0 = randomVec(600, 5, 0.02);
    const d1 = randomVec(600, 6, 0.02);
    equal(reason(agg.offer(coded("t0", name, d0))), "accepted");
    equal(reason(agg.offer(coded("t1", name, d1))), "accepted");
    const theta0 = agg.theta();
    const { update } = agg.close();
    // Plain averaging (lr 1): θ_1 = θ_0 − mean(decoded), within the int8 update's rounding.
    const a = decodeRef(f, encodeRef(f, d0), 600);
    const b = decodeRef(f, encodeRef(f, d1), 600);
    const theta = applyUpdate(theta0.slice(), update);
    for (let i = 0; i < 600; i++) {
      const want = theta0[i] - (a[i] + b[i]) / 2;
      ok(Math.abs(theta[i] - want) <= 1e-4, `${name} element ${i}: ${theta[i]} vs ${want}`);
    }
    ok(sameBitsOf(agg.theta(), theta), `${name}: the aggregator's θ is what trainers apply`);
  }
});

function sameBitsOf(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** An aggregator of one 1024-value shard in 2 fragments (lr 1, no momentum), with `extra` options. */
function twoFragments(extra: Partial<ShardAggregatorOptions> = {}) {
  const n = 1024;
  const [shard] = shardMap(n, { aggregators: ["agg0"] });
  const theta0 = randomVec(n, 3);
  const agg = new ShardAggregator({
    run: RUN,
    shard,
    theta: theta0,
    outer: { lr: 1, momentum: 0 },
    fragments: 2,
    ...extra,
  });
  return { n, shard, theta0, agg };
}

Deno.test("aggregator with fragments: each round aggregates one piece of the shard", () => {
  const { n, shard, theta0, agg } = twoFragments();
  const view = (round: number) => viewOf([shard], ["t0"], round);
  agg.setView(view(0));
  deepEqual(agg.piece(), { lo: 0, hi: 512 });
  // The whole shard is the wrong shape in a fragmented round.
  const whole = agg.offer(contribution("t0", randomVec(n, 4, 0.01)));
  equal(whole.status, "rejected");
  ok(whole.status === "rejected" && whole.rejection.reason === "wrong_shape");
  const piece0 = randomVec(512, 5, 0.01);
  equal(agg.offer(contribution("t0", piece0)).status, "accepted");
  const { update } = agg.close();
  equal(update.n, 512);
  const theta1 = agg.theta();
  const want = theta0.slice(0, 512);
  applyUpdate(want, update);
  deepEqual(theta1.slice(0, 512), want);
  // The other piece waits for its round.
  deepEqual(theta1.slice(512), theta0.slice(512));
  agg.setView(view(1));
  deepEqual(agg.piece(), { lo: 512, hi: 1024 });
  const piece1 = randomVec(512, 6, 0.01);
  equal(agg.offer(contribution("t0", piece1, { round: 1, epoch: 2 })).status, "accepted");
  equal(agg.close().update.n, 512);
  deepEqual(agg.theta().slice(0, 512), theta1.slice(0, 512));
  // More fragments than the shard has blocks are refused when the aggregator is made.
  throws(
    () => new ShardAggregator({ run: RUN, shard, theta: theta0, fragments: 5 }),
    /5 fragments of a shard of 4 blocks/,
  );
});

Deno.test("centered clipping with fragments keeps each piece's own center", () => {
  const { shard, agg } = twoFragments({ aggregate: { kind: "clip", tau: 1 } });
  const view = (round: number) => viewOf([shard], ["t0", "t1"], round);
  const round = (r: number, seed: number) => {
    agg.setView(view(r));
    for (const [i, t] of ["t0", "t1"].entries()) {
      const msg = contribution(t, randomVec(512, seed + i, 0.01), { round: r, epoch: r + 1 });
      equal(agg.offer(msg).status, "accepted");
    }
    agg.close();
    return agg.state().center!;
  };
  const after0 = new Float32Array(round(0, 10));
  // Round 0 moved piece 0 only: piece 1's center is still zero.
  ok(after0.subarray(0, 512).some((x) => x !== 0));
  ok(after0.subarray(512).every((x) => x === 0));
  const after1 = round(1, 20);
  // Round 1 set piece 1's center and left piece 0's as round 0 made it.
  ok(sameBitsOf(after1.subarray(0, 512), after0.subarray(0, 512)));
  ok(after1.subarray(512).some((x) => x !== 0));
});

Deno.test("a top-k or int4 update: sparse on the wire, applied bit-identically by every trainer", async () => {
  for (const name of ["topk:0.03", "int4"]) {
    const n = 1000;
    const trainers = ["t0", "t1"];
    const { agg, theta0 } = setup(n, trainers, { updateExchange: name });
    const copies = trainers.map(() => new Float32Array(theta0));
    for (let round = 0; round < 6; round++) {
      for (const [i, t] of trainers.entries()) {
        agg.offer(contribution(t, randomVec(n, 10 * round + i, 0.02), { round }));
      }
      const { update } = agg.close();
      equal(update.format, name);
      if (name.startsWith("topk")) {
        // ceil(0.03 × 256) = 8 values of each full block, ceil(0.03 × 232) = 7 of the last.
        equal(update.q.length, 3 * 8 + 7, `round ${round}`);
        equal(update.idx?.length, update.q.length);
      } else {
        equal(update.q.length, n / 2);
      }
      // Through msgpack and the wire validator, as a trainer receives it.
      const wire = validateRunMessage(decode(encode(update)));
      if (wire.type !== "update") throw new Error(wire.type);
      for (const c of copies) applyCoded(c, wire);
      const hashes = await Promise.all([...copies, agg.theta()].map(thetaHash));
      equal(new Set(hashes).size, 1, `${name} round ${round}: ${hashes}`);
    }
  }
});

Deno.test("a top-k update's error feedback: what one round leaves out arrives later", () => {
  const n = 256;
  const shard = shardMap(n, { aggregators: ["agg0"] })[0];
  const agg = new ShardAggregator({
    run: RUN,
    shard,
    theta: new Float32Array(n),
    outer: { lr: 1, momentum: 0 },
    updateExchange: "topk:0.25",
  });
  agg.setView(viewOf([shard], ["t0"]));
  // Every value moves by the same amount each round; a quarter of them fit an update.
  const delta = new Float32Array(n).fill(-0.01);
  const rounds = 40;
  for (let r = 0; r < rounds; r++) {
    agg.offer(contribution("t0", delta, { round: r }));
    const { update } = agg.close();
    equal(update.q.length, 64);
  }
  // Without the residual each value would have moved in a quarter of the rounds at most.
  const got = agg.theta();
  for (let i = 0; i < n; i++) {
    ok(Math.abs(got[i] - rounds * 0.01) < 0.05, `θ[${i}] = ${got[i]}, want ${rounds * 0.01}`);
  }
});

Deno.test("an update that does not fit θ is refused by name", () => {
  const { agg } = setup(600, ["t0"], { updateExchange: "topk:0.05" });
  agg.offer(contribution("t0", randomVec(600, 3, 0.02)));
  const { update } = agg.close();
  throws(() => applyCoded(new Float32Array(500), update), RangeError, "topk:0.05 update: q");
  const repeated = { ...update, idx: update.idx!.slice() };
  repeated.idx[1] = repeated.idx[0];
  throws(() => applyCoded(new Float32Array(600), repeated), RangeError, "idx offset");
  throws(
    () => validateRunMessage({ ...update, idx: update.idx!.subarray(1) }),
    Error,
    "idx",
  );
  throws(
    () => validateRunMessage({ ...update, format: "int3" }),
    Error,
    "format",
  );
});

Deno.test("a top-k update with fragments codes the round's piece only", () => {
  const { shard, theta0, agg } = twoFragments({ updateExchange: "topk:0.05" });
  const copy = new Float32Array(theta0);
  for (let round = 0; round < 4; round++) {
    agg.setView(viewOf([shard], ["t0"], round));
    const { lo, hi } = agg.piece();
    agg.offer(
      contribution("t0", randomVec(hi - lo, 20 + round, 0.01), { round, epoch: round + 1 }),
    );
    const { update } = agg.close();
    // 13 of each block of 256 in the piece of 512.
    deepEqual([update.n, update.q.length, update.format], [512, 26, "topk:0.05"]);
    applyCoded(copy.subarray(lo, hi), update);
    deepEqual(copy, agg.theta(), `round ${round}`);
  }
});

Deno.test("work arrays kept from round to round change no update: pieces of unequal length", () => {
  // Three fragments of 1000 values (blocks of 256): pieces of 512, 256 and 232,
  // so a round's work arrays are longer than the piece and hold the last round's values.
  const n = 1000;
  const [shard] = shardMap(n, { aggregators: ["agg0"] });
  const options = {
    run: RUN,
    shard,
    outer: { lr: 0.7, momentum: 0.9 },
    fragments: 3,
    exchange: "int4",
    updateExchange: "int4",
  };
  const agg = new ShardAggregator({ ...options, theta: randomVec(n, 11) });
  for (let r = 0; r < 7; r++) {
    // A fresh aggregator restored from the state has no work arrays yet.
    const saved = agg.state();
    const fresh = new ShardAggregator({ ...options, theta: saved.theta, round: r, restore: saved });
    const { lo, hi } = agg.piece();
    const updates = [agg, fresh].map((a) => {
      a.setView(viewOf([shard], ["t0", "t1"], r));
      for (const [i, t] of ["t0", "t1"].entries()) {
        const f = parseExchange("int4");
        const x = randomVec(hi - lo, 100 * r + i, 0.02);
        a.offer({
          ...contribution(t, x, { round: r, epoch: r + 1 }),
          format: "int4",
          ...toWire(f, encodeRef(f, x), hi - lo),
        });
      }
      return a.close().update;
    });
    deepEqual(updates[0].q, updates[1].q, `round ${r}`);
    deepEqual(updates[0].scales, updates[1].scales, `round ${r}`);
    deepEqual(agg.state(), fresh.state(), `round ${r}`);
  }
});

Deno.test("a close in ranges with pauses between them gives the bits of a close in one go", async () => {
  const n = 5000;
  const [shard] = shardMap(n, { aggregators: ["agg0"] });
  const cases: {
    exchange: string;
    updateExchange: string;
    fragments: number;
    aggregate?: string;
  }[] = [
    { exchange: "int8", updateExchange: "int8", fragments: 1 },
    { exchange: "int4", updateExchange: "int4", fragments: 2 },
    { exchange: "topk:0.05", updateExchange: "topk:0.1", fragments: 1 },
    { exchange: "int8", updateExchange: "int8", fragments: 1, aggregate: "median" },
  ];
  for (const c of cases) {
    const options = {
      run: RUN,
      shard,
      outer: { lr: 0.7, momentum: 0.9 },
      exchange: c.exchange,
      updateExchange: c.updateExchange,
      fragments: c.fragments,
      ...(c.aggregate ? { aggregate: parseAggregate(c.aggregate) } : {}),
    };
    const whole = new ShardAggregator({ ...options, theta: randomVec(n, 21) });
    const ranged = new ShardAggregator({ ...options, theta: randomVec(n, 21) });
    const f = parseExchange(c.exchange);
    for (let r = 0; r < 4; r++) {
      const { lo, hi } = whole.piece();
      let pauses = 0;
      const updates = [];
      for (const a of [whole, ranged]) {
        a.setView(viewOf([shard], ["t0", "t1", "t2"], r));
        for (const [i, t] of ["t0", "t1", "t2"].entries()) {
          const x = randomVec(hi - lo, 1000 * r + i, 0.02);
          a.offer({
            ...contribution(t, x, { round: r, epoch: r + 1, tokens: 100 + 10 * i }),
            ...(c.exchange === "int8" ? {} : { format: c.exchange }),
            ...toWire(f, encodeRef(f, x), hi - lo),
          });
        }
        updates.push(
          a === whole ? a.close().update : (await a.closeInRanges({
            chunk: 1000, // rounded up to 1024, a multiple of every block
            pause: () => {
              pauses++;
              return Promise.resolve();
            },
          })).update,
        );
      }
      const what = `${JSON.stringify(c)} round ${r}`;
      deepEqual(updates[1], updates[0], what);
      let statePauses = 0;
      const state = await ranged.stateInRanges({
        chunk: 1000,
        pause: () => Promise.resolve(void statePauses++),
      });
      deepEqual(state, whole.state(), what);
      // θ, momentum and residual of 5000 values in ranges of 1000 (and the median's none).
      equal(statePauses, 3 * 5 - 1, what);
      // A state smaller than one range is copied without a pause.
      await ranged.stateInRanges({ pause: () => Promise.resolve(void statePauses++) });
      equal(statePauses, 3 * 5 - 1, what);
      // The mean is cut in ranges of 1024 with a pause between two; a robust rule runs whole.
      equal(pauses, c.aggregate ? 0 : Math.ceil((hi - lo) / 1024) - 1, what);
    }
  }
});

Deno.test("a fresh aggregator's state: θ copied, momentum and residual fresh zeros its closes never touch", async () => {
  const n = 1000;
  const { agg, theta0 } = setup(n, ["t0", "t1"], { updateExchange: "int4" });
  const twin = setup(n, ["t0", "t1"], { updateExchange: "int4" }).agg;
  for (const state of [agg.state(), await agg.stateInRanges({ chunk: 256 })]) {
    deepEqual(state.theta, theta0);
    deepEqual(state.momentum, new Float32Array(n));
    deepEqual(state.residual, new Float32Array(n));
    // Scribbled on by whoever holds the state: nothing of it reaches the aggregator.
    state.theta.fill(9);
    state.momentum.fill(9);
    state.residual.fill(9);
  }
  const closes = [agg, twin].map((a) => {
    for (const t of ["t0", "t1"]) a.offer(contribution(t, randomVec(n, t === "t0" ? 1 : 2, 0.01)));
    return a.close().update;
  });
  deepEqual(closes[0], closes[1]);
  // After a close the state copies what the close wrote (an int4 update leaves a residual).
  const after = agg.state();
  deepEqual(after, twin.state());
  ok(after.momentum.some((x) => x !== 0) && after.residual.some((x) => x !== 0));
});

Deno.test("the int8 mean's close is the reference chain, bit for bit, in one go and in ranges", async () => {
  const n = 1000; // not a multiple of the 256-value block
  const trainers = ["t0", "t1", "t2"];
  const tokens = [300, 100, 77];
  const { agg: whole, theta0, shard } = setup(n, trainers);
  const ranged = new ShardAggregator({
    run: RUN,
    shard,
    theta: theta0,
    outer: { lr: 0.7, momentum: 0.9 },
  });
  ranged.setView(viewOf([shard], trainers));
  // The reference: decode each contribution, sum the token-weighted values in f32 in trainer
  // order, Nesterov step, code the move with error feedback, add what is sent.
  const theta = theta0.slice();
  const momentum = new Float32Array(n);
  const residual = new Float32Array(n);
  const fr = Math.fround;
  for (let round = 0; round < 3; round++) {
    // A block every trainer leaves still: its update's scale is 0 (its codes, θ and residual as they were).
    const msgs = trainers.map((t, j) =>
      contribution(t, randomVec(n, 100 * round + j, 0.05).fill(0, 256, 512), {
        round,
        tokens: tokens[j],
      })
    );
    const total = tokens.reduce((x, y) => x + y, 0);
    const delta = new Float32Array(n);
    for (const m of msgs) {
      const w = fr(m.tokens / total);
      const d = dequantizeInt8(m.q, m.scales);
      for (let i = 0; i < n; i++) delta[i] += fr(w * d[i]);
    }
    const target = theta.slice();
    nesterovStepRef({ theta: target, momentum, delta }, { n, lr: 0.7, mu: 0.9 });
    const move = new Float32Array(n);
    for (let i = 0; i < n; i++) move[i] = target[i] - theta[i];
    const sent = new Float32Array(n);
    feedbackEncodeRef({ kind: "int8", block: 256 }, move, residual, { x: move, sent });
    for (let i = 0; i < n; i++) theta[i] += sent[i];

    for (const m of msgs) {
      equal(reason(whole.offer(m)), "accepted");
      equal(reason(ranged.offer(m)), "accepted");
    }
    whole.close();
    await ranged.closeInRanges({ chunk: 256, pause: () => Promise.resolve() });
    for (const agg of [whole, ranged]) {
      const st = agg.state();
      ok(sameBitsOf(st.theta, theta), `round ${round}: θ`);
      ok(sameBitsOf(st.momentum, momentum), `round ${round}: momentum`);
      ok(sameBitsOf(st.residual, residual), `round ${round}: residual`);
    }
  }
});

Deno.test("applyUpdate adds what dequantizeInt8 decodes, bit for bit, for any block and a short last block", () => {
  for (const block of [256, 64]) {
    const n = 1000;
    const r = rng(block);
    const q = new Int8Array(n).map(() => Math.floor(r() * 256) - 128);
    const scales = new Float32Array(Math.ceil(n / block)).map(() => r() * 1e-2);
    const theta = randomVec(n, block + 1);
    const want = theta.slice();
    dequantizeInt8(q, scales, { block, out: want, accumulate: true });
    ok(sameBitsOf(applyUpdate(theta, { q, scales }, { block }), want), `block ${block}`);
  }
});
