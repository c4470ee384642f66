import { deepEqual, equal, match, ok, throws } from "@std/assert";
import { parseNodeArgs, resumedArgs } from "./node_args.ts";
import { DEFAULT_TEXT_SAMPLE } from "../kernels/sample.ts";
import { runCli } from "../tests/_cli_run.ts";
import type { ResumedRun } from "../checkpoint/resume.ts";
import { UsageError } from "../kernels/cli.ts";
import { getConfig } from "../kernels/config.ts";
import { initParams } from "../kernels/init.ts";
import { CheckpointStore } from "../checkpoint/store.ts";
import {
  engineSettings,
  exchangeConflict,
  runModel,
  runSettingsOf,
  shapeConflict,
} from "./run_settings.ts";

/**
 * The node's args for `--resume runs/r --rounds 9 ...argv` of a run at round 2 (of 5) whose
 * recorded settings add `recorded` to the small config's.
 */
function resumeWith(recorded: Record<string, unknown>, argv: string[] = []) {
  const resumed = {
    dir: "runs/r",
    round: 2,
    settings: { run: "r", config: "small", rounds: 5, ...recorded },
  } as unknown as ResumedRun;
  return resumedArgs(parseNodeArgs(["--resume", "runs/r", "--rounds", "9", ...argv]), resumed);
}

