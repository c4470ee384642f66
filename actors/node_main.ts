/**
 * `deno task node`: run a node of a decentralized training run.
 *
 * - no flags: one process hosts a whole run on the embedded default (a
 *   tracker, an aggregator, a keeper slot and several trainers in Workers),
 *   trains for a bounded number of rounds, prints progress and a summary, and
 *   exits 0.
 * - `--host ADDR:PORT --secret S`: hosts a run that other processes join.
 * - `--join ws://ADDR:PORT --secret S`: joins a run as a trainer.
 * - `--resume DIR`: restarts a run (embedded, or with `--host`) from the
 *   newest verified round under DIR, with θ bit for bit, the outer momentum
 *   and the data cursors; it prints the loaded parameters' hash.
 *
 * The embedded run and the host run checkpoint keepers (default 2), each
 * writing its own `<run dir>/keeper-<i>` (run dir: `--run-dir`, default
 * `runs/<run id>`); `<run dir>/latest` points at the newest committed round.
 *
 * With `--json`, one JSON object per line: a "round" event per closed round
 * and a last "done" event with the totals.
 *
 * @module
 */
import { parseArgs } from "@std/cli";
import {
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  DILOCO_PAPER_OUTER,
  OUTER_PRESETS,
} from "./outer_optimizer.ts";
import { runEmbedded } from "./embedded.ts";
import type { RunEvent } from "./monitor.ts";
import { runNetworked } from "./networked.ts";
import { checkSync } from "./overlap.ts";
import { checkFragments } from "./fragments.ts";
import {
  checkResumeRound,
  checkSyncSettings,
  paramLength,
  resumeCursors,
  resumedTrainers,
  runModel,
  type RunSettings,
} from "./run_settings.ts";
import { shardMap } from "./run_protocol.ts";
import { CONFIGS } from "../kernels/config.ts";
import {
  resolveShape,
  SHAPE_FIELDS,
  SHAPE_FLAG_OPTIONS,
  SHAPE_HELP,
  shapeFlags,
} from "../kernels/shape.ts";
import { NothingToResumeError, type ResumedRun, resumeRunDir } from "../checkpoint/resume.ts";

const HELP = `Usage: deno task node [options]

Hosts or joins a decentralized (DiLoCo) training run.

With no flags, hosts a whole run in this process and exits with a summary.

Options:
  --host ADDR:PORT      host a run that other nodes join (serves GET /status)
  --join URL            join a run (ws://ADDR:PORT) as a trainer
  --secret S            the run's shared secret (required with --host and --join)
  --role ROLE           role when joining: trainer (default) or keeper (a checkpoint keeper
                        of the run, writing --run-dir, default runs/<run id>/<node>)
  --trainers N          trainers in this process (embedded/host; default 4 embedded, 0 host)
  --min-trainers N      host: open the first round when N trainers joined (default 1)
  --rounds N            outer rounds (default 10)
  --inner-steps H       inner AdamW steps per round (default ${DEFAULT_INNER_STEPS})
  --config NAME         model config: ${
  Object.keys(CONFIGS).join(", ")
} (default small); the shape flags
                        below override its fields (joiners train the host's shape)
${SHAPE_HELP.replace(/^ {2}(--\S+ N) +/gm, (_, f) => `  ${f.padEnd(20)}  `)}
  --batch N             sequences per micro-batch of an inner step (default: the config's)
  --grad-accum N        micro-batches per inner step, one AdamW update (default 1)
  --data PATH           training text (file or folder; default: the bundled corpus)
  --run-dir DIR         where the run writes its log (run.jsonl) and checkpoints
                        (keeper-<i>/rounds/<round>, latest); default runs/<run id>
  --keepers N           checkpoint keepers in this process (default 2 embedded/host, 0: none)
  --keeper-cpu X        share of one core (0 < X <= 1, default 0.05) that a keeper's writing
                        and serving threads may take while trainers keep the cores busy; on an
                        idle machine they run flat out
  --resume DIR          restart the run from the newest verified round under DIR
                        (its settings and trainers, each on its own data shard;
                        --rounds N may extend it, --trainers N re-deals the shards)
  --run-id ID           run id (default "run")
  --outer-lr X          outer learning rate (default ${DEFAULT_OUTER.lr})
  --outer-momentum X    outer Nesterov momentum (default ${DEFAULT_OUTER.momentum})
  --outer-warmup N      rounds over which the outer lr and momentum ramp up from plain
                        averaging (default ${DEFAULT_OUTER.warmupRounds ?? 0})
  --outer-preset NAME   ${
  Object.keys(OUTER_PRESETS).join(", ")
} (diloco = lr ${DILOCO_PAPER_OUTER.lr}, momentum ${DILOCO_PAPER_OUTER.momentum})
  --sync MODE           blocking (default): trainers wait for each round's update; overlapped:
                        they go on with the next round's inner steps and merge the update in
                        when it arrives (joiners take the host's)
  --overlap             the same as --sync overlapped
  --overlap-steps T     overlapped: inner steps of the next round that may run before the
                        update is merged; a trainer waits for it there (default: a fifth of a round)
  --fragments F         synchronise the parameters in F fragments, one per round (default 1)
  --seed N              init and sampling seed (default 1)
  --json                one JSON object per line
  --help                this text
`;

