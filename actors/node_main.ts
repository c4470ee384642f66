/**
 * `deno task node`: run a node of a decentralized training run.
 *
 * - no flags: one process hosts a whole run on the embedded default (a
 *   tracker, an aggregator, a keeper slot and several trainers in Workers),
 *   trains for a bounded number of rounds, prints progress and a summary, and
 *   exits 0.
 * - `--host ADDR:PORT --secret S`: hosts a run that other processes join
 *   (`--allow FILE` admits only the listed keys; `--tls-cert/--tls-key`
 *   serve `wss://`).
 * - `--join ws://ADDR:PORT --secret S`: joins a run as a trainer, signing
 *   the handshake with its key (`--key FILE`; `--ca FILE` for `wss://`).
 * - `--resume DIR`: restarts a run (embedded, or with `--host`) from the
 *   newest verified round under DIR, with θ bit for bit, the outer momentum
 *   and the data cursors; it prints the loaded parameters' hash.
 *
 * The embedded run and the host run checkpoint keepers (default 2), each
 * writing its own `<run dir>/keeper-<i>` (run dir: `--run-dir`, default
 * `runs/<run id>`); `<run dir>/latest` points at the newest committed round.
 *
 * Without `--json`, one progress line on stderr (round, loss, trainers,
 * utilization, ETA, newest commit; plain lines when stderr is not a terminal)
 * and the summary on stdout at the end. With `--json`, one JSON object per
 * line: a "round" event per closed round and a last "done" event with the
 * totals.
 *
 * Bad input (a flag, flags that exclude each other, a run directory, data or
 * model shape that cannot be used) ends with one line `node: message` and
 * exit code 2, before anything starts; see kernels/cli.ts.
 *
 * @module
 */
import { exchangeName, parseExchange } from "../kernels/exchange_format.ts";
import {
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  DILOCO_PAPER_OUTER,
  OUTER_PRESETS,
} from "./outer_optimizer.ts";
import { runEmbedded } from "./embedded.ts";
import type { RunEvent } from "./monitor.ts";
import { type AdmissionOptions, runNetworked } from "./networked.ts";
import { AGGREGATE_SYNTAX, formatAggregate, parseAggregate } from "./robust_aggregate.ts";
import { SYNC_MODES } from "./overlap.ts";
import { checkFragments } from "./fragments.ts";
import {
  checkSyncSettings,
  engineSettings,
  paramLength,
  resumeCursors,
  resumedTrainers,
  runModel,
  type RunSettings,
} from "./run_settings.ts";
import { shardMap } from "./run_protocol.ts";
import {
  choiceFlag,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  PRECISION_FLAG,
  precisionFlag,
  ProgressLine,
  readInput,
  runCommand,
  UsageError,
} from "../kernels/cli.ts";
import { CONFIGS, DEFAULT_CONFIG } from "../kernels/config.ts";
import { loadCorpus } from "../kernels/data.ts";
import { acquireGpu } from "../kernels/device.ts";
import { planModel } from "../kernels/limits.ts";
import { resolvePrecision } from "../kernels/model_options.ts";
import { resolveShape, SHAPE_FIELDS, SHAPE_FLAGS, shapeFlags } from "../kernels/shape.ts";
import { type ResumedRun, resumeRunDir } from "../checkpoint/resume.ts";

const ROLES = ["trainer", "keeper", "aggregator"] as const;

