/**
 * The command line of every entry point (`deno task train`, `eval`, `node`,
 * `experiment`, `chaos`, `bench`): flags declared once with their help text,
 * strict parsing, `--help` printed from the same declaration, and every error
 * as one line `prog: message` on stderr with exit code 2 for bad input (a
 * flag, or a file or folder it names) and 1 for failures while running; the
 * stack trace only with `--verbose`. Also the progress line that `train` and
 * `node` update in place on a terminal.
 *
 * It lives in kernels/ because every layer's entry points may import kernels/.
 *
 * @example A command with one flag
 * ```ts
 * import { type Command, helpText, parseFlags } from "./cli.ts";
 * import assert from "node:assert/strict";
 * const cmd: Command = {
 *   prog: "greet",
 *   usage: "deno task greet [flags]",
 *   about: "Greets someone.",
 *   flags: { name: { value: "NAME", help: "whom to greet (default world)" } },
 * };
 * assert.equal(parseFlags(cmd, ["--name", "Ada"]).name, "Ada");
 * assert.match(helpText(cmd), /--name NAME +whom to greet/);
 * assert.throws(() => parseFlags(cmd, ["--nme", "Ada"]), /Unknown option '--nme'/);
 * ```
 *
 * @module
 */
import { parseArgs } from "@std/cli";
import type { Precision } from "./model_options.ts";
import { defaultTuningFile } from "./matmul_tune_file.ts";

/**
 * Bad input: a flag, a combination of flags, or a file or folder a flag
 * names. Commands print its message and exit 2.
 *
 * @example
 * ```ts
 * import { UsageError } from "./cli.ts";
 * console.log(new UsageError("Invalid --steps: \"0\"").name); // UsageError
 * ```
 */
export class UsageError extends Error {
  override name = "UsageError";
}

/** One flag: its kind and its help text. */
export interface FlagSpec {
  /** "string" (the default) takes a value; "boolean" is a switch. */
  type?: "string" | "boolean";
  /** The value's placeholder in the help text, e.g. `N` or `PATH` (default `X`). */
  value?: string;
  /** Help text; further lines are indented under the first. */
  help: string;
  /** A string flag that may repeat; its values in order. */
  multiple?: boolean;
  /** A one-letter alias, e.g. `h`. */
  short?: string;
}

/** A command's flags by name (without the leading `--`). */
export type FlagSpecs = Record<string, FlagSpec>;

/** The parsed values of `F`: strings, string lists for `multiple`, booleans for switches. */
export type Flags<F extends FlagSpecs> =
  & {
    -readonly [K in keyof F]?: F[K]["type"] extends "boolean" ? boolean
      : F[K]["multiple"] extends true ? string[]
      : string;
  }
  & { help?: boolean; verbose?: boolean };

/** What a command is: its name, usage line, description and flags. */
export interface Command<F extends FlagSpecs = FlagSpecs> {
  /** The name errors start with: `prog: message`. */
  prog: string;
  /** The usage line, e.g. `deno task train [flags]`. */
  usage: string;
  /** What the command does, printed before the flags. */
  about: string;
  /** Its flags; `--verbose` and `--help` are added to every command. */
  flags: F;
  /** Printed after the flags. */
  notes?: string;
}

/** The flags every command has. */
const COMMON: FlagSpecs = {
  verbose: { type: "boolean", help: "on an error, print its stack trace too" },
  help: { type: "boolean", short: "h", help: "this text" },
};

/** A command's flags, then the common ones it does not declare itself (to say more of them). */
function allFlags(cmd: Command): FlagSpecs {
  const common = Object.entries(COMMON).filter(([name]) => !Object.hasOwn(cmd.flags, name));
  return { ...cmd.flags, ...Object.fromEntries(common) };
}

/**
 * The `--help` text of `cmd`, from its declaration.
 *
 * @example
 * ```ts
 * import { helpText } from "./cli.ts";
 * const text = helpText({ prog: "p", usage: "p [flags]", about: "Does p.", flags: {} });
 * console.log(text.split("\n")[0]); // Usage: p [flags]
 * ```
 */
