import { deepEqual, equal, ok, rejects, throws } from "@std/assert";
import { Packr } from "msgpackr";
import {
  type ContributionMsg,
  MESSAGE_TYPES,
  ProtocolError,
  sealReport,
  shardMap,
  type TrainerReportMsg,
  type ViewMsg,
} from "./run_protocol.ts";
import { validateRunMessage } from "./run_protocol_validate.ts";
import { quantizeInt8 } from "./int8_exchange.ts";
import { startRunHost } from "./host.ts";
import { ActorSystem } from "./runtime/system.ts";
import { toWire } from "./exchange.ts";
import { parseExchange } from "../kernels/exchange_format.ts";
import { encodeRef } from "../kernels/lowbit_reference.ts";
import { decode, encodeOwned } from "../transport/codec.ts";

const view: ViewMsg = {
  type: "view",
  run: "r",
  epoch: 3,
  round: 2,
  trainers: ["t0", "t1"],
  aggregators: ["a0"],
  shards: shardMap(1000, { aggregators: ["a0", "a1"] }),
  params: 1000,
  block: 256,
  dataShards: [0, 1],
  started: true,
  rounds: 0,
};

function contribution(): ContributionMsg {
  const x = new Float32Array(600).map((_, i) => Math.sin(i) / 10);
  const { q, scales } = quantizeInt8(x);
  return {
    type: "contribution",
    run: "r",
    round: 2,
    epoch: 3,
    trainer: "t0",
    shard: 1,
    tokens: 1024,
    n: 600,
    q,
    scales,
    loss: 2.5,
  };
}

Deno.test("every message type validates and keeps its fields", () => {
  const c = contribution();
  const samples = [
    { type: "join", run: "r", node: "t0", roles: ["trainer"], dataShard: 2, view },
    {
      type: "join_reply",
      run: "r",
      node: "t0",
      status: "pending",
      dataShard: 1,
      view,
      incarnation: 0,
    },
    { type: "leave", run: "r", node: "t0" },
    { type: "heartbeat", run: "r", node: "t0", epoch: 3, news: 2 },
    {
      type: "heartbeat_ack",
      run: "r",
      known: true,
      incarnation: 1,
      epoch: 3,
      view,
      news: { round: 4, eval_loss: 2.5, sample: { prompt: "The ", text: "end" } },
    },
    view,
    c,
    {
      type: "reject",
      run: "r",
      round: 2,
      trainer: "t0",
      shard: 0,
      reason: "stale_round",
      detail: "x",
    },
    {
      type: "update",
      run: "r",
      round: 2,
      shard: 1,
      n: 600,
      q: c.q,
      scales: c.scales,
      contributors: ["t0"],
      loss: 2,
      tokens: 9,
    },
    { type: "state_request", run: "r", shard: 0, seed: new Float32Array(3) },
    { type: "state", run: "r", round: 1, shard: 0, theta: new Float32Array([1, 2]) },
    { type: "resend", run: "r", round: 1, shard: 0 },
    { type: "round_closed", run: "r", round: 1, node: "a0", view },
    sealReport({
      type: "trainer_report",
      run: "r",
      trainer: "t0",
      round: 1,
      hash: "ab",
      loss: 2,
      contributed: true,
      innerMs: 5,
      blockedMs: 1,
      bytesUp: 10,
      bytesDown: 10,
    }),
  ];
  deepEqual(new Set(samples.map((s) => s.type)), new Set(MESSAGE_TYPES));
  for (const s of samples) deepEqual(validateRunMessage(s), s, s.type);
});

Deno.test("a contribution survives the msgpack wire and validates with typed arrays", () => {
  const c = contribution();
  const packr = new Packr({ useRecords: false, moreTypes: true });
  const back = validateRunMessage(packr.unpack(packr.pack(c))) as ContributionMsg;
  ok(back.q instanceof Int8Array);
  ok(back.scales instanceof Float32Array);
  deepEqual(Array.from(back.q), Array.from(c.q));
  deepEqual(Array.from(back.scales), Array.from(c.scales));
  // Bytes in place of typed arrays (another msgpack client) are viewed, not refused.
  const bytes = validateRunMessage({
    ...c,
    q: new Uint8Array(c.q.buffer, c.q.byteOffset, c.q.byteLength),
    scales: new Uint8Array(c.scales.buffer.slice(0)),
  }) as ContributionMsg;
  deepEqual(Array.from(bytes.q), Array.from(c.q));
  deepEqual(Array.from(bytes.scales), Array.from(c.scales));
});