/** Parsed command line. */
export interface NodeArgs extends RunSettings {
  host?: string;
  join?: string;
  secret?: string;
  role: "trainer" | "aggregator" | "keeper";
  trainers: number;
  minTrainers?: number;
  runDir?: string;
  /** Checkpoint keepers in this process. */
  keepers: number;
  /** Keepers' CPU budget while trainers keep the cores busy (`KeeperOptions.backgroundDuty`). */
  keeperCpu?: number;
  /** Resume from this run directory. */
  resumeDir?: string;
  /** Flags given on the command line (a resumed run keeps its recorded settings otherwise). */
  given: string[];
  json: boolean;
  help: boolean;
}

function intArg(name: string, v: string | undefined, def: number, min = 0): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new RangeError(`Invalid --${name}: expected an integer >= ${min}, got "${v}"`);
  }
  return n;
}

/** A share in (0, 1]. */
function shareArg(name: string, v: string): number {
  const n = Number(v);
  if (!(n > 0 && n <= 1)) {
    throw new RangeError(`Invalid --${name}: expected a number in (0, 1], got "${v}"`);
  }
  return n;
}

function numArg(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    throw new RangeError(`Invalid --${name}: expected a number >= 0, got "${v}"`);
  }
  return n;
}

/**
 * Parses `deno task node` flags; throws a RangeError/TypeError naming a bad flag.
 *
 * @example
 * ```ts
 * import { parseNodeArgs } from "./node_main.ts";
 * console.log(parseNodeArgs(["--trainers", "2", "--rounds", "1"]).trainers); // 2
 * ```
 */