export function helpText<F extends FlagSpecs>(cmd: Command<F>): string {
  const entries = Object.entries(allFlags(cmd)).map(([name, spec]) => {
    const head = spec.type === "boolean" ? `--${name}` : `--${name} ${spec.value ?? "X"}`;
    return [head, spec.help] as const;
  });
  const width = Math.max(...entries.map(([head]) => head.length)) + 2;
  const lines = entries.map(([head, help]) =>
    `  ${head.padEnd(width)}${help.split("\n").join(`\n  ${" ".repeat(width)}`)}`
  );
  const notes = cmd.notes ? `\n${cmd.notes.replace(/\n*$/, "\n")}` : "";
  return `Usage: ${cmd.usage}\n\n${cmd.about.trim()}\n\nFlags:\n${lines.join("\n")}\n${notes}`;
}

/**
 * Parses `argv` strictly against `cmd`'s flags (no positionals, no unknown
 * flags, values where declared).
 *
 * @throws {UsageError} naming the flag at fault
 *
 * @example
 * ```ts
 * import { parseFlags } from "./cli.ts";
 * const cmd = { prog: "p", usage: "p", about: "", flags: { json: { type: "boolean", help: "" } } } as const;
 * console.log(parseFlags(cmd, ["--json"]).json); // true
 * ```
 */
export function parseFlags<F extends FlagSpecs>(cmd: Command<F>, argv: string[]): Flags<F> {
  const options = Object.fromEntries(
    Object.entries(allFlags(cmd)).map(([name, s]) => [
      name,
      {
        type: s.type ?? "string",
        ...(s.multiple ? { multiple: true } : {}),
        ...(s.short ? { short: s.short } : {}),
      },
    ]),
  ) as Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }>;
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: false })
      .values as Flags<F>;
  } catch (err) {
    // node:util's messages span lines: keep the first, and the hint on values that start
    // with "-" (`--lr -1`) but not the one about positionals, which no command takes.
    const [first, ...rest] = errorMessage(err).split("\n");
    const dash = rest.find((l) => l.includes("=-XYZ"))?.replace(/^T/, "t");
    throw new UsageError(first.replace(/\.$/, "") + (dash ? `; ${dash.replace(/\.$/, "")}` : ""));
  }
}

/**
 * A positive (or, with `min: 0`, non-negative) integer flag value; undefined
 * when the flag is absent.
 *
 * @throws {UsageError} naming the flag and what it expects
 *
 * @example
 * ```ts
 * import { intFlag } from "./cli.ts";
 * console.log(intFlag("steps", "20"), intFlag("steps", undefined)); // 20 undefined
 * ```
 */
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

/**
 * A finite number flag value in (min, max] (with `closedMin`, [min, max];
 * `max` may be Infinity); undefined when the flag is absent.
 *
 * @throws {UsageError} naming the flag and its range
 *
 * @example
 * ```ts
 * import { numberFlag } from "./cli.ts";
 * console.log(numberFlag("lr", "0.01", { min: 0, max: 10 })); // 0.01
 * ```
 */
export function numberFlag(
  name: string,
  value: string | undefined,
  range: { min: number; max: number; closedMin?: boolean },
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  const low = range.closedMin ? n >= range.min : n > range.min;
  if (value.trim() === "" || !Number.isFinite(n) || !low || n > range.max) {
    const lowText = `${range.closedMin ? ">=" : ">"} ${range.min}`;
    const expect = range.max === Infinity
      ? lowText
      : `in ${range.closedMin ? "[" : "("}${range.min}, ${range.max}]`;
    throw new UsageError(
      `Invalid --${name}: ${JSON.stringify(value)} (expected a number ${expect})`,
    );
  }
  return n;
}

/**
 * One of `known` as a flag value; `fallback` when the flag is absent.
 *
 * @throws {UsageError} naming the flag and the known values
 *
 * @example
 * ```ts
 * import { choiceFlag } from "./cli.ts";
 * console.log(choiceFlag("role", undefined, ["trainer", "keeper"], "trainer")); // trainer
 * ```
 */
export function choiceFlag<T extends string>(
  name: string,
  value: string | undefined,
  known: readonly T[],
  fallback: T,
): T {
  if (value === undefined) return fallback;
  if (!(known as readonly string[]).includes(value)) {
    throw new UsageError(
      `Invalid --${name}: ${JSON.stringify(value)} (known: ${known.join(", ")})`,
    );
  }
  return value as T;
}