Deno.test("malformed messages are refused with the field named", () => {
  const c = contribution();
  const ack = { type: "heartbeat_ack", run: "r", known: true, incarnation: 1, epoch: 3 };
  const cases: [unknown, RegExp][] = [
    [null, /expected an object/],
    [[1], /expected an object/],
    [{ type: "hello" }, /unknown type "hello"/],
    [{ type: "leave", run: "r" }, /leave message: node/],
    [{ type: "join", run: "r", node: "n", roles: ["boss"] }, /unknown role "boss"/],
    [{ type: "join", run: "r", node: "n", roles: [] }, /roles must not be empty/],
    [{ type: "heartbeat", run: "r", node: "n", epoch: -1 }, /epoch must be an integer/],
    [{ type: "heartbeat", run: "r", node: "n", epoch: 1, news: "x" }, /news must be an integer/],
    [{ ...ack, news: { round: 1, eval_loss: NaN } }, /news message: eval_loss must be finite/],
    [{ ...ack, news: { round: -1, eval_loss: 2 } }, /news message: round must be an integer/],
    [
      { ...ack, news: { round: 1, eval_loss: 2, sample: { prompt: "a", text: "x".repeat(5000) } } },
      /news message: sample.text must be a string of at most 4096/,
    ],
    [{ ...ack, news: { round: 1, eval_loss: 2, sample: { text: "x" } } }, /sample.prompt/],
    [{ ...c, n: 601 }, /q must have n=601/],
    [{ ...c, scales: new Float32Array(2) }, /scales must have 3 entries/],
    [{ ...c, q: [1, 2, 3] }, /q must be an Int8Array/],
    [{ ...c, tokens: 0 }, /tokens must be an integer >= 1/],
    [{ ...c, round: 1.5 }, /round must be an integer/],
    [{ ...c, scales: new Uint8Array(5) }, /scales must be a Float32Array/],
    [{ ...c, trainer: "x".repeat(200) }, /trainer must be a non-empty string/],
    [{ ...view, shards: [] }, /shards must be a non-empty array/],
    [{ ...view, params: 999 }, /must cover 999 params/],
    [{ ...view, dataShards: [0] }, /dataShards must have one entry per trainer/],
    [{ type: "state", run: "r", round: 0, shard: 0, theta: new Float32Array(0) }, /theta/],
  ];
  for (const [msg, re] of cases) {
    throws(() => validateRunMessage(msg), (e: unknown) => {
      if (!(e instanceof ProtocolError)) throw e;
      ok(re.test(e.message), `${e.message} should match ${re}`);
      return true;
    });
  }
});

Deno.test("shardMap splits on block boundaries, evenly, and assigns owners round-robin", () => {
  const s = shardMap(10_000, { aggregators: ["a", "b", "c"], count: 4 });
  equal(s.length, 4);
  equal(s.reduce((n, x) => n + x.length, 0), 10_000);
  for (const x of s) equal(x.start % 256, 0);
  deepEqual(s.map((x) => x.aggregator), ["a", "b", "c", "a"]);
  // More shards than blocks: one shard per block.
  equal(shardMap(300, { aggregators: ["a"], count: 8 }).length, 2);
  throws(() => shardMap(10, { aggregators: [] }), /no aggregators/);
});

Deno.test("a host refuses a keepers' CPU budget outside (0, 1] before it starts anything", async () => {
  for (const backgroundDuty of [0, 1.5]) {
    const system = new ActorSystem({ node: "host" });
    try {
      await rejects(
        startRunHost({
          run: "r",
          config: "small",
          rounds: 1,
          innerSteps: 1,
          outer: { lr: 0.7, momentum: 0.9 },
          checkpoint: { dir: "/nonexistent", backgroundDuty },
          emit: () => {},
        }, system),
        new RegExp(
          `^RangeError: Invalid checkpoint options: backgroundDuty must be in \\(0, 1\\], got ${backgroundDuty}$`,
        ),
      );
    } finally {
      await system.shutdown();
    }
  }
});

/** The test contribution coded in a low-bit format, as a trainer sends it. */
function lowBit(name: string): ContributionMsg {
  const c = contribution();
  const x = new Float32Array(600).map((_, i) => Math.sin(i) / 10);
  const f = parseExchange(name);
  return { ...c, format: name, ...toWire(f, encodeRef(f, x), 600) };
}

