/**
 * Test helper: the independent numpy GPT-2 of tests/gpt2_reference.py, run on
 * a checkpoint, for comparison with `deno task eval` and `deno task sample`.
 *
 * @module
 */
import { equal, ok } from "@std/assert";
import { runCli } from "./_cli_run.ts";

const SCRIPT = new URL("./gpt2_reference.py", import.meta.url).pathname;

/** What the numpy reference computed. */
export interface NumpyEval {
  eval_loss: number;
  windows: number;
}

/**
 * Runs tests/gpt2_reference.py with `args` and parses its JSON line; `null`
 * (with a warning saying why) when python3 or numpy is missing on this machine.
 */
async function runReference(args: string[]): Promise<unknown | null> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("python3", {
      args: [SCRIPT, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch {
    console.warn("SKIPPED numpy agreement: python3 is not on PATH");
    return null;
  }
  const stderr = new TextDecoder().decode(out.stderr);
  if (out.code !== 0 && /No module named 'numpy'/.test(stderr)) {
    console.warn("SKIPPED numpy agreement: numpy is not installed for python3");
    return null;
  }
  equal(out.code, 0, stderr);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim());
}

/**
 * Runs the numpy reference on `checkpoint` over `data`; `null` (with a
 * warning saying why) when python3 or numpy is missing on this machine.
 */
export async function numpyEval(
  checkpoint: string,
  data: string,
  maxWindows: number,
): Promise<NumpyEval | null> {
  return await runReference([checkpoint, data, "--max-windows", String(maxWindows)]) as
    | NumpyEval
    | null;
}

/**
 * The numpy reference's logits [n][V] at every position of the last
 * n = min(length, block_size) bytes of the file `context`, read as one
 * context; `null` when python3 or numpy is missing.
 */
export async function numpyLogits(
  checkpoint: string,
  context: string,
): Promise<number[][] | null> {
  const out = await runReference([checkpoint, context, "--logits"]) as
    | { logits: number[][] }
    | null;
  return out && out.logits;
}

/**
 * Asserts that `mine` (the output of `deno task eval --json`) agrees with the
 * numpy reference on the same checkpoint and data within 1e-4 relative.
 */
export async function assertAgreesWithNumpy(
  mine: NumpyEval,
  run: { checkpoint: string; data: string; maxWindows: number },
): Promise<void> {
  const ref = await numpyEval(run.checkpoint, run.data, run.maxWindows);
  if (ref === null) return;
  equal(ref.windows, mine.windows);
  const rel = Math.abs(mine.eval_loss - ref.eval_loss) / ref.eval_loss;
  ok(rel < 1e-4, `deno eval ${mine.eval_loss} vs numpy ${ref.eval_loss}: relative ${rel}`);
}

/**
 * Runs `deno task eval --json` on `checkpoint` over a short English text
 * written into `dir`, asserts it succeeds with a finite loss and agrees with
 * the numpy reference; returns what eval printed.
 */
export async function assertEvalAgreesWithNumpy(
  checkpoint: string,
  dir: string,
): Promise<NumpyEval> {
  const data = `${dir}/data.txt`;
  await Deno.writeTextFile(
    data,
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, " +
      "must be in want of a wife. ".repeat(8),
  );
  const maxWindows = 32;
  const out = await runCli("kernels/eval_main.ts", [
    "--checkpoint",
    checkpoint,
    "--data",
    data,
    "--max-windows",
    String(maxWindows),
    "--json",
  ]);
  equal(out.code, 0, out.stderr);
  const mine: NumpyEval = JSON.parse(out.stdout.trim().split("\n").at(-1)!);
  ok(Number.isFinite(mine.eval_loss), `eval loss: ${mine.eval_loss}`);
  await assertAgreesWithNumpy(mine, { checkpoint, data, maxWindows });
  return mine;
}
