import { deepEqual, equal, ok, throws } from "@std/assert";
import { parseExperimentArgs } from "./experiment_main.ts";
import { type ExperimentResult, markdownTable } from "./_experiment_summary.ts";
import { adversarialDelta } from "./_byzantine.ts";
import { ShardAggregator } from "../actors/aggregation.ts";
import { quantizeInt8 } from "../actors/int8_exchange.ts";
import { outerAt } from "../actors/outer_optimizer.ts";
import { shardMap } from "../actors/run_protocol.ts";
import { runCli } from "./_cli_run.ts";

Deno.test("experiment: flags pick configurations and refuse bad input by name", () => {
  const a = parseExperimentArgs([
    "--steps",
    "40",
    "--configs",
    "single,diloco-int8",
    "--inner-steps",
    "10",
    "--outer-lr",
    "1.5",
    "--outer-warmup",
    "2",
  ]);
  deepEqual(a.configs.map((c) => c.name), ["diloco-int8", "single"]);
  equal(a.settings.steps, 40);
  equal(a.configs[0].innerSteps, 10);
  deepEqual(a.configs[0].outer, { lr: 1.5, momentum: 0, warmupRounds: 2 });
  throws(() => parseExperimentArgs(["--configs", "nope"]), /Invalid --configs: unknown "nope"/);
  throws(() => parseExperimentArgs(["--steps", "30", "--inner-steps", "20"]), /multiple of/);
  throws(() => parseExperimentArgs(["--outer-momentum", "1"]), /--outer-momentum/);
  throws(() => parseExperimentArgs(["--bogus"]), /bogus/);
  throws(
    () => parseExperimentArgs(["--topk", "0"]),
    /Invalid --topk: "0" \(expected a number in \(0, 1\]\)/,
  );
  const topk = parseExperimentArgs(["--configs", "diloco-topk", "--topk", "0.01"]).configs[0];
  equal(topk.exchange, "topk:0.01");
  // The 1,000× row: top-2% up, top-3% down at twice the rounds' H, whatever the flags say.
  const [far] = parseExperimentArgs([
    "--configs",
    "diloco-1000x",
    "--inner-steps",
    "5",
    "--update-exchange",
    "int4",
  ]).configs;
  deepEqual([far.exchange, far.updateExchange, far.innerSteps], ["topk:0.02", "topk:0.03", 10]);
  // --update-exchange reaches the other coded rows, and names itself when wrong.
  const [int8] = parseExperimentArgs(["--configs", "diloco-int8", "--update-exchange", "int4"])
    .configs;
  equal(int8.updateExchange, "int4");
  throws(
    () => parseExperimentArgs(["--update-exchange", "int2"]),
    /Invalid --update-exchange: "int2"/,
  );
  throws(
    () => parseExperimentArgs(["--steps", "30", "--configs", "diloco-1000x"]),
    /Invalid --steps: 30 is not a multiple of H = 20 \(diloco-1000x\)/,
  );
});

Deno.test("experiment: outer warm-up ramps from plain averaging to the set values", () => {
  const o = { lr: 2, momentum: 0.5, warmupRounds: 4 };
  deepEqual(outerAt(o, 0), { lr: 1, momentum: 0 });
  deepEqual(outerAt(o, 2), { lr: 1.5, momentum: 0.25 });
  deepEqual(outerAt(o, 4), { lr: 2, momentum: 0.5 });
  deepEqual(outerAt({ lr: 0.7, momentum: 0.9 }, 0), { lr: 0.7, momentum: 0.9 });
  // In the aggregator: round 0 under warm-up is plain averaging, θ1 = θ0 − Δ.
  const [shard] = shardMap(4, { aggregators: ["a0"] });
  const agg = new ShardAggregator({
    run: "r",
    shard,
    theta: new Float32Array(4),
    outer: { lr: 3, momentum: 0.9, warmupRounds: 3 },
  });
  agg.setView({
    type: "view",
    run: "r",
    epoch: 1,
    round: 0,
    trainers: ["t0"],
    aggregators: ["a0"],
    shards: [shard],
    params: 4,
    block: 256,
    dataShards: [0],
    started: true,
    rounds: 0,
  });
  const { q, scales } = quantizeInt8(new Float32Array([0.5, -0.25, 1, 0]));
  agg.offer({
    type: "contribution",
    run: "r",
    round: 0,
    epoch: 1,
    trainer: "t0",
    shard: 0,
    tokens: 8,
    n: 4,
    q,
    scales,
    loss: 1,
  });
  agg.close();
  const theta = agg.theta();
  for (const [i, want] of [-0.5, 0.25, -1, 0].entries()) ok(Math.abs(theta[i] - want) < 0.01);
});