Deno.test("node flags: --keeper-cpu takes a share of one core in (0, 1]", () => {
  equal(parseNodeArgs([]).keeperCpu, undefined);
  equal(parseNodeArgs(["--keeper-cpu", "0.25"]).keeperCpu, 0.25);
  equal(parseNodeArgs(["--keeper-cpu", "1"]).keeperCpu, 1);
  for (const bad of ["0", "-0.1", "1.5", "abc", ""]) {
    throws(
      () => parseNodeArgs([`--keeper-cpu=${bad}`]),
      (err: Error) =>
        err instanceof UsageError &&
        err.message === `Invalid --keeper-cpu: "${bad}" (expected a number in (0, 1])`,
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

Deno.test("node flags: the text sample of the final θ, its bytes, prompt and temperature", () => {
  deepEqual(parseNodeArgs([]).sample, DEFAULT_TEXT_SAMPLE);
  deepEqual(
    parseNodeArgs([
      "--sample-bytes",
      "100",
      "--sample-prompt",
      "Fellow",
      "--sample-temperature",
      "0",
    ])
      .sample,
    { ...DEFAULT_TEXT_SAMPLE, tokens: 100, prompt: "Fellow", temperature: 0 },
  );
  equal(parseNodeArgs(["--sample-bytes", "0"]).sample.tokens, 0);
  equal(parseNodeArgs([]).evalEvery, 1);
  equal(parseNodeArgs(["--eval-every", "0"]).evalEvery, 0);
  throws(() => parseNodeArgs(["--eval-every", "x"]), /Invalid --eval-every: "x"/);
  const bad: [string[], RegExp][] = [
    [["--sample-bytes=-1"], /^Invalid --sample-bytes: "-1" \(expected an integer >= 0\)$/],
    [
      ["--sample-bytes", "5000"],
      /^Invalid --sample-bytes: 5000 \(expected an integer in \[0, 4096\]\)$/,
    ],
    [["--sample-prompt", ""], /^Invalid --sample-prompt: empty/],
    [["--sample-prompt", "x".repeat(5000)], /^Invalid --sample-prompt: 5000 bytes > 4096$/],
    [["--sample-temperature=-0.5"], /^Invalid --sample-temperature: "-0.5"/],
    [["--sample-temperature", "hot"], /^Invalid --sample-temperature: "hot"/],
  ];
  for (const [argv, re] of bad) {
    throws(
      () => parseNodeArgs(argv),
      (err: Error) => err instanceof UsageError && re.test(err.message),
      argv.join(" "),
    );
  }
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
  // --precision reaches this node's trainers and no one else: it is not a run setting.
  const f16 = parseNodeArgs(["--precision", "f16"]);
  equal(engineSettings(f16).precision, "f16");
  equal(runSettingsOf(f16).precision, undefined);
  equal(engineSettings(parseNodeArgs([])).precision, undefined);
  // So do the matmul tuning file and table: each machine's own.
  equal(parseNodeArgs(["--tune-file", "t.json"]).tuneFile, "t.json");
  ok(parseNodeArgs(["--tune-matmuls"]).tuneFile?.endsWith("decentra/matmul_tuning.json"));
  equal(parseNodeArgs([]).tuneFile, undefined);
  const table = { version: 1 as const, adapters: { gpu: { "NN 1x1x1": "tile64" } } };
  const tuned = { ...parseNodeArgs([]), matmulTuning: table };
  deepEqual(engineSettings(tuned).matmulTuning, table);
  equal(runSettingsOf(tuned).matmulTuning, undefined);
  const bad: [string[], string][] = [
    [["--n-head", "5"], "Invalid --n-head: 5 does not divide the n-embd 64 of config small"],
    [["--n-head", "5", "--n-embd", "64"], "Invalid --n-head: 5 does not divide --n-embd 64"],
    [["--n-embd", "30"], "Invalid --n-embd: 30 is not a multiple of the n-head 4 of config small"],
    [["--n-layer", "0"], 'Invalid --n-layer: "0" (expected an integer in [1, 256])'],
    [["--block-size", "1.5"], 'Invalid --block-size: "1.5" (expected an integer in [1, 16384])'],
    [["--grad-accum", "0"], 'Invalid --grad-accum: "0" (expected an integer >= 1)'],
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
    /^UsageError: Cannot resume runs\/r: its model has nLayer 3, --n-layer gives 2$/,
  );
});

/** `deno task node ...args` as a subprocess. */
const node = (args: string[]) => runCli("actors/node_main.ts", args);

Deno.test("node: bad flags, combinations and run directories end with one line and exit 2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "node_cli_" });
  try {
    const small = getConfig("small").model;
    const params = initParams(small, 1);
    await new CheckpointStore(dir).commit({
      run: "run",
      round: 3,
      config: small,
      params,
      momentum: new Float32Array(params.length),
    });
    await Deno.writeTextFile(`${dir}/file`, "not a run directory");
    await Deno.writeTextFile(`${dir}/tuning.json`, JSON.stringify({ version: 1, adapters: [] }));
    const cases: [string[], RegExp][] = [
      [["--bogus"], /^node: Unknown option '--bogus'$/],
      [["extra"], /^node: Unexpected argument 'extra'/],
      [["--trainers", "0"], /^node: Invalid --trainers: "0" \(expected an integer >= 1\)$/],
      [["--rounds", "x"], /^node: Invalid --rounds: "x"/],
      [["--config", "nope"], /^node: Invalid --config: "nope" \(known: tiny, /],
      [["--outer-preset", "nope"], /^node: Invalid --outer-preset: "nope" \(known: /],
      [["--keeper-cpu", "2"], /^node: Invalid --keeper-cpu: "2"/],
      [["--role", "keeper"], /^node: Invalid flags: --role keeper joins a run \(--join URL\)/],
      [["--host", "a:1", "--join", "ws://a:1", "--secret", "s"], /--host and --join exclude/],
      [["--host", "127.0.0.1:7777"], /^node: Invalid flags: --host needs --secret or --allow$/],
      [["--host", "127.0.0.1:99999", "--secret", "s"], /^node: Invalid --host: .*99999/],
      [["--dashboard", "8080"], /^node: Invalid --dashboard: expected ADDR:PORT/],
      [
        ["--sample-bytes", "5000"],
        /^node: Invalid --sample-bytes: 5000 \(expected an integer in/,
      ],
      [
        ["--host", "127.0.0.1:1", "--secret", "s", "--dashboard", "127.0.0.1:2"],
        /^node: Invalid flags: --dashboard is for the embedded run/,
      ],
      [["--join", "ws://a:1", "--secret", "s", "--keepers", "1"], /^node: Invalid --keepers: /],
      [["--join", "ws://a:1", "--secret", "s", "--resume", dir], /^node: Invalid flags: --resume/],
      [["--resume", `${dir}/missing`], /^node: NothingToResumeError: Cannot resume: .*\/missing /],
      [["--resume", `${dir}/file`], /^node: NothingToResumeError: Cannot resume: .*\/file cannot/],
      [
        ["--resume", dir, "--rounds", "3"],
        /^node: Invalid --rounds: 3, the run in .* is at round 3/,
      ],
      [
        ["--data", `${dir}/missing`],
        /^node: DataError: Cannot load data: .*\/missing does not exist$/,
      ],
      [["--run-dir", "/proc/none/run"], /^node: Cannot write the run log in \/proc\/none\/run: /],
      [["--tune-file", ""], /^node: Invalid --tune-file: empty path$/],
      [
        ["--tune-file", `${dir}/tuning.json`, "--run-dir", `${dir}/tuned`],
        /^node: Cannot use matmul tuning file .*tuning\.json: Invalid matmul tuning table: adapters is not an object \(delete it/,
      ],
      // 12 GiB of attention scratch: over every adapter's binding limit, refused before any Worker.
      [
        ["--config", "gpt2-small", "--block-size", "4096", "--run-dir", `${dir}/big`],
        /^node: Cannot build model L12 C768 H12 T4096 V256 at batch 16: .* needs 12\.00 GiB/,
      ],
    ];
    for (const [args, re] of cases) {
      const r = await node(args);
      equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      const lines = r.stderr.trim().split("\n");
      equal(lines.length, 1, `${args.join(" ")}: expected one line of stderr, got: ${r.stderr}`);
      match(lines[0], re);
      ok(!/Uncaught|^\s+at /m.test(r.stderr), r.stderr);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("node --help prints every declared flag and exits 0", async () => {
  const r = await node(["--help"]);
  equal(r.code, 0, r.stderr);
  for (const flag of ["--host ADDR:PORT", "--resume DIR", "--n-layer N", "--json", "--verbose"]) {
    ok(r.stdout.includes(flag), `${flag} missing from:\n${r.stdout}`);
  }
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

Deno.test("node flags: keys, allow-lists and TLS files go with the side that uses them", () => {
  const host = parseNodeArgs([
    "--host",
    "127.0.0.1:7777",
    "--allow",
    "keys.txt",
    "--tls-cert",
    "h.crt",
    "--tls-key",
    "h.key",
    "--key",
    "me.key",
  ]);
  deepEqual(
    [host.secret, host.allow, host.tlsCert, host.tlsKey, host.keyFile],
    [undefined, "keys.txt", "h.crt", "h.key", "me.key"],
  );
  equal(parseNodeArgs(["--join", "wss://h:7777", "--ca", "h.crt"]).ca, "h.crt");
  equal(parseNodeArgs(["--join", "ws://h:1", "--host-key", "ab12"]).hostKey, "ab12");
  throws(() => parseNodeArgs(["--host", "h:1", "--secret", "s", "--host-key", "ab"]), /--host-key/);
  throws(() => parseNodeArgs(["--host", "h:1"]), /--host needs --secret or --allow/);
  throws(() => parseNodeArgs(["--join", "ws://h:1", "--allow", "k"]), /--allow goes with --host/);
  throws(() => parseNodeArgs(["--host", "h:1", "--secret", "s", "--ca", "c"]), /--ca goes with/);
  throws(
    () => parseNodeArgs(["--host", "h:1", "--secret", "s", "--tls-cert", "c"]),
    /--tls-cert and --tls-key go together/,
  );
});

Deno.test("node flags: --update-exchange names the update's format, recorded and resumed", () => {
  equal(parseNodeArgs([]).updateExchange, undefined);
  const args = parseNodeArgs(["--exchange", "topk:0.03", "--update-exchange", "topk:.03"]);
  equal(args.updateExchange, "topk:0.03");
  equal(runSettingsOf(args).updateExchange, "topk:0.03");
  throws(
    () => parseNodeArgs(["--update-exchange", "int2"]),
    (err: Error) =>
      err.message ===
        'Invalid --update-exchange: "int2" (known: int8, int4, topk:F with 0 < F <= 1)',
  );
  equal(resumeWith({ updateExchange: "int4" }).updateExchange, "int4");
  equal(
    resumeWith({ updateExchange: "int4" }, ["--update-exchange", "int8"]).updateExchange,
    "int8",
  );
});

Deno.test("node flags: --exchange names a format, reaches the engine and the checkpoint record", () => {
  equal(parseNodeArgs([]).exchange, undefined);
  equal(runSettingsOf(parseNodeArgs([])).exchange, undefined, "int8 runs record what they did");
  const args = parseNodeArgs(["--exchange", "topk:.05"]);
  equal(args.exchange, "topk:0.05");
  equal(engineSettings(args).exchange, "topk:0.05");
  equal(runSettingsOf(args).exchange, "topk:0.05");
  equal(parseNodeArgs(["--exchange", "int4"]).exchange, "int4");
  const bad: [string, string][] = [
    ["int3", 'Invalid --exchange: "int3" (known: int8, int4, topk:F with 0 < F <= 1)'],
    ["topk:0", 'Invalid --exchange: "topk:0": the top-k fraction must be a number in (0, 1]'],
    ["topk:x", 'Invalid --exchange: "topk:x": the top-k fraction must be a number in (0, 1]'],
  ];
  for (const [v, message] of bad) {
    throws(() => parseNodeArgs(["--exchange", v]), (err: Error) => err.message === message, v);
  }
  // A resumed run keeps its recorded format unless --exchange is given.
  equal(resumeWith({ exchange: "int4" }).exchange, "int4");
  equal(resumeWith({ exchange: "int4" }, ["--exchange", "int8"]).exchange, "int8");
  // Joiners send the host's format: their own --exchange must agree with it.
  equal(exchangeConflict(undefined, "int4"), undefined);
  equal(exchangeConflict("int4", "int4"), undefined);
  equal(exchangeConflict("int8", undefined), undefined);
  equal(exchangeConflict("topk:0.05", "int4"), "--exchange topk:0.05 differs from the run's int4");
  // A joiner's --update-exchange must be the host's too (its aggregators send the updates).
  equal(
    exchangeConflict("topk:0.03", undefined, "--update-exchange"),
    "--update-exchange topk:0.03 differs from the run's int8",
  );
});

Deno.test("node flags: --aggregate picks the rule, is recorded with the run and kept on resume", () => {
  equal(parseNodeArgs([]).aggregate, undefined);
  equal(parseNodeArgs(["--aggregate", "trimmed-mean:0.2"]).aggregate, "trimmed-mean:0.2");
  equal(parseNodeArgs(["--aggregate", " clip:2 "]).aggregate, "clip:2");
  throws(() => parseNodeArgs(["--aggregate", "mode"]), /Invalid --aggregate: "mode"/);
  throws(() => parseNodeArgs(["--aggregate", "trimmed-mean:0.6"]), /not in \[0, 0.5\)/);
  const args = parseNodeArgs(["--aggregate", "median"]);
  equal(runSettingsOf(args).aggregate, "median");
  equal(runSettingsOf(parseNodeArgs([])).aggregate, undefined);
  equal(resumeWith({ aggregate: "median" }).aggregate, "median");
  equal(resumeWith({ aggregate: "median" }, ["--aggregate", "mean"]).aggregate, "mean");
});

Deno.test("node flags: --sync/--overlap, --overlap-steps and --fragments reach the run's settings", () => {
  // No flag: the run's default, overlapped, which the run's settings record.
  equal(parseNodeArgs([]).sync, undefined);
  equal(runSettingsOf(parseNodeArgs([])).sync, "overlapped");
  equal(parseNodeArgs(["--overlap-steps", "3"]).overlapSteps, 3);
  equal(parseNodeArgs(["--overlap"]).sync, "overlapped");
  equal(parseNodeArgs(["--sync", "blocking"]).sync, "blocking");
  const a = parseNodeArgs(["--sync", "overlapped", "--overlap-steps", "4", "--fragments", "2"]);
  deepEqual([a.sync, a.overlapSteps, a.fragments], ["overlapped", 4, 2]);
  // Joiners and checkpoints take them from the run's settings.
  const s = runSettingsOf(a);
  deepEqual([s.sync, s.overlapSteps, s.fragments], ["overlapped", 4, 2]);
  throws(
    () => parseNodeArgs(["--sync", "eager"]),
    /Invalid --sync: "eager" \(known: blocking, overlapped\)/,
  );
  throws(() => parseNodeArgs(["--overlap", "--sync", "blocking"]), /--overlap and --sync blocking/);
  throws(
    () => parseNodeArgs(["--sync", "blocking", "--overlap-steps", "3"]),
    /Invalid --overlap-steps: only an overlapped/,
  );
  throws(() => parseNodeArgs(["--overlap", "--overlap-steps", "11"]), /from 1 to H = 10, got 11/);
  throws(() => parseNodeArgs(["--fragments", "0"]), /Invalid --fragments/);
  throws(() => parseNodeArgs(["--config", "tiny", "--fragments", "64"]), /would leave one empty/);
  // Fragments take every exchange format: int4 and top-k move their residual on the piece.
  equal(parseNodeArgs(["--exchange", "topk:0.05", "--fragments", "2"]).fragments, 2);
  equal(parseNodeArgs(["--exchange", "int4", "--fragments", "2"]).exchange, "int4");
  equal(parseNodeArgs(["--exchange", "int4", "--overlap"]).sync, "overlapped");
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
