import { deepEqual, equal, match, ok } from "@std/assert";
import { ActorSystem } from "../runtime/system.ts";
import { type RunEvent, RunMonitor } from "../monitor.ts";
import { sealReport } from "../run_protocol.ts";
import { combineParts, type DashboardEvent, evalGap, RunHistory } from "./history.ts";
import { textSample, type TextSampleSpec } from "../../kernels/sample.ts";

/** A host of stand-in actors: a tracker with a fixed member list, trainers in given phases. */
async function standIns(
  opts: {
    rounds?: number;
    evalMs?: number;
    sampleMs?: number;
    forwardMs?: number;
    /** What t0 answers for a sample (default: its name and the bytes asked, "t0:12"). */
    text?: unknown;
  } = {},
) {
  const system = new ActorSystem({ node: "h" });
  const members = [
    { node: "h/a", roles: ["aggregator"], status: "member", dataShard: 9, silentMs: 5 },
    { node: "h/t0", roles: ["trainer"], status: "member", dataShard: 0, silentMs: 5 },
    { node: "h/t1", roles: ["trainer"], status: "member", dataShard: 1, silentMs: 5 },
    { node: "h/t2", roles: ["trainer"], status: "pending", dataShard: 2, silentMs: 5 },
    { node: "h/gone", roles: ["trainer"], status: "member", dataShard: 3, silentMs: 5 },
  ];
  await system.spawn({
    receive: () => ({
      run: "r",
      round: 2,
      epoch: 4,
      view: { trainers: ["h/t0", "h/t1"] },
      members,
    }),
  }, { name: "tracker" });
  /** The parts each stand-in was asked to evaluate, and the text samples it was asked for. */
  const asked: Record<string, { index: number; count: number }[]> = {};
  const sampled: Record<string, TextSampleSpec[]> = {};
  for (const [name, phase] of [["t0", "inner"], ["t1", "blocked"], ["t2", "idle"]]) {
    // Each stand-in holds the θ of one round later at each evaluation; t1's part scores 4.56789
    // on 48 tokens, t0's 2.56789 on 16 (0.75 × 4.56789 + 0.25 × 2.56789 = 4.06789).
    let evalRound = 1;
    asked[name] = [];
    sampled[name] = [];
    await system.spawn({
      receive: (
        m: { type: string; part: { index: number; count: number }; sample?: TextSampleSpec },
      ) => {
        if (m.type !== "eval") return { phase };
        asked[name].push(m.part);
        if (m.sample) sampled[name].push(m.sample);
        return {
          ...(m.sample
            ? { sample: "text" in opts ? opts.text : `${name}:${m.sample.tokens}` }
            : {}),
          loss: name === "t0" ? 2.56789 : 4.56789,
          tokens: name === "t0" ? 16 : 48,
          round: evalRound++,
          hash: "x",
          ms: opts.evalMs && opts.evalMs + (m.sample ? opts.sampleMs ?? 0 : 0),
          ...(m.sample && opts.sampleMs ? { sampleMs: opts.sampleMs } : {}),
          ...(opts.forwardMs ? { forwardMs: opts.forwardMs } : {}),
        };
      },
    }, { name });
  }
  /** The events the monitor emitted. */
  const emitted: RunEvent[] = [];
  const monitor = new RunMonitor(
    { params: 512, innerSteps: 2, rounds: opts.rounds ?? 4 },
    (e) => emitted.push(e),
  );
  const host = { system, monitor, trackerPath: "h/tracker", trainerPaths: ["h/t0"] };
  return { system, monitor, host, asked, sampled, emitted };
}

/** Closes round `round` in the monitor with one shard and both trainers' reports. */
function closeRound(monitor: RunMonitor, round: number): void {
  monitor.aggregator({
    type: "closed",
    aggregator: "h/a",
    round,
    shard: 0,
    contributors: ["h/t0", "h/t1"],
    missing: [],
    reason: "complete",
    loss: 5 - round,
    tokens: 100,
    updateBytes: 10,
    epoch: 4,
  });
  for (const t of ["h/t0", "h/t1"]) {
    monitor.report(sealReport({
      type: "trainer_report",
      run: "r",
      trainer: t,
      round,
      hash: "x",
      loss: 5 - round,
      contributed: true,
      innerMs: 75,
      blockedMs: 25,
      bytesUp: 7,
      bytesDown: 9,
    }));
  }
}