/** `deno task experiment --json` on the tiny model with H = 2; the JSON lines it printed. */
async function tinyExperiment(steps: number, configs: string) {
  const out = await runCli("tests/experiment_main.ts", [
    "--json",
    "--config",
    "tiny",
    "--steps",
    String(steps),
    "--inner-steps",
    "2",
    "--eval-windows",
    "8",
    "--configs",
    configs,
  ]);
  equal(out.code, 0, out.stderr);
  return out.stdout.trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("experiment: a tiny run prints one JSON line per configuration and a summary", async () => {
  const lines = await tinyExperiment(
    4,
    "diloco-int8,diloco-fp32,single-4x,single,diloco-int4,diloco-topk",
  );
  equal(lines.length, 7);
  const all = lines.slice(0, 6) as ExperimentResult[];
  // In the order of the configurations' list, the low-bit rows beside int8.
  deepEqual(all.map((r) => r.name), [
    "diloco-int8",
    "diloco-int4",
    "diloco-topk",
    "diloco-fp32",
    "single-4x",
    "single",
  ]);
  const [int4, topk] = all.slice(1, 3);
  const rows = [all[0], ...all.slice(3)];
  deepEqual(all.map((r) => r.event), Array(6).fill("config"));
  deepEqual(rows.map((r) => r.name), ["diloco-int8", "diloco-fp32", "single-4x", "single"]);
  for (const r of rows) {
    ok(Number.isFinite(r.final_eval_loss) && r.final_eval_loss > 0, JSON.stringify(r));
    equal(r.eval_windows, 8);
    equal(r.steps_per_trainer, 4);
  }
  // The same token budget: 4 trainers × 4 steps × batch 2 × context 8, and a quarter alone.
  deepEqual(rows.map((r) => r.tokens), [256, 256, 256, 64]);
  equal(rows[0].rounds, 2);
  equal(rows[0].exchange, "int8");
  equal(rows[1].exchange, "fp32");
  equal(rows[2].inner_steps, null);
  equal(rows[0].data_shards, 16);
  equal(rows[3].data_shards, null);
  // Bytes per round and trainer: the encoded contribution, against 4 × params × H.
  deepEqual([int4.name, int4.exchange, topk.name, topk.exchange], [
    "diloco-int4",
    "int4",
    "diloco-topk",
    "topk:0.05",
  ]);
  ok(Number.isFinite(int4.final_eval_loss) && Number.isFinite(topk.final_eval_loss));
  const dp = rows[0].fp32_data_parallel_bytes_per_round_per_trainer!;
  const params = dp / 4 / 2;
  equal(rows[1].bytes_up_per_round_per_trainer, 4 * params, "fp32: 4 bytes a value");
  ok(rows[0].bytes_up_per_round_per_trainer! > params, "int8: a byte a value and framing");
  ok(int4.bytes_up_per_round_per_trainer! < 0.6 * params + 200, JSON.stringify(int4));
  ok(topk.bytes_up_per_round_per_trainer! < 0.2 * params + 200, JSON.stringify(topk));
  for (const r of [rows[0], int4, topk]) {
    equal(
      r.reduction_vs_fp32_data_parallel,
      Math.round(dp / r.bytes_up_per_round_per_trainer! * 10) / 10,
    );
  }
  equal(rows[2].bytes_up_per_round_per_trainer, null);
  const summary = lines[6];
  equal(summary.event, "summary");
  deepEqual(Object.keys(summary.losses), all.map((r) => r.name));
  ok(typeof summary.int4_vs_int8_relative === "number");
  ok(typeof summary.topk_vs_int8_relative === "number");
  ok(typeof summary.int8_vs_fp32_relative === "number");
  ok(typeof summary.diloco_gap_closed === "number");
  const table = markdownTable(rows);
  equal(table.split("\n").length, 6);
  ok(table.includes("| diloco-fp32: "));
});

Deno.test("experiment: the Byzantine rows pick their robust rule and adversaries by flag", () => {
  const a = parseExperimentArgs(["--configs", "byz", "--aggregate", "median"]);
  deepEqual(a.configs.map((c) => c.name), [
    "byz-honest4",
    "byz-honest5-mean",
    "byz-honest5-robust",
    "byz-flip-mean",
    "byz-flip-robust",
    "byz-scale-mean",
    "byz-scale-robust",
    "byz-noise-mean",
    "byz-noise-robust",
  ]);
  deepEqual(a.configs.map((c) => c.trainers), [4, 5, 5, 5, 5, 5, 5, 5, 5]);
  deepEqual(a.configs[2].aggregate, { kind: "median" });
  equal(a.configs[3].aggregate, undefined);
  deepEqual(a.configs.map((c) => c.adversary ?? "-").slice(3), [
    "flip",
    "flip",
    "scale",
    "scale",
    "noise",
    "noise",
  ]);
  // The default run of the experiment leaves them out.
  ok(!parseExperimentArgs([]).configs.some((c) => c.name.startsWith("byz-")));
  throws(() => parseExperimentArgs(["--aggregate", "mode"]), /Invalid --aggregate: "mode"/);
});

Deno.test("experiment: adversaries flip, scale ×20, or send seeded noise of the update's norm", () => {
  const delta = Float32Array.from({ length: 301 }, (_, i) => Math.sin(i) * 0.01);
  const norm = (x: Float32Array) => Math.hypot(...x);
  deepEqual([...adversarialDelta(delta, "flip", { seed: 1, round: 0 })], [...delta].map((x) => -x));
  const scaled = adversarialDelta(delta, "scale", { seed: 1, round: 0 });
  ok(Math.abs(norm(scaled) - 20 * norm(delta)) < 1e-6);
  const noise = adversarialDelta(delta, "noise", { seed: 1, round: 3 });
  ok(Math.abs(norm(noise) - norm(delta)) < 1e-6 * norm(delta) + 1e-9);
  deepEqual(noise, adversarialDelta(delta, "noise", { seed: 1, round: 3 }));
  ok(noise[0] !== adversarialDelta(delta, "noise", { seed: 1, round: 4 })[0]);
  // Noise is not the update: nearly orthogonal to it.
  const dot = noise.reduce((s, x, i) => s + x * delta[i], 0);
  ok(Math.abs(dot) < 0.3 * norm(noise) * norm(delta), `cosine ${dot / norm(noise) / norm(delta)}`);
});

Deno.test("experiment: overlapped and fragmented rows report their sync, fragments and bytes", async () => {
  const lines = await tinyExperiment(6, "diloco-int8,diloco-overlap,diloco-overlap-frag");
  const [blocking, overlap, frag] = lines.slice(0, 3) as ExperimentResult[];
  deepEqual([blocking.sync, overlap.sync, frag.sync], ["blocking", "overlapped", "overlapped"]);
  deepEqual([blocking.fragments, overlap.fragments, frag.fragments], [1, 1, 2]);
  for (const r of [blocking, overlap, frag]) ok(Number.isFinite(r.final_eval_loss));
  equal(overlap.bytes_up_per_round_per_trainer, blocking.bytes_up_per_round_per_trainer);
  // A fragment's piece: half the codes and scales, one message's framing.
  const whole = blocking.bytes_up_per_round_per_trainer!;
  const half = frag.bytes_up_per_round_per_trainer!;
  ok(half < 0.6 * whole && half > 0.4 * whole, `${half} vs ${whole}`);
  ok(frag.reduction_vs_fp32_data_parallel! > 1.6 * blocking.reduction_vs_fp32_data_parallel!);
  ok(typeof lines[3].overlap_vs_blocking_relative === "number");
  throws(() => parseExperimentArgs(["--overlap-steps", "x"]), /Invalid --overlap-steps/);
});

Deno.test("experiment: the 1000x row sends top-k both ways and counts both directions", async () => {
  const lines = await tinyExperiment(4, "diloco-overlap,diloco-1000x");
  const rows = lines.slice(0, 2) as ExperimentResult[];
  const dense = rows.find((r) => r.name === "diloco-overlap")!;
  const sparse = rows.find((r) => r.name === "diloco-1000x")!;
  deepEqual([dense.update_exchange, sparse.update_exchange], ["int8", "topk:0.03"]);
  ok(
    sparse.bytes_down_per_round_per_trainer! < dense.bytes_down_per_round_per_trainer! / 5,
    `${sparse.bytes_down_per_round_per_trainer} vs ${dense.bytes_down_per_round_per_trainer}`,
  );
  // Both ways: 8 bytes a value a step for fp32 data parallelism, over bytes up and down.
  const both = (r: ExperimentResult) =>
    Math.round(
      2 * r.fp32_data_parallel_bytes_per_round_per_trainer! /
        (r.bytes_up_per_round_per_trainer! + r.bytes_down_per_round_per_trainer!) * 10,
    ) / 10;
  equal(sparse.reduction_both_ways_vs_fp32_data_parallel, both(sparse));
  equal(dense.reduction_both_ways_vs_fp32_data_parallel, both(dense));
  ok(typeof lines[2].x1000_vs_default_relative === "number");
});