export function parseNodeArgs(argv: string[]): NodeArgs {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      host: { type: "string" },
      join: { type: "string" },
      secret: { type: "string" },
      role: { type: "string" },
      trainers: { type: "string" },
      "min-trainers": { type: "string" },
      rounds: { type: "string" },
      "inner-steps": { type: "string" },
      config: { type: "string" },
      ...SHAPE_FLAG_OPTIONS,
      batch: { type: "string" },
      "grad-accum": { type: "string" },
      data: { type: "string" },
      "run-dir": { type: "string" },
      keepers: { type: "string" },
      "keeper-cpu": { type: "string" },
      resume: { type: "string" },
      "run-id": { type: "string" },
      "outer-lr": { type: "string" },
      "outer-momentum": { type: "string" },
      "outer-warmup": { type: "string" },
      "outer-preset": { type: "string" },
      sync: { type: "string" },
      overlap: { type: "boolean" },
      fragments: { type: "string" },
      "overlap-steps": { type: "string" },
      seed: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean" },
    },
  });
  const config = values.config ?? "small";
  if (!Object.hasOwn(CONFIGS, config)) {
    throw new RangeError(
      `Invalid --config: "${config}" (known: ${Object.keys(CONFIGS).join(", ")})`,
    );
  }
  const model = shapeFlags(values);
  resolveShape(config, model);
  const presetName = values["outer-preset"] ?? "default";
  const preset = OUTER_PRESETS[presetName];
  if (!preset) {
    throw new RangeError(
      `Invalid --outer-preset: "${presetName}" (known: ${Object.keys(OUTER_PRESETS).join(", ")})`,
    );
  }
  const role = values.role ?? "trainer";
  if (role !== "trainer" && role !== "aggregator" && role !== "keeper") {
    throw new RangeError(`Invalid --role: "${role}" (known: trainer, keeper, aggregator)`);
  }
  if (role === "keeper" && !values.join) {
    throw new TypeError(
      "Invalid flags: --role keeper joins a run (--join URL); a host runs its own keepers (--keepers N)",
    );
  }
  if (values.host && values.join) {
    throw new TypeError("Invalid flags: --host and --join exclude each other");
  }
  if ((values.host || values.join) && !values.secret) {
    throw new TypeError(`Invalid flags: --${values.host ? "host" : "join"} needs --secret`);
  }
  if (values.host && !/^[^:]+:\d+$/.test(values.host)) {
    throw new RangeError(`Invalid --host: expected ADDR:PORT, got "${values.host}"`);
  }
  if (values.join && !/^wss?:\/\//.test(values.join)) {
    throw new RangeError(`Invalid --join: expected ws://ADDR:PORT, got "${values.join}"`);
  }
  if (values.join && role === "aggregator") {
    // The host's aggregators own the shard map, fixed when the first round opens.
    throw new RangeError(
      `Invalid --role: joining as "${role}" is not supported yet (trainer or keeper)`,
    );
  }
  if (values.overlap && values.sync !== undefined && values.sync !== "overlapped") {
    throw new TypeError(`Invalid flags: --overlap and --sync ${values.sync} contradict`);
  }
  const sync = values.overlap ? "overlapped" : values.sync;
  const embedded = !values.host && !values.join;
  if (values.resume !== undefined && values.join) {
    throw new TypeError("Invalid flags: --resume restarts a run from its host; not with --join");
  }
  if (values.resume === "") throw new RangeError("Invalid --resume: expected a run directory");
  const parsed: NodeArgs = {
    run: values["run-id"] ?? "run",
    config,
    ...(Object.keys(model).length ? { model } : {}),
    ...(values.batch !== undefined ? { batch: intArg("batch", values.batch, 1, 1) } : {}),
    ...(values["grad-accum"] !== undefined
      ? { gradAccum: intArg("grad-accum", values["grad-accum"], 1, 1) }
      : {}),
    rounds: intArg("rounds", values.rounds, 10, 1),
    innerSteps: intArg("inner-steps", values["inner-steps"], DEFAULT_INNER_STEPS, 1),
    outer: {
      lr: numArg("outer-lr", values["outer-lr"], preset.lr),
      momentum: numArg("outer-momentum", values["outer-momentum"], preset.momentum),
      warmupRounds: intArg("outer-warmup", values["outer-warmup"], preset.warmupRounds ?? 0),
    },
    ...(values.data ? { dataPath: values.data } : {}),
    ...(sync !== undefined ? { sync: checkSync(sync, "--sync") } : {}),
    ...(values.fragments !== undefined
      ? { fragments: checkFragments(intArg("fragments", values.fragments, 1, 1), "--fragments") }
      : {}),
    ...(values["overlap-steps"] !== undefined
      ? { overlapSteps: intArg("overlap-steps", values["overlap-steps"], 1, 1) }
      : {}),
    seed: intArg("seed", values.seed, 1),
    host: values.host,
    join: values.join,
    secret: values.secret,
    role,
    trainers: intArg("trainers", values.trainers, embedded ? 4 : 0, embedded ? 1 : 0),
    minTrainers: values["min-trainers"] === undefined
      ? undefined
      : intArg("min-trainers", values["min-trainers"], 1, 1),
    runDir: values["run-dir"],
    keepers: intArg("keepers", values.keepers, values.join ? 0 : 2),
    ...(values["keeper-cpu"] !== undefined
      ? { keeperCpu: shareArg("keeper-cpu", values["keeper-cpu"]) }
      : {}),
    ...(values.resume !== undefined ? { resumeDir: values.resume } : {}),
    given: Object.keys(values),
    json: values.json ?? false,
    help: values.help ?? false,
  };
  const shards = shardMap(paramLength(runModel(parsed)), { aggregators: ["a"] });
  checkSyncSettings(parsed, shards, {
    sync: "--sync",
    fragments: "--fragments",
    overlapSteps: "--overlap-steps",
  });
  return parsed;
}