Deno.test("members' states come from the tracker and the trainers; evictions from the monitor", async () => {
  const { system, monitor, host } = await standIns();
  const history = new RunHistory(host, { askTimeoutMs: 200 });
  try {
    monitor.tracker({ type: "evicted", nodes: ["h/t9"], round: 1 });
    const live = await history.live();
    deepEqual(
      Object.fromEntries(live.members.map((m) => [m.node, m.state])),
      {
        "h/a": "active",
        "h/t0": "training",
        "h/t1": "blocked",
        "h/t2": "joining",
        "h/gone": "silent",
      },
    );
    deepEqual(live.evicted, { "h/t9": 1 });
    equal(live.trainers_in_view, 2);
    // A node that joins again is no longer evicted.
    monitor.tracker({ type: "joined", node: "h/t9", status: "pending", round: 2 });
    deepEqual((await history.live()).evicted, {});
  } finally {
    await history.close();
    await system.shutdown();
  }
});

Deno.test("rounds, evaluations and commit latencies are recorded and pushed in order", async () => {
  const { system, monitor, host, asked } = await standIns();
  const history = new RunHistory(host, { evalEvery: 1, evalWindows: 2 });
  const pushed: DashboardEvent["type"][] = [];
  history.listen((e) => pushed.push(e.type));
  try {
    closeRound(monitor, 0);
    closeRound(monitor, 1);
    monitor.event({ event: "committed", round: 1, params_hash: "p", holders: ["k"], wall_s: 1e6 });
    monitor.event({ event: "committed", round: 0, params_hash: "q", holders: ["k"], wall_s: 0 });
    monitor.aggregator({
      type: "rejected",
      aggregator: "h/a",
      rejection: { round: 1, trainer: "h/t1", shard: 0, reason: "non_finite", detail: "NaN" },
    });
    for (let i = 0; i < 500 && history.evals.length < 1; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    deepEqual(history.rounds.map((r) => [r.round, r.loss, r.tokens, r.bytes_up, r.utilization]), [
      [0, 5, 100, 14, 0.75],
      [1, 4, 100, 14, 0.75],
    ]);
    // The trainers said they hold round 1's θ: the evaluation follows round 0. Each
    // contributor evaluated its part of the windows; the parts weigh by their tokens.
    deepEqual(history.evals.map((e) => [e.round, e.eval_loss]), [[0, 4.0679]]);
    deepEqual(asked["t0"][0], { index: 0, count: 2 });
    deepEqual(asked["t1"][0], { index: 1, count: 2 });
    deepEqual(asked["t2"], []);
    const live = await history.live();
    equal(live.totals.tokens, 200);
    deepEqual(live.rejected_by_reason, { non_finite: 1 });
    // Round 1's state was produced by round 0; round 0 (the opening) has no round before it.
    equal(live.commit_latency.count, 1);
    ok(live.commit_latency.counts.at(-1) === 1 && live.commit_latency.counts[0] === 0);
    equal(history.commits[1].latency_s, null);
    // The latest commit is the newest round, whatever order the commits came in.
    equal(live.latest_commit?.round, 1);
    ok(pushed.indexOf("round") < pushed.indexOf("commit"), pushed.join());
    ok(pushed.includes("eval"), pushed.join());
  } finally {
    await history.close();
    await system.shutdown();
  }
});

Deno.test("evaluations are spaced so that they cost at most evalShare of the evaluator's inner time, and the last round is evaluated", async () => {
  // Each evaluation takes 15 ms of a trainer whose rounds have 75 ms of inner steps: at 2%,
  // the next one waits 15 / (0.02 × 75) = 10 rounds.
  equal(evalGap(15, 75, 0.02), 10);
  equal(evalGap(1, 75, 0.02), 1);
  equal(evalGap(undefined, 75, 0.02), 1);
  const { system, monitor, host } = await standIns({ rounds: 14, evalMs: 15 });
  const history = new RunHistory(host, { evalEvery: 1, evalWindows: 2, evalShare: 0.02 });
  try {
    for (let round = 0; round < 14; round++) {
      closeRound(monitor, round);
      // Let an evaluation asked for at this round finish before the next round closes.
      await new Promise((r) => setTimeout(r, 20));
    }
    await history.close();
    // The stand-in trainer answers each evaluation with the next round number.
    equal(history.evals.length, 3, JSON.stringify(history.evals));
  } finally {
    await history.close();
    await system.shutdown();
  }
});

Deno.test("RunHistory refuses an evalShare outside (0, 1]", async () => {
  const { system, host } = await standIns();
  try {
    for (const bad of [0, -0.1, 1.5, NaN]) {
      let thrown = "";
      try {
        new RunHistory(host, { evalEvery: 1, evalShare: bad });
      } catch (err) {
        thrown = (err as Error).message;
      }
      equal(thrown, `Invalid evalShare: ${bad} is not in (0, 1]`);
    }
  } finally {
    await system.shutdown();
  }
});

Deno.test("an evaluation in parts is the token-weighted mean of the parts", () => {
  equal(combineParts([{ loss: 2, tokens: 300 }, { loss: 4, tokens: 100 }]), 2.5);
  // A part that got no window (NaN on no tokens) counts for nothing; no tokens at all: NaN.
  equal(combineParts([{ loss: 3, tokens: 64 }, { loss: NaN, tokens: 0 }]), 3);
  ok(Number.isNaN(combineParts([{ loss: NaN, tokens: 0 }])));
});

Deno.test("with a text sample, the first part's trainer writes it and the evaluation carries it", async () => {
  // One round: the last, sampled whatever the pacing.
  const { system, monitor, host, sampled, emitted } = await standIns({ rounds: 1 });
  const sample = textSample({ prompt: "Fellow", tokens: 12 });
  const history = new RunHistory(host, { evalEvery: 1, evalWindows: 2, sample });
  try {
    closeRound(monitor, 0);
    for (let i = 0; i < 500 && history.evals.length < 1; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    // Only part 0's trainer samples (its time counts in its cost); the others evaluate.
    deepEqual(sampled["t0"], [sample]);
    deepEqual(sampled["t1"], []);
    deepEqual(history.evals.map((e) => e.sample), [
      { prompt: "Fellow", text: "t0:12" },
    ]);
    // The evaluation is an event of the run too (the run log, the node's terminal).
    deepEqual(emitted.filter((e) => e.event === "eval"), [{ event: "eval", ...history.evals[0] }]);
  } finally {
    await history.close();
    await system.shutdown();
  }
  // Without one (or with 0 tokens) nobody is asked to sample and no point carries one.
  for (const options of [{}, { sample: textSample({ tokens: 0 }) }]) {
    const s = await standIns({ rounds: 1 });
    const plain = new RunHistory(s.host, { evalEvery: 1, evalWindows: 2, ...options });
    try {
      closeRound(s.monitor, 0);
      for (let i = 0; i < 500 && plain.evals.length < 1; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      equal(plain.evals.length, 1);
      equal(plain.evals[0].sample, undefined);
      deepEqual(s.sampled["t0"], []);
    } finally {
      await plain.close();
      await s.system.shutdown();
    }
  }
});

Deno.test("text samples are paced apart from the evaluations, each within evalShare; the last round is sampled", async () => {
  // An evaluation takes 1 ms (every round fits 2% of 75 ms). The first evaluation takes no
  // sample: its forward pass (0.25 ms) times 8 bytes says a sample costs 2 ms, 2 rounds' worth;
  // the sample then takes 15 ms: 10 rounds to the next. Without a forward time, only the last.
  for (const [forwardMs, expect] of [[0.25, [2, 12, 13]], [undefined, [13]]] as const) {
    const { system, monitor, host, sampled } = await standIns({
      rounds: 14,
      evalMs: 1,
      sampleMs: 15,
      forwardMs,
    });
    const history = new RunHistory(host, {
      evalEvery: 1,
      evalWindows: 2,
      evalShare: 0.02,
      sample: textSample({ tokens: 8 }),
    });
    try {
      for (let round = 0; round < 14; round++) {
        closeRound(monitor, round);
        await new Promise((r) => setTimeout(r, 20));
      }
      await history.close();
      // Every round evaluated (a sample's time is not the evaluation's).
      deepEqual(history.evals.map((e) => e.round), [...Array(14).keys()]);
      deepEqual(history.evals.filter((e) => e.sample).map((e) => e.round), expect);
      equal(sampled["t0"].length, expect.length);
    } finally {
      await history.close();
      await system.shutdown();
    }
  }
});

Deno.test("a sample no trainer could have written is not kept: too long, or not text", async () => {
  for (const text of ["x".repeat(13), 42]) {
    const { system, monitor, host, emitted } = await standIns({ rounds: 1, text });
    const history = new RunHistory(host, {
      evalEvery: 1,
      evalWindows: 2,
      sample: textSample({ tokens: 12 }),
    });
    try {
      closeRound(monitor, 0);
      for (let i = 0; i < 500 && history.evals.length < 1; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      // The evaluation is kept, its sample not; the log says why.
      equal(history.evals.length, 1);
      equal(history.evals[0].sample, undefined);
      const warned = emitted.filter((e) => e.event === "log" && e.level === "warn");
      equal(warned.length, 1);
      match(
        String((warned[0] as { message: string }).message),
        /^dashboard sample from h\/t0 ignored: (13 characters for a sample of 12 bytes|no text \(number\))$/,
      );
    } finally {
      await history.close();
      await system.shutdown();
    }
  }
});