Deno.test("int4 and top-k contributions survive the msgpack wire with their format", () => {
  const packr = new Packr({ useRecords: false, moreTypes: true });
  for (const name of ["int4", "topk:0.05"]) {
    const c = lowBit(name);
    const back = validateRunMessage(packr.unpack(packr.pack(c))) as ContributionMsg;
    equal(back.format, name);
    ok(back.q instanceof Int8Array);
    deepEqual(Array.from(back.q), Array.from(c.q));
    deepEqual(Array.from(back.scales), Array.from(c.scales));
    if (name === "int4") equal(back.idx, undefined);
    else {
      ok(back.idx instanceof Uint8Array);
      deepEqual(Array.from(back.idx!), Array.from(c.idx!));
    }
  }
  // A top-k fraction is named one way: `topk:.05` comes out as `topk:0.05`.
  equal(
    (validateRunMessage({ ...lowBit("topk:0.05"), format: "topk:.05" }) as ContributionMsg).format,
    "topk:0.05",
  );
});

Deno.test("malformed int4 and top-k contributions are refused with the field named", () => {
  const c4 = lowBit("int4");
  const ck = lowBit("topk:0.05");
  const cases: [unknown, RegExp][] = [
    [
      { ...c4, format: "int3" },
      /contribution message: format is "int3" \(known: int8, int4, topk:F/,
    ],
    [{ ...c4, format: 4 }, /format must be a string/],
    [{ ...c4, q: c4.q.subarray(1) }, /q must have 300 bytes \(int4 codes of n=600\), has 299/],
    [{ ...c4, n: 601 }, /q must have 301 bytes/],
    [{ ...c4, scales: new Float32Array(9) }, /scales must have 10 entries \(one per 64\), has 9/],
    [{ ...c4, idx: new Uint8Array(2) }, /idx must be absent for int4/],
    [{ ...ck, idx: undefined }, /idx must have 31 offsets \(topk:0.05 of n=600\), has none/],
    [{ ...ck, idx: ck.idx!.subarray(2) }, /idx must have 31 offsets/],
    [{ ...ck, idx: [1, 2] }, /idx must be bytes/],
    [{ ...ck, q: ck.q.subarray(2), idx: ck.idx!.subarray(2) }, /q must have 31 values/],
    [{ ...ck, format: "topk:0" }, /top-k fraction must be a number in \(0, 1\]/],
  ];
  for (const [msg, re] of cases) {
    throws(() => validateRunMessage(msg), (e: unknown) => {
      if (!(e instanceof ProtocolError)) throw e;
      ok(re.test(e.message), `${e.message} should match ${re}`);
      return true;
    });
  }
});

Deno.test("a trainer report with any one bit flipped on the wire is refused, never counted with another θ hash or round", () => {
  // The fault layer flips one bit of a frame; a report is sent without the
  // transport's chunk digest, so without its check 135 of these flips gave a
  // valid report with another hash or round: a round whose trainers all
  // held the same θ showed two hashes (the fault_chaos "divergent round").
  const report = sealReport({
    type: "trainer_report",
    run: "fault-run",
    trainer: "n1/node/trainer",
    round: 40,
    hash: "0123456789abcdef",
    loss: 2.91234,
    contributed: true,
    innerMs: 52.3,
    blockedMs: 3.1,
    bytesUp: 12345,
    bytesDown: 23456,
    cursor: { seed: 1, shard: { index: 1, count: 16 }, step: 120 },
  });
  const envelope = { v: 1, run: "fault-run", from: "n1", to: "host/monitor", kind: "tell", seq: 9 };
  const bytes = new Uint8Array(encodeOwned({ ...envelope, payload: report }));
  deepEqual(validateRunMessage((decode(bytes) as { payload: unknown }).payload), report);
  let refused = 0;
  for (let bit = 0; bit < bytes.length * 8; bit++) {
    const flipped = new Uint8Array(bytes);
    flipped[bit >> 3] ^= 1 << (bit & 7);
    let got: TrainerReportMsg;
    try {
      got = validateRunMessage(
        (decode(flipped) as { payload: unknown }).payload,
      ) as TrainerReportMsg;
    } catch {
      refused++;
      continue;
    }
    // Only flips outside the report (the envelope's own fields) may pass, and they leave it whole.
    deepEqual(got, report, `bit ${bit}`);
  }
  ok(refused > 0);
  throws(
    () => validateRunMessage({ ...report, hash: "0123456789abcdee" }),
    ProtocolError,
    "check",
  );
});