/** Prints events as JSON lines or as readable progress, and appends them to the run log. */
export function eventPrinter(args: { json: boolean; runDir?: string }): (e: RunEvent) => void {
  let log: Deno.FsFile | undefined;
  if (args.runDir) {
    Deno.mkdirSync(args.runDir, { recursive: true });
    log = Deno.openSync(`${args.runDir}/run.jsonl`, { append: true, create: true });
  }
  const enc = new TextEncoder();
  return (e) => {
    const line = JSON.stringify(e);
    log?.writeSync(enc.encode(line + "\n"));
    if (e.event === "done") log?.close();
    if (args.json) {
      console.log(line);
      return;
    }
    if (e.event === "committed") {
      console.error(
        `[${
          e.wall_s.toFixed(1)
        }s] round ${e.round} committed (${e.params_hash}) by ${e.holders.length} keepers`,
      );
    } else if (e.event === "resumed") {
      console.log(
        `resumed round ${e.round} from ${e.dir}: params hash ${e.params_hash}, ${e.cursors} data cursors`,
      );
    } else if (e.event === "round") {
      const same = new Set(e.theta_hashes).size === 1 ? "equal" : "DIFFER";
      console.log(
        `round ${e.round}: view ${e.view}, ${e.trainers} trainers, loss ${e.loss.toFixed(4)}, ` +
          `${e.tokens} tokens, up ${e.bytes_up} B, down ${e.bytes_down} B, ` +
          `utilization ${(e.utilization * 100).toFixed(1)}%, θ hashes ${same} ` +
          `(${e.theta_hashes[0] ?? "-"})${e.rejected.length ? `, rejected ${e.rejected}` : ""}`,
      );
    } else if (e.event === "log") {
      console.error(`[${e.wall_s.toFixed(1)}s] ${e.level === "warn" ? "warn: " : ""}${e.message}`);
    } else {
      console.log(`done: ${JSON.stringify(e, null, 2)}`);
    }
  };
}

async function main(argv: string[]): Promise<number> {
  let args: NodeArgs;
  try {
    args = parseNodeArgs(argv);
  } catch (err) {
    console.error(`${err instanceof Error ? err.message : err}\n\n${HELP}`);
    return 2;
  }
  if (args.help) {
    console.log(HELP);
    return 0;
  }
  if (args.join && args.keepers > 0) {
    console.error(
      "Invalid --keepers: a joined node runs a trainer only (keepers run on the host)\n\n" + HELP,
    );
    return 2;
  }
  let resumed: ResumedRun | undefined;
  if (args.resumeDir !== undefined) {
    try {
      resumed = await resumeRunDir(args.resumeDir);
    } catch (err) {
      if (!(err instanceof NothingToResumeError)) throw err;
      console.error(err.message);
      return 1;
    }
    try {
      args = resumedArgs(args, resumed);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      console.error(err.message);
      return 2;
    }
  }
  const runDir = args.join ? args.runDir : args.runDir ?? args.resumeDir ?? `runs/${args.run}`;
  if (!args.join && args.keepers > 0 && !resumed && runDir) await setAside(runDir);
  const emit = eventPrinter({ json: args.json, runDir });
  const duty = args.keeperCpu !== undefined ? { backgroundDuty: args.keeperCpu } : {};
  const checkpoint = !args.join && args.keepers > 0 && runDir
    ? { checkpoint: { dir: runDir, keepers: args.keepers, ...duty } }
    : {};
  const { resumeDir: _, role, keeperCpu: __, ...rest } = args;
  const resume = resumed ? { resume: resumed } : {};
  if (args.host || args.join) {
    return await runNetworked({
      ...rest,
      trainers: args.trainers,
      role: role === "keeper" ? "keeper" : "trainer",
      ...(role === "keeper" ? duty : {}),
      ...checkpoint,
      ...resume,
    }, emit);
  }
  await runEmbedded({ ...rest, trainers: args.trainers, emit, ...checkpoint, ...resume });
  return 0;
}