/** The command line of `deno task node`. */
export const NODE_COMMAND = {
  prog: "node",
  usage: "deno task node [flags]",
  about: `Hosts or joins a decentralized (DiLoCo) training run.

With no flags, hosts a whole run in this process and exits with a summary.`,
  flags: {
    host: {
      value: "ADDR:PORT",
      help: "host a run that other nodes join (serves the dashboard, /status and /metrics)",
    },
    dashboard: {
      value: "ADDR:PORT",
      help: "the embedded run: serve the dashboard, /status and /metrics at http://ADDR:PORT/",
    },
    join: {
      value: "URL",
      help: "join a run (ws://ADDR:PORT, or wss:// for a TLS host) as a trainer",
    },
    secret: {
      value: "S",
      help: "the run's join token: any node with it and a key may join (an open run);\n" +
        "--host needs --secret or --allow",
    },
    key: {
      value: "FILE",
      help: "this node's Ed25519 key (created, mode 0600, when missing); default\n" +
        "<run dir>/node.key, or a fresh key per process for a joiner without\n" +
        "--run-dir. The node id is derived from it (trainer-<fingerprint>)",
    },
    allow: {
      value: "FILE",
      help: "host: admit only these keys (one fingerprint or base64 public key per\n" +
        "line); the secret, if given, is required as well",
    },
    "tls-cert": {
      value: "FILE",
      help: "host: serve wss:// and https:// with this PEM certificate (and --tls-key)",
    },
    "tls-key": { value: "FILE", help: "host: the certificate's PEM private key" },
    ca: {
      value: "FILE",
      help: "joining wss://: trust this PEM certificate (a self-signed host's)",
    },
    "host-key": {
      value: "FP",
      help: "joining: refuse a host whose key fingerprint does not start with FP",
    },
    role: {
      value: "ROLE",
      help: "role when joining: trainer (default) or keeper (a checkpoint keeper\n" +
        "of the run, writing --run-dir, default runs/<run id>/<node>)",
    },
    trainers: {
      value: "N",
      help: "trainers in this process (embedded/host; default 4 embedded, 0 host)",
    },
    "min-trainers": {
      value: "N",
      help: "host: open the first round when N trainers joined (default 1)",
    },
    rounds: { value: "N", help: "outer rounds (default 10)" },
    "inner-steps": {
      value: "H",
      help: `inner AdamW steps per round (default ${DEFAULT_INNER_STEPS})`,
    },
    config: {
      value: "NAME",
      help: `model config: ${Object.keys(CONFIGS).join(", ")} (default ${DEFAULT_CONFIG});\n` +
        "the shape flags below override its fields (joiners train the host's shape)",
    },
    ...SHAPE_FLAGS,
    batch: {
      value: "N",
      help: "sequences per micro-batch of an inner step (default: the config's)",
    },
    "grad-accum": {
      value: "N",
      help: "micro-batches per inner step, one AdamW update (default 1)",
    },
    ...PRECISION_FLAG,
    data: { value: "PATH", help: "training text (file or folder; default: the bundled corpus)" },
    "run-dir": {
      value: "DIR",
      help: "where the run writes its log (run.jsonl) and checkpoints\n" +
        "(keeper-<i>/rounds/<round>, latest); default runs/<run id>",
    },
    keepers: {
      value: "N",
      help: "checkpoint keepers in this process (default 2 embedded/host, 0: none)",
    },
    "keeper-cpu": {
      help: "share of one core (0 < X <= 1, default 0.05) that a keeper's writing\n" +
        "and serving threads may take while trainers keep the cores busy; on an\n" +
        "idle machine they run flat out",
    },
    resume: {
      value: "DIR",
      help: "restart the run from the newest verified round under DIR\n" +
        "(its settings and trainers, each on its own data shard;\n" +
        "--rounds N may extend it, --trainers N re-deals the shards)",
    },
    "run-id": { value: "ID", help: 'run id (default "run")' },
    "outer-lr": { help: `outer learning rate (default ${DEFAULT_OUTER.lr})` },
    "outer-momentum": { help: `outer Nesterov momentum (default ${DEFAULT_OUTER.momentum})` },
    "outer-warmup": {
      value: "N",
      help: "rounds over which the outer lr and momentum ramp up from plain\n" +
        `averaging (default ${DEFAULT_OUTER.warmupRounds ?? 0})`,
    },
    "outer-preset": {
      value: "NAME",
      help: `${Object.keys(OUTER_PRESETS).join(", ")} (diloco = lr ${DILOCO_PAPER_OUTER.lr}, ` +
        `momentum ${DILOCO_PAPER_OUTER.momentum})`,
    },
    aggregate: {
      value: "RULE",
      help: `how aggregators combine contributions: ${AGGREGATE_SYNTAX};\n` +
        "default mean (token-weighted); a robust rule when trainers may be\n" +
        'hostile (README "Robust aggregation")',
    },
    exchange: {
      value: "FORMAT",
      help: "pseudo-gradient exchange: int8 (default), int4 (4-bit, a scale per 64\n" +
        "values) or topk:F (the fraction F of each 256 values largest in\n" +
        "magnitude, e.g. topk:0.05); int4 and topk keep the rest for the next\n" +
        "round (error feedback); joiners take the host's",
    },
    sync: {
      value: "MODE",
      help: "blocking (default): trainers wait for each round's update; overlapped:\n" +
        "they go on with the next round's inner steps and merge the update in\n" +
        "when it arrives (joiners take the host's)",
    },
    overlap: { type: "boolean", help: "the same as --sync overlapped" },
    "overlap-steps": {
      value: "T",
      help: "overlapped: inner steps of the next round that may run before the\n" +
        "update is merged; a trainer waits for it there (default: a fifth of a round)",
    },
    fragments: {
      value: "F",
      help: "synchronise the parameters in F fragments, one per round (default 1;\n" +
        "int8 exchange only)",
    },
    seed: { value: "N", help: "init and sampling seed (default 1)" },
    json: {
      type: "boolean",
      help: "one JSON object per line on stdout instead of the progress line",
    },
  },
} as const satisfies Command;

