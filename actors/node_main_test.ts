import { deepEqual, equal, ok, throws } from "@std/assert";
import { parseNodeArgs, resumedArgs } from "./node_main.ts";
import type { ResumedRun } from "../checkpoint/resume.ts";
import { CheckpointStore } from "../checkpoint/store.ts";
import { getConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";
import { engineSettings, runModel, runSettingsOf, shapeConflict } from "./run_settings.ts";

Deno.test("node flags: --keeper-cpu takes a share of one core in (0, 1]", () => {
  equal(parseNodeArgs([]).keeperCpu, undefined);
  equal(parseNodeArgs(["--keeper-cpu", "0.25"]).keeperCpu, 0.25);
  equal(parseNodeArgs(["--keeper-cpu", "1"]).keeperCpu, 1);
  for (const bad of ["0", "-0.1", "1.5", "abc", ""]) {
    throws(
      () => parseNodeArgs([`--keeper-cpu=${bad}`]),
      (err: Error) =>
        err instanceof RangeError &&
        err.message === `Invalid --keeper-cpu: expected a number in (0, 1], got "${bad}"`,
    );
  }
});

Deno.test("node flags: defaults and bad integers are named", () => {
  const args = parseNodeArgs([]);
  equal(args.keepers, 2);
  equal(args.trainers, 4);
  throws(() => parseNodeArgs(["--keepers", "two"]), /Invalid --keepers/);
  throws(() => parseNodeArgs(["--rounds", "0"]), /Invalid --rounds/);
});

Deno.test("node flags: shape flags override the config, are checked by name, and reach the engine", () => {
  const args = parseNodeArgs([
    "--config",
    "medium",
    "--n-layer",
    "1",
    "--n-embd",
    "96",
    "--block-size",
    "32",
    "--batch",
    "3",
    "--grad-accum",
    "2",
  ]);
  deepEqual(args.model, { nLayer: 1, nEmbd: 96, blockSize: 32 });
  equal(args.batch, 3);
  equal(args.gradAccum, 2);
  const engine = engineSettings(args);
  deepEqual(engine.config, { nLayer: 1, nHead: 4, nEmbd: 96, blockSize: 32, vocabSize: 256 });
  equal(engine.batch, 3);
  equal(engine.gradAccum, 2);
  deepEqual(runSettingsOf(args).model, { nLayer: 1, nEmbd: 96, blockSize: 32 });
  equal(runSettingsOf(args).gradAccum, 2);
  // No flags: the settings (and so the checkpoints' records) stay as they were.
  equal(parseNodeArgs([]).model, undefined);
  equal(runSettingsOf(parseNodeArgs([])).gradAccum, undefined);
  equal(engineSettings(parseNodeArgs([])).gradAccum, 1);
  const bad: [string[], string][] = [
    [["--n-head", "5"], "Invalid --n-head: 5 does not divide the n-embd 64 of config small"],
    [["--n-head", "5", "--n-embd", "64"], "Invalid --n-head: 5 does not divide --n-embd 64"],
    [["--n-embd", "30"], "Invalid --n-embd: 30 is not a multiple of the n-head 4 of config small"],
    [["--n-layer", "0"], 'Invalid --n-layer: "0" (expected an integer in [1, 256])'],
    [["--block-size", "1.5"], 'Invalid --block-size: "1.5" (expected an integer in [1, 16384])'],
    [["--grad-accum", "0"], 'Invalid --grad-accum: expected an integer >= 1, got "0"'],
  ];
  for (const [argv, message] of bad) {
    throws(() => parseNodeArgs(argv), (err: Error) => err.message === message, argv.join(" "));
  }
});

Deno.test("joiners train the host's shape: their own shape flags must agree with it", () => {
  const host = runModel({ config: "small", model: { nLayer: 4 } });
  equal(shapeConflict(undefined, host), undefined);
  equal(shapeConflict({ nLayer: 4 }, host), undefined);
  equal(
    shapeConflict({ nLayer: 2, nEmbd: 64 }, host),
    "--n-layer 2 differs from the run's model L4 C64 H4 T64 V256",
  );
  throws(
    () => runModel({ config: "small", model: { nHead: 3 } }),
    /Invalid nHead: 3 does not divide/,
  );
});

Deno.test("a resumed run rebuilds its recorded shape; shape flags that disagree are refused", () => {
  const settings = { run: "r", config: "small", model: { nLayer: 3 }, gradAccum: 2, rounds: 5 };
  const resumed = {
    dir: "runs/r",
    settings,
    config: { nLayer: 3, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: 256 },
  } as unknown as ResumedRun;
  const args = resumedArgs(parseNodeArgs(["--resume", "runs/r", "--rounds", "9"]), resumed);
  deepEqual(args.model, { nLayer: 3 });
  equal(args.gradAccum, 2);
  equal(args.rounds, 9);
  deepEqual(engineSettings(args).config, resumed.config);
  throws(
    () => resumedArgs(parseNodeArgs(["--resume", "runs/r", "--n-layer", "2"]), resumed),
    /^RangeError: Cannot resume runs\/r: its model has nLayer 3, --n-layer gives 2$/,
  );
});

Deno.test("a resumed run keeps its number of trainers unless --trainers is given", () => {
  const cursor = (index: number) => ({ seed: 1, shard: { index, count: 16 }, step: 30 });
  const resumed = {
    dir: "runs/r",
    round: 4,
    settings: { run: "r", config: "small", rounds: 5, trainers: 2 },
    cursors: { "host/run/trainers/0": cursor(0), "host/run/trainers/1": cursor(1) },
  } as unknown as ResumedRun;
  const resume = (argv: string[], r = resumed) =>
    resumedArgs(parseNodeArgs(["--resume", "runs/r", "--rounds", "9", ...argv]), r);
  equal(resume([]).trainers, 2);
  equal(resume(["--trainers", "3"]).trainers, 3);
  equal(resume(["--trainers", "1"]).trainers, 1);
  // A checkpoint from before the count was recorded: one trainer per own trainer's cursor.
  const unrecorded = { ...resumed, settings: { run: "r", config: "small", rounds: 5 } };
  equal(resume([], unrecorded as ResumedRun).trainers, 2);
  // A host's run whose trainers all joined from elsewhere, resumed in one process.
  const joined = {
    ...resumed,
    settings: { ...resumed.settings, trainers: 0 },
    cursors: { "trainer-1/node/trainer": cursor(0), "trainer-2/node/trainer": cursor(1) },
  } as unknown as ResumedRun;
  equal(resume([], joined).trainers, 2);
  equal(
    resumedArgs(parseNodeArgs(["--resume", "runs/r", "--host", "h:1", "--secret", "s"]), joined)
      .trainers,
    0,
  );
});

Deno.test("a resume with no round left to train is refused by one line naming --rounds", () => {
  const resumed = {
    dir: "runs/r",
    round: 4,
    settings: { run: "r", config: "small", rounds: 4 },
  } as unknown as ResumedRun;
  throws(
    () => resumedArgs(parseNodeArgs(["--resume", "runs/r"]), resumed),
    (err: Error) =>
      err instanceof RangeError &&
      err.message ===
        "Cannot resume at round 4: the run trains 4 rounds (pass --rounds N with N > 4 to train on)",
  );
  throws(() => resumedArgs(parseNodeArgs(["--resume", "runs/r", "--rounds", "1"]), resumed));
  equal(resumedArgs(parseNodeArgs(["--resume", "runs/r", "--rounds", "5"]), resumed).rounds, 5);
});

Deno.test("deno task node --resume DIR --rounds 1 past the run's end exits 2 with one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "node_main_resume_" });
  try {
    const config = getConfig("tiny").model;
    const n = buildLayout(config).totalLength;
    await new CheckpointStore(`${dir}/keeper-0`).commit({
      run: "r",
      round: 3,
      config,
      params: new Float32Array(n),
      momentum: new Float32Array(n),
      settings: {
        run: "r",
        config: "tiny",
        rounds: 3,
        innerSteps: 2,
        outer: { lr: 1, momentum: 0 },
      },
    });
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./node_main.ts", import.meta.url).pathname,
        "--resume",
        dir,
        "--rounds",
        "1",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr).trim();
    equal(out.code, 2, stderr);
    deepEqual(
      stderr.split("\n").filter((l) => !l.startsWith("\x1b") && !/^(Download|Check)\b/.test(l)),
      ["Cannot resume at round 3: the run trains 1 rounds (pass --rounds N with N > 3 to train on)"],
    );
    ok(!stderr.includes("Uncaught"), stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("node flags: --sync/--overlap, --overlap-steps and --fragments reach the run's settings", () => {
  equal(parseNodeArgs([]).sync, undefined);
  equal(parseNodeArgs(["--overlap"]).sync, "overlapped");
  equal(parseNodeArgs(["--sync", "blocking"]).sync, "blocking");
  const a = parseNodeArgs(["--sync", "overlapped", "--overlap-steps", "4", "--fragments", "2"]);
  deepEqual([a.sync, a.overlapSteps, a.fragments], ["overlapped", 4, 2]);
  // Joiners and checkpoints take them from the run's settings.
  const s = runSettingsOf(a);
  deepEqual([s.sync, s.overlapSteps, s.fragments], ["overlapped", 4, 2]);
  throws(
    () => parseNodeArgs(["--sync", "eager"]),
    /Invalid --sync: expected blocking or overlapped/,
  );
  throws(() => parseNodeArgs(["--overlap", "--sync", "blocking"]), /--overlap and --sync blocking/);
  throws(
    () => parseNodeArgs(["--overlap-steps", "3"]),
    /Invalid --overlap-steps: only an overlapped/,
  );
  throws(() => parseNodeArgs(["--overlap", "--overlap-steps", "11"]), /from 1 to H = 10, got 11/);
  throws(() => parseNodeArgs(["--fragments", "0"]), /Invalid --fragments/);
  throws(() => parseNodeArgs(["--config", "tiny", "--fragments", "64"]), /would leave one empty/);
  // A resumed run keeps its recorded sync mode unless a flag says otherwise.
  const resumed = {
    dir: "runs/r",
    round: 4,
    settings: { run: "r", config: "small", rounds: 5, sync: "overlapped", fragments: 2 },
    cursors: {},
  } as unknown as ResumedRun;
  const back = resumedArgs(parseNodeArgs(["--resume", "runs/r", "--rounds", "9"]), resumed);
  deepEqual([back.sync, back.fragments], ["overlapped", 2]);
  const blocking = resumedArgs(
    parseNodeArgs(["--resume", "runs/r", "--rounds", "9", "--sync", "blocking"]),
    resumed,
  );
  equal(blocking.sync, "blocking");
});
