/**
 * `deno task train` and `deno task eval` as subprocesses: bad input gets a
 * clear one-line error and a non-zero exit; a short real training run writes a
 * checkpoint whose eval loss is reproducible and agrees with the independent
 * numpy forward pass of tests/gpt2_reference.py.
 */
import { type CliRun, runCli } from "./_cli_run.ts";
import { equal, match, ok } from "@std/assert";
import { assertAgreesWithNumpy } from "./_numpy_gpt2.ts";
import { getConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";
import { initParams } from "../kernels/init.ts";
import { loadCorpus } from "../kernels/corpus.ts";
import { gpt2Tensors, saveGpt2, toHfConfig } from "../checkpoint/gpt2_safetensors.ts";
import { writeSafetensors } from "../checkpoint/safetensors.ts";

const deno = runCli;

const train = (args: string[], env?: Record<string, string>) =>
  deno("kernels/train_main.ts", args, env);
const evalCli = (args: string[], env?: Record<string, string>) =>
  deno("kernels/eval_main.ts", args, env);

/** Asserts a failed run with a single-line error on stderr matching `re`, and no stack. */
function assertFails(r: CliRun, re: RegExp, code?: number): void {
  ok(r.code !== 0, `expected failure, got exit 0: ${r.stdout}`);
  if (code !== undefined) equal(r.code, code, r.stderr);
  const lines = r.stderr.trim().split("\n");
  equal(lines.length, 1, `expected one line of stderr, got: ${r.stderr}`);
  match(lines[0], re);
  ok(!/Uncaught|^\s+at /m.test(r.stderr), `stack trace on stderr: ${r.stderr}`);
}

let dir = "";
let dataFile = "";
let ckpt = "";

Deno.test.beforeAll(async () => {
  dir = await Deno.makeTempDir({ prefix: "engine_cli_" });
  dataFile = `${dir}/val.txt`;
  const { val } = await loadCorpus();
  await Deno.writeFile(dataFile, val.subarray(0, 200_000));
  ckpt = `${dir}/small.safetensors`;
  await saveGpt2(ckpt, getConfig("small").model, initParams(getConfig("small").model, 1));
});

Deno.test.afterAll(async () => {
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train and eval print usage with --help and exit 0", async () => {
  const t = await train(["--help"]);
  equal(t.code, 0);
  match(t.stdout, /Usage: deno task train/);
  match(t.stdout, /--steps N/);
  const e = await evalCli(["--help"]);
  equal(e.code, 0);
  match(e.stdout, /--checkpoint FILE/);
});

Deno.test("train rejects bad flags with a one-line error and exit 2", async () => {
  assertFails(await train(["--bogus"]), /^train: Unknown option '--bogus'/, 2);
  assertFails(
    await train(["--steps", "abc"]),
    /^train: Invalid --steps: "abc" \(expected an integer >= 1\)$/,
    2,
  );
  assertFails(await train(["--steps", "0"]), /Invalid --steps/, 2);
  assertFails(await train(["--lr=-1"]), /^train: Invalid --lr: "-1"/, 2);
  assertFails(await train(["--lr", "nan"]), /^train: Invalid --lr: "nan"/, 2);
  assertFails(
    await train(["--config", "huge"]),
    /^train: Unknown model config: "huge" \(known: tiny, small/,
    2,
  );
  assertFails(await train(["--steps"]), /^train: Option '--steps <value>' argument missing/, 2);
  assertFails(await train(["extra"]), /^train: Unexpected argument 'extra'/, 2);
});

Deno.test("bad paths and values end with one line naming them and exit 2, the stack only with --verbose", async () => {
  const cases: [string[], RegExp][] = [
    [
      ["--data", "/nonexistent"],
      /^train: DataError: Cannot load data: \/nonexistent does not exist$/,
    ],
    [["--data", dir + "/empty"], /^train: DataError: Cannot load data: .*\/empty holds no files$/],
    [["--out", "/proc/none/out"], /^train: Cannot write --out \/proc\/none\/out: /],
    [["--config", "nope"], /^train: Unknown model config: "nope"/],
    [["--trainers", "2"], /^train: Unknown option '--trainers'/],
    [["--lr", "-1"], /^train: Option '--lr' argument is ambiguous; .*'--lr=-XYZ'$/],
    [["--eval-every", "x"], /^train: Invalid --eval-every: "x"/],
    [["--tune-file", ""], /^train: Invalid --tune-file: empty path$/],
    [
      ["--tune-file", `${dir}/tuning.json`],
      /^train: Cannot use matmul tuning file .*tuning\.json: Invalid matmul tuning table: version 7 \(expected 1\) \(delete it to measure again\)$/,
    ],
  ];
  await Deno.mkdir(`${dir}/empty`, { recursive: true });
  await Deno.writeTextFile(`${dir}/tuning.json`, JSON.stringify({ version: 7, adapters: {} }));
  for (const [args, re] of cases) assertFails(await train(args), re, 2);
  const evalCases: [string[], RegExp][] = [
    [["--checkpoint", "/etc/hostname"], /^eval: SafetensorsError: .*\/etc\/hostname/],
    [["--checkpoint", dir], /^eval: SafetensorsError: Cannot read checkpoint: .* is a directory$/],
    [
      ["--checkpoint", ckpt, "--data", dir],
      /^eval: DataError: Cannot load data: .* is not a file$/,
    ],
    [["--checkpoint", ckpt, "--config", "nope"], /^eval: Unknown model config: "nope"/],
    [["--checkpoint", ckpt, "--batch", "0"], /^eval: Invalid --batch: "0"/],
  ];
  for (const [args, re] of evalCases) assertFails(await evalCli(args), re, 2);
  const verbose = await train(["--data", "/nonexistent", "--verbose"]);
  equal(verbose.code, 2);
  const [first, ...stack] = verbose.stderr.trim().split("\n");
  match(first, /^train: DataError: Cannot load data: \/nonexistent does not exist$/);
  ok(stack.some((l) => /^\s+at .*corpus\.ts/.test(l)), verbose.stderr);
});

Deno.test("train and eval fail with GpuUnavailableError when there is no WebGPU adapter", async () => {
  // No adapter exists for the DirectX 12 backend on Linux: the real "no adapter" path.
  const env = { DENO_WEBGPU_BACKEND: "dx12" };
  assertFails(
    await train(["--data", dataFile, "--steps", "1", "--out", `${dir}/nogpu`], env),
    /^train: GpuUnavailableError: Cannot start WebGPU: no adapter found with DENO_WEBGPU_BACKEND="dx12" \(unset it/,
    1,
  );
  assertFails(
    await evalCli(["--checkpoint", ckpt, "--data", dataFile], env),
    /^eval: GpuUnavailableError: Cannot start WebGPU/,
    1,
  );
});

Deno.test("train and eval refuse --precision f16 by name where the device lacks shader-f16 (GL)", async () => {
  // Mesa's GL backend offers no shader-f16; the flags asked for it: exit 2, before any step.
  const env = { DENO_WEBGPU_BACKEND: "gl" };
  const refused =
    /Cannot use precision f16: the device lacks the shader-f16 feature \(.*backend gl/;
  assertFails(
    await train(
      ["--data", dataFile, "--steps", "1", "--precision", "f16", "--out", `${dir}/gl16`],
      env,
    ),
    new RegExp(`^train: ${refused.source}`),
    2,
  );
  assertFails(
    await evalCli(["--checkpoint", ckpt, "--data", dataFile, "--precision", "f16"], env),
    new RegExp(`^eval: ${refused.source}`),
    2,
  );
  assertFails(await train(["--precision", "bf16"]), /^train: Invalid --precision: "bf16"/, 2);
});

Deno.test("eval rejects missing, truncated and corrupt checkpoints", async () => {
  assertFails(await evalCli([]), /^eval: Missing --checkpoint FILE/, 2);
  assertFails(await evalCli(["--checkpoint", ckpt, "--nope"]), /^eval: Unknown option '--nope'/, 2);
  assertFails(
    await evalCli(["--checkpoint", ckpt, "--max-windows", "0"]),
    /Invalid --max-windows/,
    2,
  );
  assertFails(
    await evalCli(["--checkpoint", `${dir}/none.safetensors`]),
    /^eval: SafetensorsError: Cannot read checkpoint: .*none\.safetensors does not exist$/,
    2,
  );
  const bytes = await Deno.readFile(ckpt);
  const truncated = `${dir}/truncated.safetensors`;
  await Deno.writeFile(truncated, bytes.subarray(0, bytes.length - 100));
  assertFails(
    await evalCli(["--checkpoint", truncated]),
    /^eval: SafetensorsError: Invalid safetensors file .*truncated: tensor .* ends at byte/,
    2,
  );
  const garbage = `${dir}/garbage.safetensors`;
  await Deno.writeTextFile(garbage, "this is not a checkpoint at all");
  assertFails(
    await evalCli(["--checkpoint", garbage]),
    /^eval: SafetensorsError: Invalid safetensors file .*header length/,
    2,
  );
  const badJson = bytes.slice();
  badJson[8] = 0x5b; // '[' in place of '{'
  const corrupt = `${dir}/corrupt.safetensors`;
  await Deno.writeFile(corrupt, badJson);
  assertFails(
    await evalCli(["--checkpoint", corrupt]),
    /^eval: SafetensorsError: Invalid safetensors file .*header is not valid JSON/,
    2,
  );
});

Deno.test("eval rejects a checkpoint whose config does not match", async () => {
  assertFails(
    await evalCli(["--checkpoint", ckpt, "--config", "tiny", "--data", dataFile]),
    /^eval: CheckpointMismatchError: Checkpoint does not match the model config: .*"n_embd":64.*expected .*"n_embd":16/,
    2,
  );
  // Tensors of the small model under metadata that claims the tiny shape.
  const small = getConfig("small").model;
  const lying = `${dir}/lying.safetensors`;
  await writeSafetensors(lying, gpt2Tensors(buildLayout(small), initParams(small, 1)), {
    config: JSON.stringify(toHfConfig(getConfig("tiny").model)),
  });
  assertFails(
    await evalCli(["--checkpoint", lying, "--data", dataFile]),
    /^eval: CheckpointMismatchError: Checkpoint .*: tensor wte.weight has shape \[256,64\], the config needs \[256,16\]$/,
    2,
  );
  assertFails(
    await evalCli(["--checkpoint", ckpt, "--data", `${dir}/missing.bin`]),
    /^eval: DataError: Cannot load data: .*missing\.bin does not exist$/,
    2,
  );
});

Deno.test("a short training run writes a checkpoint whose eval loss is reproducible and matches numpy", async () => {
  const out = `${dir}/run`;
  const t = await train([
    "--steps",
    "25",
    "--data",
    dataFile,
    "--out",
    out,
    "--json",
    "--eval-every",
    "10",
    "--eval-windows",
    "8",
    "--seed",
    "3",
  ]);
  equal(t.code, 0, t.stderr);
  const lines = t.stdout.trim().split("\n").map((l) => JSON.parse(l));
  equal(lines[0].event, "start");
  equal(lines.filter((l) => typeof l.step === "number" && typeof l.loss === "number").length, 25);
  const evals = lines.filter((l) => typeof l.val_loss === "number" && l.event === undefined);
  equal(evals.length, 2);
  // Each evaluation, and the end, carries a text sample (100 bytes, decoded with replacement).
  for (const l of [...evals, lines.at(-1)]) ok(typeof l.sample === "string" && l.sample.length > 0);
  const done = lines.at(-1);
  equal(done.event, "done");
  ok(done.val_loss < 5.0, `val loss after 25 steps: ${done.val_loss}`);
  ok(done.tokens_per_s > 0);
  const path = `${out}/model.safetensors`;
  equal(done.checkpoint, path);
  const args = ["--checkpoint", path, "--data", dataFile, "--max-windows", "96", "--json"];
  const e1 = await evalCli(args);
  equal(e1.code, 0, e1.stderr);
  const r1 = JSON.parse(e1.stdout.trim().split("\n").at(-1)!);
  equal(r1.windows, 96);
  const e2 = await evalCli([...args, "--batch", "7"]);
  const r2 = JSON.parse(e2.stdout.trim().split("\n").at(-1)!);
  equal(r2.eval_loss, r1.eval_loss, "eval must give the same number every run and batch size");
  await assertAgreesWithNumpy(r1, { checkpoint: path, data: dataFile, maxWindows: 96 });
});