/** An exchange format's canonical name (`--exchange`). */
function exchangeArg(v: string): string {
  try {
    return exchangeName(parseExchange(v));
  } catch (err) {
    throw new UsageError(
      `Invalid --exchange: ${(err as Error).message.replace(/^Invalid exchange /, "")}`,
    );
  }
}

/** An aggregation rule's canonical form (`--aggregate`). */
function aggregateArg(v: string): string {
  try {
    return formatAggregate(parseAggregate(v));
  } catch (err) {
    throw new UsageError(
      `Invalid --aggregate: ${(err as Error).message.replace(/^Invalid aggregate rule /, "")}`,
    );
  }
}

/** "ADDR:PORT" with a port in 0-65535. */
function validHostPort(v: string): boolean {
  return /^[^:]+:\d+$/.test(v) && Number(/\d+$/.exec(v)) < 65536;
}

/** Parsed command line. */
export interface NodeArgs extends RunSettings, AdmissionOptions {
  host?: string;
  /** Where the embedded run serves its dashboard ("ADDR:PORT"). */
  dashboard?: string;
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

/**
 * Parses `deno task node` flags.
 *
 * @throws {UsageError} naming the flag, or the flags that exclude each other
 *
 * @example
 * ```ts
 * import { parseNodeArgs } from "./node_main.ts";
 * console.log(parseNodeArgs(["--trainers", "2", "--rounds", "1"]).trainers); // 2
 * ```
 */
export function parseNodeArgs(argv: string[]): NodeArgs {
  const values = parseFlags(NODE_COMMAND, argv);
  const config = values.config ?? DEFAULT_CONFIG;
  if (!Object.hasOwn(CONFIGS, config)) {
    throw new UsageError(
      `Invalid --config: "${config}" (known: ${Object.keys(CONFIGS).join(", ")})`,
    );
  }
  let model;
  try {
    model = shapeFlags(values);
    resolveShape(config, model);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const presetName = choiceFlag(
    "outer-preset",
    values["outer-preset"],
    Object.keys(OUTER_PRESETS),
    "default",
  );
  const preset = OUTER_PRESETS[presetName];
  const role = choiceFlag("role", values.role, ROLES, "trainer");
  if (role === "keeper" && !values.join) {
    throw new UsageError(
      "Invalid flags: --role keeper joins a run (--join URL); a host runs its own keepers (--keepers N)",
    );
  }
  if (values.host && values.join) {
    throw new UsageError("Invalid flags: --host and --join exclude each other");
  }
  if (values.host && !values.secret && !values.allow) {
    throw new UsageError("Invalid flags: --host needs --secret or --allow");
  }
  const sides = [["allow", "host"], ["tls-cert", "host"], ["ca", "join"], ["host-key", "join"]];
  for (const [flag, needs] of sides as [keyof typeof values & string, "host" | "join"][]) {
    if (values[flag] !== undefined && !values[needs]) {
      throw new UsageError(`Invalid flags: --${flag} goes with --${needs}`);
    }
  }
  if ((values["tls-cert"] === undefined) !== (values["tls-key"] === undefined)) {
    throw new UsageError("Invalid flags: --tls-cert and --tls-key go together");
  }
  if (values.host && !validHostPort(values.host)) {
    throw new UsageError(`Invalid --host: expected ADDR:PORT (port 0-65535), got "${values.host}"`);
  }
  if (values.dashboard !== undefined && (values.host || values.join)) {
    throw new UsageError(
      "Invalid flags: --dashboard is for the embedded run; a host serves its dashboard on --host",
    );
  }
  if (values.dashboard !== undefined && !validHostPort(values.dashboard)) {
    throw new UsageError(
      `Invalid --dashboard: expected ADDR:PORT (port 0-65535), got "${values.dashboard}"`,
    );
  }
  if (values.join && !/^wss?:\/\//.test(values.join)) {
    throw new UsageError(`Invalid --join: expected ws://ADDR:PORT, got "${values.join}"`);
  }
  if (values.join && role === "aggregator") {
    // The host's aggregators own the shard map, fixed when the first round opens.
    throw new UsageError(
      `Invalid --role: joining as "${role}" is not supported yet (trainer or keeper)`,
    );
  }
  if (values.overlap && values.sync !== undefined && values.sync !== "overlapped") {
    throw new UsageError(`Invalid flags: --overlap and --sync ${values.sync} contradict`);
  }
  const sync = values.overlap
    ? "overlapped"
    : values.sync === undefined
    ? undefined
    : choiceFlag("sync", values.sync, SYNC_MODES, "blocking");
  const embedded = !values.host && !values.join;
  if (values.resume !== undefined && values.join) {
    throw new UsageError("Invalid flags: --resume restarts a run from its host; not with --join");
  }
  if (values.resume === "") throw new UsageError("Invalid --resume: expected a run directory");
  if (values.data !== undefined && values.data.trim() === "") {
    throw new UsageError("Invalid --data: empty path");
  }
  const keepers = intFlag("keepers", values.keepers, 0) ?? (values.join ? 0 : 2);
  if (values.join && keepers > 0) {
    throw new UsageError(
      "Invalid --keepers: a joined node runs a trainer only (keepers run on the host)",
    );
  }
  const outerNumber = (name: "outer-lr" | "outer-momentum") =>
    numberFlag(name, values[name], { min: 0, max: Infinity, closedMin: true });
  const parsed: NodeArgs = {
    run: values["run-id"] ?? "run",
    config,
    ...(Object.keys(model).length ? { model } : {}),
    ...(values.batch !== undefined ? { batch: intFlag("batch", values.batch) } : {}),
    ...(values["grad-accum"] !== undefined
      ? { gradAccum: intFlag("grad-accum", values["grad-accum"]) }
      : {}),
    ...(values.precision !== undefined ? { precision: precisionFlag(values.precision) } : {}),
    rounds: intFlag("rounds", values.rounds) ?? 10,
    innerSteps: intFlag("inner-steps", values["inner-steps"]) ?? DEFAULT_INNER_STEPS,
    outer: {
      lr: outerNumber("outer-lr") ?? preset.lr,
      momentum: outerNumber("outer-momentum") ?? preset.momentum,
      warmupRounds: intFlag("outer-warmup", values["outer-warmup"], 0) ??
        preset.warmupRounds ?? 0,
    },
    ...(values.data ? { dataPath: values.data } : {}),
    ...(sync !== undefined ? { sync } : {}),
    ...(values.fragments !== undefined
      ? { fragments: checkFragments(intFlag("fragments", values.fragments), "--fragments") }
      : {}),
    ...(values["overlap-steps"] !== undefined
      ? { overlapSteps: intFlag("overlap-steps", values["overlap-steps"]) }
      : {}),
    seed: intFlag("seed", values.seed, 0) ?? 1,
    ...(values.exchange !== undefined ? { exchange: exchangeArg(values.exchange) } : {}),
    ...(values.aggregate !== undefined ? { aggregate: aggregateArg(values.aggregate) } : {}),
    host: values.host,
    ...(values.dashboard !== undefined ? { dashboard: values.dashboard } : {}),
    join: values.join,
    secret: values.secret,
    ...(values.key !== undefined ? { keyFile: values.key } : {}),
    ...(values.allow !== undefined ? { allow: values.allow } : {}),
    ...(values["tls-cert"] !== undefined
      ? { tlsCert: values["tls-cert"], tlsKey: values["tls-key"] }
      : {}),
    ...(values.ca !== undefined ? { ca: values.ca } : {}),
    ...(values["host-key"] !== undefined ? { hostKey: values["host-key"] } : {}),
    role,
    trainers: intFlag("trainers", values.trainers, embedded ? 1 : 0) ?? (embedded ? 4 : 0),
    minTrainers: intFlag("min-trainers", values["min-trainers"]),
    runDir: values["run-dir"],
    keepers,
    ...(values["keeper-cpu"] !== undefined
      ? { keeperCpu: numberFlag("keeper-cpu", values["keeper-cpu"], { min: 0, max: 1 }) }
      : {}),
    ...(values.resume !== undefined ? { resumeDir: values.resume } : {}),
    given: Object.keys(values),
    json: values.json ?? false,
    help: values.help ?? false,
  };
  const shards = shardMap(paramLength(runModel(parsed)), { aggregators: ["a"] });
  try {
    checkSyncSettings(parsed, shards, {
      sync: "--sync",
      fragments: "--fragments",
      overlapSteps: "--overlap-steps",
      exchange: "--exchange",
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return parsed;
}

/** Options of {@linkcode eventPrinter}. */
export interface PrinterOptions {
  /** One JSON object per event on stdout instead of the progress line. */
  json: boolean;
  /** Where the run log (run.jsonl) goes, when anywhere. */
  runDir?: string;
  /** The round the run ends before (for the progress line's ETA), when known. */
  rounds?: number;
  /** Where the progress line goes (default: stderr). */
  progress?: ProgressLine;
}

/**
 * Prints events as JSON lines or as one progress line (round, loss, trainers,
 * utilization, ETA) with warnings and the summary on lines of their own, and
 * appends every event to the run log.
 *
 * @example
 * ```ts
 * import { eventPrinter } from "./node_main.ts";
 * const emit = eventPrinter({ json: true });
 * emit({ event: "log", level: "info", message: "hello", wall_s: 0 });
 * ```
 */
export function eventPrinter(args: PrinterOptions): (e: RunEvent) => void {
  let log: Deno.FsFile | undefined;
  if (args.runDir) {
    Deno.mkdirSync(args.runDir, { recursive: true });
    log = Deno.openSync(`${args.runDir}/run.jsonl`, { append: true, create: true });
  }
  const enc = new TextEncoder();
  const text = args.json ? undefined : roundText(args.rounds);
  const progress = args.progress ?? (args.json ? undefined : new ProgressLine());
  return (e) => {
    const line = JSON.stringify(e);
    log?.writeSync(enc.encode(line + "\n"));
    if (e.event === "done") log?.close();
    if (!progress || !text) {
      console.log(line);
      return;
    }
    const at = `[${typeof e.wall_s === "number" ? e.wall_s.toFixed(1) : "-"}s]`;
    if (e.event === "committed") {
      progress.refresh(text.committed(e.round, e.holders.length));
    } else if (e.event === "resumed") {
      progress.note(
        `resumed round ${e.round} from ${e.dir}: params hash ${e.params_hash}, ${e.cursors} data cursors`,
      );
    } else if (e.event === "round") {
      progress.update(text.round(e));
      if (new Set(e.theta_hashes).size > 1) {
        progress.note(`${at} warn: round ${e.round}: θ hashes DIFFER (${e.theta_hashes})`);
      }
      if (e.rejected.length) progress.note(`${at} warn: round ${e.round}: rejected ${e.rejected}`);
    } else if (e.event === "log") {
      if (e.level === "warn") progress.note(`${at} warn: ${e.message}`);
      else progress.update(`${at} ${e.message}`);
      text.started(e.wall_s);
    } else {
      progress.done(text.last());
      console.log(`done: ${JSON.stringify(e, null, 2)}`);
    }
  };
}

/**
 * The progress line's text: rounds done (so "round 2/10" is the state that
 * checkpoint round 2 holds), loss, trainers, utilization, time per round and
 * ETA, and the newest committed round.
 */
function roundText(rounds: number | undefined) {
  let base = "";
  let committed = "";
  let roundsSeen = 0;
  // Rounds are timed from the last event before the first one (trainers ready), not from
  // process start, so that engine warm-up does not inflate the ETA.
  let since: number | undefined;
  const eta = (done: number, wall: number) => {
    if (rounds === undefined || since === undefined) return "";
    const perRound = (wall - since) / roundsSeen;
    return ` | ${perRound.toFixed(1)} s/round | ETA ${Math.round(perRound * (rounds - done))} s`;
  };
  const line = () => [base, committed].filter((x) => x).join(" | ");
  return {
    started(wall: number) {
      if (roundsSeen === 0) since = wall;
    },
    round(e: Extract<RunEvent, { event: "round" }>): string {
      roundsSeen++;
      const of = rounds === undefined ? "" : `/${rounds}`;
      base = `round ${e.round + 1}${of} | loss ${e.loss.toFixed(4)} | ${e.trainers} trainers | ` +
        `utilization ${(e.utilization * 100).toFixed(1)}%${eta(e.round + 1, e.wall_s)}`;
      return line();
    },
    committed(round: number, keepers: number): string {
      committed = `committed ${round} (${keepers} keepers)`;
      return line();
    },
    last: () => line() || "no round closed",
  };
}

/** The flags, and the run directory and data they name, read and checked: failures exit 2. */
async function readNodeInput(argv: string[]) {
  let args = parseNodeArgs(argv);
  let resumed: ResumedRun | undefined;
  if (args.resumeDir !== undefined) {
    resumed = await resumeRunDir(args.resumeDir);
    args = resumedArgs(args, resumed);
    if (args.rounds <= resumed.round) {
      throw new UsageError(
        `Invalid --rounds: ${args.rounds}, the run in ${args.resumeDir} is at round ${resumed.round} ` +
          `(pass --rounds N with N > ${resumed.round} to train on)`,
      );
    }
  }
  // Trainers read the data in their Workers, where a bad path would only restart them.
  if (args.dataPath !== undefined) await loadCorpus({ path: args.dataPath });
  return { args, resumed };
}

/**
 * The run directory, made, with an earlier run's checkpoints moved aside, and
 * the printer that logs to it: the last step before the run starts.
 */
async function openRunDir(args: NodeArgs, resumed: ResumedRun | undefined) {
  const runDir = args.join ? args.runDir : args.runDir ?? args.resumeDir ?? `runs/${args.run}`;
  if (!args.join && args.keepers > 0 && !resumed && runDir) await setAside(runDir);
  let emit;
  try {
    emit = eventPrinter({ json: args.json, runDir, rounds: args.join ? undefined : args.rounds });
  } catch (err) {
    throw new UsageError(
      `Cannot write the run log in ${runDir}: ${err instanceof Error ? err.message : err}`,
    );
  }
  return { runDir, emit };
}

/**
 * Refuses, before any Worker starts, a model this device cannot hold: in a
 * trainer the error would only restart it until its supervisor gives up.
 * The GPU is this process's; one that is missing is a failure (exit 1), a
 * shape too big for it or f16 without `shader-f16` is the flags' fault (exit 2).
 */
async function checkModelFits(args: NodeArgs): Promise<void> {
  const engine = engineSettings(args);
  const gpu = await acquireGpu();
  try {
    planModel(engine.config, {
      batch: engine.batch,
      gradAccum: engine.gradAccum,
      // The same choices as createModel: CPU adapters use the attention that keeps T·T scratch.
      attentionScratch: gpu.isCpu,
      precision: resolvePrecision(gpu, engine.precision),
    }, gpu.limits);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  } finally {
    gpu.destroy();
  }
}

async function main(argv: string[]): Promise<number> {
  const { args, resumed } = await readInput(() => readNodeInput(argv));
  if (!args.join && args.trainers > 0) await checkModelFits(args);
  const { runDir, emit } = await readInput(() => openRunDir(args, resumed));
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
 * and its number of trainers; flags given on the command line win, and the
 * shape they make must be the checkpoint's.
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
    exchange: "exchange",
    aggregate: "aggregate",
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
      throw new UsageError(`Cannot resume ${r.dir}: its model has ${k} ${shape[k]}, ${by}`);
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
  await runCommand(NODE_COMMAND, Deno.args, () => main(Deno.args));
}