/**
 * A resumed run keeps its recorded settings (its shape overrides included)
 * and its number of trainers; flags given on the command line win, the shape
 * they make must be the checkpoint's, and `--rounds` must leave a round to
 * train.
 */
export function resumedArgs(args: NodeArgs, r: ResumedRun): NodeArgs {
  const rec = (r.settings ?? {}) as Partial<RunSettings>;
  const flag: Record<string, keyof RunSettings> = {
    "run-id": "run",
    config: "config",
    rounds: "rounds",
    "inner-steps": "innerSteps",
    data: "dataPath",
    seed: "seed",
    batch: "batch",
    "grad-accum": "gradAccum",
    sync: "sync",
    overlap: "sync",
    fragments: "fragments",
    "overlap-steps": "overlapSteps",
  };
  const out: NodeArgs = { ...args };
  const set = out as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(rec)) {
    if (v === undefined) continue;
    const given = Object.entries(flag).some(([f, key]) => key === k && args.given.includes(f));
    const outerGiven = k === "outer" &&
      ["outer-lr", "outer-momentum", "outer-preset", "outer-warmup"].some((f) =>
        args.given.includes(f)
      );
    if (!given && !outerGiven && k !== "model" && k !== "trainers") set[k] = v;
  }
  if (!args.given.includes("trainers")) {
    const own = resumedTrainers(r);
    // An embedded run needs trainers: a host's run with none of its own takes one per data shard.
    out.trainers = !args.host && !args.join && !own
      ? resumeCursors(r).length || args.trainers
      : own ?? args.trainers;
  }
  checkResumeRound(r.round, out.rounds);
  // Shape flags given now override the recorded ones field by field; the result must be the
  // checkpoint's shape.
  const model = { ...(rec.model ?? {}), ...(args.model ?? {}) };
  if (Object.keys(model).length) out.model = model;
  const expect = resolveShape(out.config, model);
  const shape = (r.config ?? {}) as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(expect)) {
    if (shape[k] !== undefined && shape[k] !== v) {
      const flag = SHAPE_FIELDS.find((f) => f.field === k);
      const by = flag && args.model?.[flag.field] !== undefined
        ? `--${flag.flag} gives ${v}`
        : `config ${out.config}${rec.model ? " with the run's recorded overrides" : ""} has ${v}`;
      throw new RangeError(`Cannot resume ${r.dir}: its model has ${k} ${shape[k]}, ${by}`);
    }
  }
  return out;
}

/** A fresh run does not mix its checkpoints with an older run's: the old ones move aside. */
async function setAside(dir: string): Promise<void> {
  let old = false;
  try {
    for await (const e of Deno.readDir(dir)) {
      if (/^keeper-\d+$|^rounds$|^latest$/.test(e.name)) old = true;
    }
  } catch {
    return; // no directory yet
  }
  if (!old) return;
  const to = `${dir}.${new Date().toISOString().replace(/[:.]/g, "-")}`;
  await Deno.rename(dir, to);
  console.error(`note: ${dir} held an earlier run's checkpoints; moved to ${to}`);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
