/**
 * Test helper: runs one of the project's commands (`deno run -A SCRIPT ...`)
 * to its end in the repository root and returns its exit code and output,
 * for the tests of the command lines.
 *
 * @module
 */

/** What a finished command printed, and its exit code. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * Runs `script` (a path from the repository root, e.g. "kernels/eval_main.ts")
 * with `args`, without colours, with `env` added to a minimal environment.
 */
export async function runCli(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<CliRun> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
