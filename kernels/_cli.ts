/**
 * Small helpers shared by the engine's command-line entry points
 * (train_main.ts, eval_main.ts): strict flag parsing with one-line errors.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "@std/cli";

/** Raised for bad command-line input; the entry points print its message and exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Parses `args` strictly against `options`, turning parseArgs errors into a UsageError. */
export function parseFlags<O extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: O,
) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    // node:util's messages can span lines (hints about "--"): keep the first one.
    throw new UsageError(msg.split("\n")[0].replace(/\.$/, ""));
  }
}

/** A positive (or, with `min: 0`, non-negative) integer flag value. */
export function intFlag(name: string, value: string | undefined, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < min) {
    throw new UsageError(
      `Invalid --${name}: ${JSON.stringify(value)} (expected an integer >= ${min})`,
    );
  }
  return n;
}

/** A finite number flag value in (min, max]. */
export function numberFlag(
  name: string,
  value: string | undefined,
  range: { min: number; max: number },
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n <= range.min || n > range.max) {
    throw new UsageError(
      `Invalid --${name}: ${
        JSON.stringify(value)
      } (expected a number in (${range.min}, ${range.max}])`,
    );
  }
  return n;
}

/** Prints `prog: message` to stderr and exits: 2 for usage errors, 1 otherwise. */
export function exitWithError(prog: string, err: unknown): never {
  const msg = err instanceof Error ? err.message : String(err);
  // Name typed errors (GpuUnavailableError, SafetensorsError, ...) so scripts can tell them apart.
  const typed = err instanceof Error && !(err instanceof UsageError) && err.name !== "Error";
  const name = typed ? `${(err as Error).name}: ` : "";
  console.error(`${prog}: ${name}${msg}`);
  Deno.exit(err instanceof UsageError ? 2 : 1);
}
