/**
 * A {@linkcode MatmulTuner}'s table in a file, so that a machine measures its
 * matmuls once: `--tune-matmuls` of `deno task train` and `deno task bench`
 * read it before building the model and write it back after.
 *
 * @module
 */
import { MatmulTuner, type TuneResult, type TunerOptions } from "./matmul_tune.ts";
import { envVar } from "./_env.ts";

/**
 * Where the table lives by default: `$XDG_CACHE_HOME/decentra/matmul_tuning.json`,
 * else `$HOME/.cache/decentra/matmul_tuning.json`, else in the working directory.
 */
export function defaultTuningFile(): string {
  const cache = envVar("XDG_CACHE_HOME") ||
    (envVar("HOME") ? `${envVar("HOME")}/.cache` : undefined);
  return cache ? `${cache}/decentra/matmul_tuning.json` : ".matmul_tuning.json";
}

/**
 * The tuner whose table `path` holds, or an empty one when there is no such
 * file. A file that is not a table is an Error naming the file and what is
 * wrong with it (delete it to measure again).
 */
export async function loadTuner(path: string, options: TunerOptions = {}): Promise<MatmulTuner> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return new MatmulTuner(options);
    throw new Error(`Cannot read matmul tuning file ${path}: ${(err as Error).message}`);
  }
  try {
    return MatmulTuner.fromJSON(JSON.parse(text), options);
  } catch (err) {
    throw new Error(
      `Cannot use matmul tuning file ${path}: ${
        (err as Error).message
      } (delete it to measure again)`,
    );
  }
}

/** Writes the tuner's table to `path` (parent folders made; a temporary file renamed over it). */
export async function saveTuner(path: string, tuner: MatmulTuner): Promise<void> {
  const slash = path.lastIndexOf("/");
  if (slash > 0) await Deno.mkdir(path.slice(0, slash), { recursive: true });
  const tmp = `${path}.${Deno.pid}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(tuner.toJSON(), null, 1) + "\n");
  await Deno.rename(tmp, path);
}

/** A measured shape as the commands log it with `--json` (a `tuned` event). */
export function tunedEvent(r: TuneResult): Record<string, unknown> {
  return {
    event: "tuned",
    shape: r.key,
    variant: r.variant,
    ms: r.ms,
    default: r.heuristic,
    default_ms: r.heuristicMs,
  };
}

/**
 * A measured shape as the commands print it without `--json`, e.g.
 * `tuning matmuls: NT 4096x2304x768: tile128 1.200 ms (default tile64 1.500 ms)`
 * or `tuning attention: flash 16x256x768x12: split …` for the key pass.
 */
export function tunedText(r: TuneResult): string {
  const what = r.key.startsWith("flash ") ? "attention" : "matmuls";
  return `tuning ${what}: ${r.key}: ${r.variant} ${r.ms.toFixed(3)} ms ` +
    `(default ${r.heuristic} ${r.heuristicMs.toFixed(3)} ms)`;
}
