/**
 * The command line of `deno task node`: its flags ({@linkcode NODE_COMMAND}),
 * their parsed and checked form ({@linkcode NodeArgs}, {@linkcode parseNodeArgs})
 * and the settings a resumed run keeps ({@linkcode resumedArgs}).
 *
 * Parsing reads no file and starts nothing: each mistake is a
 * {@linkcode UsageError} naming the flag, or the flags that exclude each
 * other, which actors/node_main.ts turns into `node: message` and exit 2.
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
import type { AdmissionOptions } from "./networked.ts";
import {
  AGGREGATE_SYNTAX,
  type AggregateRule,
  formatAggregate,
  parseAggregate,
} from "./robust_aggregate.ts";
import { SYNC_MODES } from "./overlap.ts";
import { checkFragments } from "./fragments.ts";
import {
  checkSyncSettings,
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
  TUNE_FLAGS,
  tuneFileFlag,
  UsageError,
} from "../kernels/cli.ts";
import { CONFIGS, DEFAULT_CONFIG } from "../kernels/config.ts";
import { resolveShape, SHAPE_FIELDS, SHAPE_FLAGS, shapeFlags } from "../kernels/shape.ts";
import type { ResumedRun } from "../checkpoint/resume.ts";
import { DEFAULT_TEXT_SAMPLE, textSample, type TextSampleSpec } from "../kernels/sample.ts";

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
    ...TUNE_FLAGS,
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
    "update-exchange": {
      value: "FORMAT",
      help: "the aggregated update trainers download: int8 (default), int4 or\n" +
        "topk:F, the aggregator keeping the rest for the next round; with\n" +
        "--exchange topk:F it cuts the download as that cuts the upload\n" +
        "(joiners take the host's)",
    },
    sync: {
      value: "MODE",
      help: "overlapped (default): trainers go on with the next round's inner steps\n" +
        "and merge its update in when it arrives; blocking: they wait for each\n" +
        "round's update (joiners take the host's)",
    },
    overlap: { type: "boolean", help: "the same as --sync overlapped" },
    "overlap-steps": {
      value: "T",
      help: "overlapped: inner steps of the next round that may run before the\n" +
        "update is merged; a trainer waits for it there (default: a fifth of a round)",
    },
    fragments: {
      value: "F",
      help: "synchronise the parameters in F fragments, one per round (default 1)",
    },
    seed: { value: "N", help: "init and sampling seed (default 1)" },
    "eval-every": {
      value: "N",
      help: "evaluate θ (16 validation windows, and a text sample) during the run\n" +
        "after at most every N rounds, paced to take at most 2% of the trainers'\n" +
        "time; shown as they come (default 1; 0: only the final evaluation)",
    },
    "sample-bytes": {
      value: "N",
      help: "bytes of text the model writes after --sample-prompt at the end of the\n" +
        "run (and at each dashboard evaluation), shown with the summary\n" +
        `(default ${DEFAULT_TEXT_SAMPLE.tokens}; 0: none)`,
    },
    "sample-prompt": {
      value: "TEXT",
      help: `the text the sample continues (default ${JSON.stringify(DEFAULT_TEXT_SAMPLE.prompt)})`,
    },
    "sample-temperature": {
      value: "T",
      help:
        `softmax temperature of the sample, >= 0 (default ${DEFAULT_TEXT_SAMPLE.temperature};\n` +
        "0: always the most likely byte)",
    },
    json: {
      type: "boolean",
      help: "one JSON object per line on stdout instead of the progress line",
    },
  },
} as const satisfies Command;

/**
 * An exchange format's canonical name from flag `--<flag>`; a UsageError
 * names the flag.
 *
 * @example
 * ```ts
 * import { exchangeFlag } from "./node_args.ts";
 * console.log(exchangeFlag("exchange", "topk:.05")); // "topk:0.05"
 * ```
 */
export function exchangeFlag(flag: string, v: string): string {
  try {
    return exchangeName(parseExchange(v));
  } catch (err) {
    throw new UsageError(
      `Invalid --${flag}: ${(err as Error).message.replace(/^Invalid exchange /, "")}`,
    );
  }
}

/**
 * The aggregation rule an `--aggregate` value names; a bad one is a
 * UsageError naming the flag (`deno task node`, `deno task experiment`).
 *
 * @example
 * ```ts
 * import { aggregateFlag } from "./node_args.ts";
 * console.log(aggregateFlag("median")); // { kind: "median" }
 * ```
 */
export function aggregateFlag(v: string): AggregateRule {
  try {
    return parseAggregate(v);
  } catch (err) {
    throw new UsageError(
      `Invalid --aggregate: ${(err as Error).message.replace(/^Invalid aggregate rule /, "")}`,
    );
  }
}

/** An aggregation rule's canonical form (`--aggregate`). */
function aggregateArg(v: string): string {
  return formatAggregate(aggregateFlag(v));
}

/** The text sample that `--sample-bytes`, `--sample-prompt` and `--sample-temperature` ask for. */
function sampleFlags(
  values: { "sample-bytes"?: string; "sample-prompt"?: string; "sample-temperature"?: string },
): TextSampleSpec {
  const tokens = intFlag("sample-bytes", values["sample-bytes"], 0);
  const temperature = numberFlag("sample-temperature", values["sample-temperature"], {
    min: 0,
    max: Infinity,
    closedMin: true,
  });
  const prompt = values["sample-prompt"];
  if (prompt === "") {
    throw new UsageError("Invalid --sample-prompt: empty (the model needs a byte to continue)");
  }
  try {
    return textSample({
      ...(tokens !== undefined ? { tokens } : {}),
      ...(temperature !== undefined ? { temperature } : {}),
      ...(prompt !== undefined ? { prompt } : {}),
    });
  } catch (err) {
    // The bounds textSample names: too many tokens, or too long a prompt.
    const flag = /prompt/.test((err as Error).message) ? "sample-prompt" : "sample-bytes";
    throw new UsageError(
      `Invalid --${flag}: ${(err as Error).message.replace(/^Invalid text sample \w+: /, "")}`,
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
  /** With `--tune-matmuls`: the file of this machine's matmul tuning table. */
  tuneFile?: string;
  /** The text sample of the final θ and of the evaluations during the run (kernels/sample.ts). */
  sample: TextSampleSpec;
  /** Evaluate during the run after at most every this many rounds (0: only at the end). */
  evalEvery: number;
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
 * import { parseNodeArgs } from "./node_args.ts";
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
    ...(tuneFileFlag(values["tune-matmuls"], values["tune-file"]) !== undefined
      ? { tuneFile: tuneFileFlag(values["tune-matmuls"], values["tune-file"]) }
      : {}),
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
    ...(values.exchange !== undefined
      ? { exchange: exchangeFlag("exchange", values.exchange) }
      : {}),
    ...(values["update-exchange"] !== undefined
      ? { updateExchange: exchangeFlag("update-exchange", values["update-exchange"]) }
      : {}),
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
    sample: sampleFlags(values),
    evalEvery: intFlag("eval-every", values["eval-every"], 0) ?? 1,
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
    "update-exchange": "updateExchange",
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
