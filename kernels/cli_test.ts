import { deepEqual, equal, match, throws } from "@std/assert";
import {
  choiceFlag,
  type Command,
  errorLine,
  helpText,
  intFlag,
  numberFlag,
  parseFlags,
  ProgressLine,
  UsageError,
} from "./cli.ts";

const CMD = {
  prog: "demo",
  usage: "deno task demo [flags]",
  about: "Does the demo.",
  flags: {
    steps: { value: "N", help: "steps (default 1)" },
    only: { value: "NAME", multiple: true, help: "repeatable\nsecond line" },
    json: { type: "boolean", help: "JSON lines" },
  },
} as const satisfies Command;

Deno.test("cli: one declaration gives the parser and the help text, --help and --verbose included", () => {
  deepEqual(
    { ...parseFlags(CMD, ["--steps", "3", "--only", "a", "--only=b", "--json", "--verbose"]) },
    { steps: "3", only: ["a", "b"], json: true, verbose: true },
  );
  equal(parseFlags(CMD, ["-h"]).help, true);
  const help = helpText(CMD);
  match(help, /^Usage: deno task demo \[flags\]\n\nDoes the demo\.\n\nFlags:\n/);
  match(help, /\n {2}--steps N {4}steps \(default 1\)\n/);
  match(help, /\n {2}--only NAME {2}repeatable\n {15}second line\n/);
  match(
    help,
    /\n {2}--verbose {4}on an error, print its stack trace too\n {2}--help {7}this text\n$/,
  );
});

Deno.test("cli: parse errors are one-line UsageErrors naming the flag", () => {
  const cases: [string[], string][] = [
    [["--nope"], "Unknown option '--nope'"],
    [["--steps"], "Option '--steps <value>' argument missing"],
    [["extra"], "Unexpected argument 'extra'. This command does not take positional arguments"],
    [
      ["--steps", "-1"],
      "Option '--steps' argument is ambiguous; to specify an option argument starting with a dash use '--steps=-XYZ'",
    ],
  ];
  for (const [argv, message] of cases) {
    throws(
      () => parseFlags(CMD, argv),
      (err: Error) => err instanceof UsageError && err.message === message,
      `${argv.join(" ")}: expected ${message}`,
    );
  }
});

Deno.test("cli: flag values are checked with messages that name the flag and the range", () => {
  equal(intFlag("steps", " 7 "), 7);
  equal(intFlag("seed", "0", 0), 0);
  throws(
    () => intFlag("steps", "0"),
    /^UsageError: Invalid --steps: "0" \(expected an integer >= 1\)$/,
  );
  throws(() => intFlag("steps", "1e3"), /Invalid --steps: "1e3"/);
  equal(numberFlag("lr", "0.5", { min: 0, max: 1 }), 0.5);
  throws(
    () => numberFlag("lr", "0", { min: 0, max: 1 }),
    /Invalid --lr: "0" \(expected a number in \(0, 1\]\)$/,
  );
  throws(
    () => numberFlag("outer-lr", "-1", { min: 0, max: Infinity, closedMin: true }),
    /Invalid --outer-lr: "-1" \(expected a number >= 0\)$/,
  );
  equal(choiceFlag("role", "keeper", ["trainer", "keeper"], "trainer"), "keeper");
  throws(
    () => choiceFlag("role", "boss", ["trainer", "keeper"], "trainer"),
    /Invalid --role: "boss" \(known: trainer, keeper\)$/,
  );
});

Deno.test("cli: an error line keeps typed error names and joins a message of several lines", () => {
  class DataError extends Error {
    override name = "DataError";
  }
  equal(
    errorLine("train", new DataError("Cannot load data: x")),
    "train: DataError: Cannot load data: x",
  );
  equal(errorLine("train", new RangeError("Invalid --lr")), "train: Invalid --lr");
  equal(
    errorLine("node", new UsageError("Cannot resume", { cause: new DataError("a\n  b") })),
    "node: DataError: a; b",
  );
});

/** An output that records what is written, as a terminal or as a file. */
function recorder(tty: boolean) {
  const chunks: string[] = [];
  const dec = new TextDecoder();
  return {
    chunks,
    out: {
      isTerminal: () => tty,
      writeSync(p: Uint8Array) {
        chunks.push(dec.decode(p));
        return p.length;
      },
    },
  };
}

/** The same updates, as `deno task node` makes them, on `out`. */
function playRun(out: ReturnType<typeof recorder>["out"]): void {
  const p = new ProgressLine({ out });
  p.update("round 1/2");
  p.note("warn: slow");
  p.refresh("round 1/2 | committed 1");
  p.update("round 2/2");
  p.done("round 2/2");
}

Deno.test("progress line: rewritten in place on a terminal, plain lines in a file", () => {
  const term = recorder(true);
  playRun(term.out);
  deepEqual(term.chunks, [
    "\r\x1b[2Kround 1/2",
    "\r\x1b[2Kwarn: slow\nround 1/2",
    "\r\x1b[2Kround 1/2 | committed 1",
    "\r\x1b[2Kround 2/2",
    "\r\x1b[2Kround 2/2\n",
  ]);
  // In a file: no carriage returns, details only a terminal shows dropped, no line twice.
  const file = recorder(false);
  playRun(file.out);
  deepEqual(file.chunks, ["round 1/2\n", "warn: slow\n", "round 2/2\n"]);
});