/**
 * Runs `read` (parsing flags, opening the files and folders they name),
 * turning any error into a UsageError that keeps the original as its cause:
 * what fails here is the input's fault, so the command exits 2.
 *
 * @example
 * ```ts
 * import { readInput, UsageError } from "./cli.ts";
 * import assert from "node:assert/strict";
 * await assert.rejects(() => readInput(() => Deno.readTextFile("/nonexistent")), UsageError);
 * ```
 */
export async function readInput<T>(read: () => T | Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(errorMessage(err), { cause: err });
  }
}

/** Error names that say nothing a script would tell apart: not printed before the message. */
const PLAIN = new Set(["Error", "UsageError", "RangeError", "TypeError"]);

/**
 * The one line a command prints for `err`: `prog: [ErrorName: ]message`,
 * the name kept for typed errors (GpuUnavailableError, SafetensorsError, ...)
 * so that scripts can tell them apart; a message over several lines is
 * joined into one.
 *
 * @example
 * ```ts
 * import { errorLine } from "./cli.ts";
 * console.log(errorLine("eval", new RangeError("Invalid --batch: \"0\""))); // eval: Invalid --batch: "0"
 * ```
 */
export function errorLine(prog: string, err: unknown): string {
  const shown = err instanceof UsageError && err.cause instanceof Error ? err.cause : err;
  const name = shown instanceof Error && !PLAIN.has(shown.name) ? `${shown.name}: ` : "";
  const msg = errorMessage(shown).trim().replace(/\s*\n\s*/g, "; ");
  return `${prog}: ${name}${msg}`;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Runs a command: parses `argv` against `cmd` (printing the help text and
 * exiting 0 on `--help`), calls `main` with the flags, and exits with the
 * code it returns (0 when it returns nothing). Any error ends the process
 * with {@linkcode errorLine} on stderr and exit code 2 for a UsageError
 * (see {@linkcode readInput}), 1 otherwise; `--verbose` adds the stack.
 *
 * @example
 * ```ts ignore
 * import { runCommand } from "./cli.ts";
 * await runCommand(cmd, Deno.args, async (flags) => {
 *   await work(flags);
 * });
 * ```
 */
export async function runCommand<F extends FlagSpecs>(
  cmd: Command<F>,
  argv: string[],
  main: (flags: Flags<F>) => Promise<number | void> | number | void,
): Promise<never> {
  let code: number;
  try {
    const flags = parseFlags(cmd, argv);
    if (flags.help) {
      console.log(helpText(cmd));
      code = 0;
    } else {
      code = (await main(flags)) ?? 0;
    }
  } catch (err) {
    console.error(errorLine(cmd.prog, err));
    if (argv.includes("--verbose")) console.error(stackOf(err));
    code = err instanceof UsageError ? 2 : 1;
  }
  Deno.exit(code);
}

function stackOf(err: unknown): string {
  const shown = err instanceof UsageError && err.cause instanceof Error ? err.cause : err;
  return shown instanceof Error ? shown.stack ?? shown.message : String(shown);
}

/** Options of {@linkcode ProgressLine}. */
export interface ProgressOptions {
  /**
   * When the stream is not a terminal, the seconds between plain lines
   * (0 = every update); on a terminal every update rewrites the line.
   */
  plainEvery?: number;
  /** Where the line goes (default stderr). */
  out?: { writeSync(p: Uint8Array): number; isTerminal(): boolean };
}

/**
 * A status line updated in place on a terminal (`\r`), or written as plain
 * lines (at most one per `plainEvery` seconds) to a file or pipe, so that a
 * log holds readable lines instead of carriage returns.
 *
 * @example
 * ```ts
 * import { ProgressLine } from "./cli.ts";
 * const progress = new ProgressLine({ plainEvery: 0 });
 * progress.update("step 1/2");
 * progress.note("a line of its own");
 * progress.done("step 2/2");
 * ```
 */
export class ProgressLine {
  #out: NonNullable<ProgressOptions["out"]>;
  #tty: boolean;
  #every: number;
  #shown = "";
  #printed = "";
  #lastPlain = -Infinity;
  #enc = new TextEncoder();

  /** A progress line on `options.out` (default stderr). */
  constructor(options: ProgressOptions = {}) {
    this.#out = options.out ?? Deno.stderr;
    this.#tty = this.#out.isTerminal();
    this.#every = options.plainEvery ?? 0;
  }

  /** Shows `text` as the current status. */
  update(text: string): void {
    if (this.#tty) this.refresh(text);
    else if (performance.now() - this.#lastPlain >= this.#every * 1000) {
      this.#lastPlain = performance.now();
      this.#printed = text;
      this.#write(`${text}\n`);
    }
  }

  /** Shows `text` in place on a terminal only: a detail not worth a line in a log. */
  refresh(text: string): void {
    if (!this.#tty) return;
    this.#shown = text;
    this.#write(`\r\x1b[2K${text}`);
  }

  /** Prints `line` on a line of its own; the status line stays below it. */
  note(line: string): void {
    if (this.#tty && this.#shown) this.#write(`\r\x1b[2K${line}\n${this.#shown}`);
    else this.#write(`${line}\n`);
  }

  /** Shows `text` as the last status and ends the line (in a log, unless just printed). */
  done(text: string): void {
    if (this.#tty) this.#write(`\r\x1b[2K${text}\n`);
    else if (text !== this.#printed) this.#write(`${text}\n`);
    this.#shown = "";
  }

  #write(text: string): void {
    const bytes = this.#enc.encode(text);
    for (let at = 0; at < bytes.length;) at += this.#out.writeSync(bytes.subarray(at));
  }
}

/** The `--precision` flag of the commands that build a model (train, eval, sample, node). */
export const PRECISION_FLAG = {
  precision: {
    value: "f32|f16",
    help: "matmul inputs: f16 (f32 sums, master weights, gradients and AdamW) or f32\n" +
      "(default f32; f16 needs shader-f16)",
  },
} as const;

/**
 * Reads a `--precision` value: undefined when absent (the model's default);
 * anything but f32 or f16 is a UsageError naming the flag.
 *
 * @example
 * ```ts
 * import { precisionFlag } from "./cli.ts";
 * console.log(precisionFlag("f16")); // f16
 * ```
 */
export function precisionFlag(value: string | undefined): Precision | undefined {
  if (value === undefined || value === "f32" || value === "f16") return value;
  throw new UsageError(`Invalid --precision: ${JSON.stringify(value)} (known: f32, f16)`);
}

/** The matmul tuning flags of the commands that train (train, bench, node). */
export const TUNE_FLAGS = {
  "tune-matmuls": {
    type: "boolean",
    help: "time the matmul variants of each of the model's shapes (and, with flash attention,\n" +
      "its backward's key pass fused and split) on this device and use the fastest; the choices\n" +
      "are kept in --tune-file and reused (default: the built-in choice)",
  },
  "tune-file": {
    value: "FILE",
    help: "where --tune-matmuls keeps its choices (implies it; default\n" +
      "~/.cache/decentra/matmul_tuning.json)",
  },
} as const;

/**
 * The tuning file the flags ask for: undefined without `--tune-matmuls` and
 * `--tune-file`, else that file (or the default one).
 *
 * @example
 * ```ts
 * import { tuneFileFlag } from "./cli.ts";
 * console.log(tuneFileFlag(false, "t.json")); // t.json
 * console.log(tuneFileFlag(undefined, undefined)); // undefined
 * ```
 */
export function tuneFileFlag(
  tune: boolean | undefined,
  file: string | undefined,
): string | undefined {
  if (file !== undefined && file.trim() === "") {
    throw new UsageError("Invalid --tune-file: empty path");
  }
  return file ?? (tune ? defaultTuningFile() : undefined);
}

/**
 * `err` from `createModel` as a command should report it: a UsageError (exit
 * 2) when the options asked for what the device cannot hold (a shape over its
 * buffer limits, f16 without `shader-f16`), else `err` itself.
 *
 * @example
 * ```ts ignore
 * const model = await createModel(gpu, config, options).catch((err) => { throw asUsageError(err); });
 * ```
 */
export function asUsageError(err: unknown): unknown {
  const refused = err instanceof RangeError && err.message.startsWith("Cannot build model") ||
    err instanceof Error && err.message.startsWith("Cannot use precision");
  return refused ? new UsageError((err as Error).message) : err;
}
