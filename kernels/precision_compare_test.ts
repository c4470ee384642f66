/**
 * The precision comparison: arms parsed and resolved against the adapter,
 * runs paired by seed into means and ratios, and `deno task precision` run for
 * real on the tiny config (its JSON lines, and one-line errors for bad flags).
 */
import { deepEqual, equal, match, ok, throws } from "@std/assert";
import { type ArmRun, formatSummary, parseArms, summarize } from "./precision_compare.ts";
import { runCli } from "../tests/_cli_run.ts";

Deno.test("parseArms resolves :other against the adapter and refuses what it does not know", () => {
  deepEqual(parseArms("f32,f32:other,f16", "cpu"), [
    { name: "f32", precision: "f32", kernels: "cpu" },
    { name: "f32:gpu", precision: "f32", kernels: "gpu" },
    { name: "f16", precision: "f16", kernels: "cpu" },
  ]);
  deepEqual(parseArms("f16:other,f32:gpu", "gpu").map((a) => a.name), ["f16:cpu", "f32"]);
  for (const bad of ["bf16", "f32:tpu", "f32:gpu:x", ""]) {
    throws(() => parseArms(bad, "cpu"), RangeError, "Invalid arm");
  }
  // f32:cpu on a CPU adapter is the adapter's own f32: the same arm twice.
  throws(() => parseArms("f32,f32:cpu", "cpu"), RangeError, "Arm f32 is given twice");
});

const run = (arm: string, seed: number, val: number[], tokensPerS = 100): ArmRun => ({
  arm,
  seed,
  steps: val.map((_, i) => 10 * (i + 1)),
  val,
  tokensPerS,
});

Deno.test("summarize pairs runs by seed, keeps only seeds every arm finished, and reports the worst seed", () => {
  const runs = [
    run("f32", 1, [3.0, 2.0]),
    run("f32", 2, [3.0, 2.2]),
    run("f32", 3, [3.0, 9.9]), // f16 has no seed 3: left out of every mean
    run("f16", 1, [3.0, 2.1], 50),
    run("f16", 2, [3.3, 2.1], 70),
  ];
  const [base, f16] = summarize(runs, ["f32", "f16"]);
  equal(base.seeds, 2);
  deepEqual(base.meanVal, [3.0, 2.1]);
  deepEqual(base.ratio, [1, 1]);
  equal(base.worstSeed, 0);
  deepEqual(f16.meanVal.map((x) => +x.toFixed(6)), [3.15, 2.1]);
  equal(+f16.ratio[0].toFixed(6), 1.05);
  // Seed 1 ends 5% above its f32 run, seed 2 4.5% below: the means agree, the worst seed does not.
  equal(+f16.worstSeed.toFixed(6), 0.05);
  equal(f16.tokensPerS, 60);
  const table = formatSummary([base, f16], [10, 20]);
  match(table, /\| f16 +\| +3\.1500 \| +2\.1000 \| +1\.0000 \| +5\.0% \| +60 \|/);
  throws(() => summarize([run("f32", 1, [1])], ["f32", "f16"]), RangeError, "No seed was run");
  throws(
    () => summarize([run("f32", 1, [1, 2]), run("f16", 1, [1])], ["f32", "f16"]),
    RangeError,
    "f16 seed 1 evaluated at other steps",
  );
});

Deno.test("deno task precision trains every arm from every seed and prints their summaries", async () => {
  const r = await runCli("kernels/precision_main.ts", [
    "--config",
    "tiny",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--eval-windows",
    "8",
    "--seeds",
    "1,2",
    "--json",
  ]);
  equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  const runs = lines.filter((l) => l.event === "run");
  const arms = lines.filter((l) => l.event === "arm");
  // lavapipe is a CPU adapter: the control arm runs the GPU kernel family.
  deepEqual(runs.map((l) => `${l.seed} ${l.arm}`), [
    "1 f32",
    "1 f32:gpu",
    "1 f16",
    "2 f32",
    "2 f32:gpu",
    "2 f16",
  ]);
  for (const l of runs) {
    deepEqual(l.steps, [2, 4]);
    ok(l.val.every((x: number) => x > 0 && x < 6), `val ${l.val}`);
  }
  deepEqual(arms.map((l) => l.arm), ["f32", "f32:gpu", "f16"]);
  // Four steps from a random init: every arm learns, and no arm is far from f32.
  for (const a of arms) ok(Math.abs(a.ratio[1] - 1) < 0.01, `${a.arm}: ${a.ratio}`);
  ok(arms[0].meanVal[1] < arms[0].meanVal[0], `f32 did not learn: ${arms[0].meanVal}`);
});

Deno.test("deno task precision refuses bad flags in one line", async () => {
  for (
    const [args, re] of [
      [["--arms", "f32,bf16"], /Invalid --arms: Invalid arm "bf16"/],
      [["--seeds", "1,x"], /Invalid --seeds: "x"/],
      [["--seeds", "3,3"], /Invalid --seeds: "3,3" \(a seed is repeated\)/],
      [["--config", "huge"], /huge/],
      [["--steps", "0"], /Invalid --steps/],
    ] as const
  ) {
    const r = await runCli("kernels/precision_main.ts", [...args]);
    equal(r.code, 2, `${args}: ${r.stderr}`);
    equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    match(r.stderr, re);
  }
});
