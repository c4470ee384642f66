/**
 * `deno task experiment`: DiLoCo against single trainers on the same token
 * budget (see tests/_experiment.ts for what each configuration does).
 *
 * Prints a markdown table of the final eval losses, or with `--json` one JSON
 * object per configuration and a last `{"event": "summary", ...}` line.
 *
 * @module
 */
import { parseArgs } from "@std/cli";
import { acquireGpu } from "../kernels/device.ts";
import { CONFIGS, DEFAULT_CONFIG } from "../kernels/config.ts";
import { loadCorpus } from "../kernels/data.ts";
import {
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  type OuterOptimizer,
} from "../actors/outer_optimizer.ts";
import {
  type ExperimentConfig,
  type ExperimentResult,
  type ExperimentSettings,
  markdownTable,
  runConfig,
  standardConfigs,
  summarizeExperiment,
} from "./_experiment.ts";

const NAMES = standardConfigs(DEFAULT_CONFIG).map((c) => c.name);

const HELP = `Usage: deno task experiment [options]

Trains each configuration on the same token budget and prints its final eval loss
(mean next-byte cross-entropy on the same windows spread over the validation split).

Configurations (--configs, comma-separated; default all):
${standardConfigs(DEFAULT_CONFIG).map((c) => `  ${c.name.padEnd(16)}${c.description}`).join("\n")}

Options:
  --steps N            inner steps per trainer (the budget; default 200)
  --configs LIST       which configurations to run (default all)
  --seed N             init and sampling seed (default 1)
  --config NAME        model config: ${Object.keys(CONFIGS).join(", ")} (default ${DEFAULT_CONFIG})
  --trainers N         DiLoCo trainers (default 4; single-4x uses N x batch)
  --inner-steps H      DiLoCo inner steps per round (default ${DEFAULT_INNER_STEPS})
  --outer-lr X         outer lr of the default DiLoCo rows (default ${DEFAULT_OUTER.lr})
  --outer-momentum X   outer Nesterov momentum of those rows (default ${DEFAULT_OUTER.momentum})
  --outer-warmup N     rounds of outer lr/momentum warm-up of those rows (default ${
  DEFAULT_OUTER.warmupRounds ?? 0
})
  --inner-reset        zero each trainer's AdamW moments every round (in-process rows only)
  --inner-schedule S   run (one cosine over the run, default) or round (restart each round)
  --overlap-steps T    inner steps of the next round an overlapped row runs before the
                       update is merged (default: a fifth of a round; diloco-overlap-late: H)
  --eval-windows N     validation windows for the final loss (default 1024)
  --data-shards N      data shards (chunks of the stream dealt round-robin); trainer i reads shard i (default 16,
                       the run's); single trainers read the whole stream
  --json               one JSON object per configuration, then a summary line
  --help               this text
`;

/** Parsed command line of `deno task experiment`. */
export interface ExperimentArgs {
  settings: ExperimentSettings;
  configs: ExperimentConfig[];
  json: boolean;
  help: boolean;
}

function int(name: string, v: string | undefined, def: number, min: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min) {
    throw new RangeError(`Invalid --${name}: expected an integer >= ${min}, got "${v}"`);
  }
  return n;
}

function num(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n < 0) {
    throw new RangeError(`Invalid --${name}: expected a number >= 0, got "${v}"`);
  }
  return n;
}

function flags(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        steps: { type: "string" },
        configs: { type: "string" },
        seed: { type: "string" },
        config: { type: "string" },
        trainers: { type: "string" },
        "inner-steps": { type: "string" },
        "outer-lr": { type: "string" },
        "outer-momentum": { type: "string" },
        "outer-warmup": { type: "string" },
        "inner-reset": { type: "boolean" },
        "inner-schedule": { type: "string" },
        "overlap-steps": { type: "string" },
        "eval-windows": { type: "string" },
        "data-shards": { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean" },
      },
    }).values;
  } catch (err) {
    throw new TypeError(String(err instanceof Error ? err.message : err).split("\n")[0]);
  }
}

/**
 * Parses the flags; throws a RangeError/TypeError naming a bad flag.
 *
 * @example
 * ```ts
 * import { parseExperimentArgs } from "./experiment_main.ts";
 * const a = parseExperimentArgs(["--steps", "20", "--configs", "single,diloco-int8"]);
 * console.log(a.settings.steps, a.configs.map((c) => c.name)); // 20 ["single", "diloco-int8"]
 * ```
 */
export function parseExperimentArgs(argv: string[]): ExperimentArgs {
  const values = flags(argv);
  const config = values.config ?? DEFAULT_CONFIG;
  if (!Object.hasOwn(CONFIGS, config)) {
    throw new RangeError(
      `Invalid --config: "${config}" (known: ${Object.keys(CONFIGS).join(", ")})`,
    );
  }
  const schedule = values["inner-schedule"] ?? "run";
  if (schedule !== "run" && schedule !== "round") {
    throw new RangeError(`Invalid --inner-schedule: "${schedule}" (known: run, round)`);
  }
  const outer: OuterOptimizer = {
    lr: num("outer-lr", values["outer-lr"], DEFAULT_OUTER.lr),
    momentum: num("outer-momentum", values["outer-momentum"], DEFAULT_OUTER.momentum),
    warmupRounds: int("outer-warmup", values["outer-warmup"], DEFAULT_OUTER.warmupRounds ?? 0, 0),
  };
  if (outer.momentum >= 1) {
    throw new RangeError(`Invalid --outer-momentum: expected a number < 1, got ${outer.momentum}`);
  }
  const all = standardConfigs(config, {
    trainers: int("trainers", values.trainers, 4, 1),
    innerSteps: int("inner-steps", values["inner-steps"], DEFAULT_INNER_STEPS, 1),
    outer,
    innerReset: values["inner-reset"] ?? false,
    innerSchedule: schedule,
    ...(values["overlap-steps"] !== undefined
      ? { overlapSteps: int("overlap-steps", values["overlap-steps"], 0, 0) }
      : {}),
  });
  const wanted = values.configs?.split(",").map((x: string) => x.trim()).filter((x: string) => x) ??
    all.map((c) => c.name);
  for (const w of wanted) {
    if (!all.some((c) => c.name === w)) {
      throw new RangeError(`Invalid --configs: unknown "${w}" (known: ${NAMES.join(", ")})`);
    }
  }
  if (wanted.length === 0) throw new RangeError("Invalid --configs: empty list");
  const settings: ExperimentSettings = {
    config,
    steps: int("steps", values.steps, 200, 1),
    seed: int("seed", values.seed, 1, 0),
    evalWindows: int("eval-windows", values["eval-windows"], 1024, 1),
    dataShards: int("data-shards", values["data-shards"], 16, 1),
  };
  const configs = all.filter((c) => wanted.includes(c.name));
  for (const c of configs) {
    if (c.kind !== "single" && settings.steps % c.innerSteps !== 0) {
      throw new RangeError(
        `Invalid --steps: ${settings.steps} is not a multiple of --inner-steps ${c.innerSteps}`,
      );
    }
    if (c.kind === "run" && (c.innerReset || c.innerSchedule === "round")) {
      throw new RangeError(
        "Invalid --configs: diloco-run is the embedded run, which keeps AdamW state and one cosine over the run; drop --inner-reset/--inner-schedule or diloco-run",
      );
    }
  }
  return { settings, configs, json: values.json ?? false, help: values.help ?? false };
}

/**
 * Runs the experiment: every configuration in turn, then the summary.
 * `emit` receives each result and the summary as they come.
 */
export async function runExperiment(
  args: Pick<ExperimentArgs, "settings" | "configs">,
  emit: (line: ExperimentResult | ReturnType<typeof summarizeExperiment>) => void,
): Promise<ExperimentResult[]> {
  const t0 = performance.now();
  const corpus = await loadCorpus();
  const gpu = await acquireGpu();
  const results: ExperimentResult[] = [];
  try {
    for (const c of args.configs) {
      const r = await runConfig(gpu, corpus, c, args.settings);
      results.push(r);
      emit(r);
    }
  } finally {
    gpu.destroy();
  }
  emit(summarizeExperiment(results, args.settings, (performance.now() - t0) / 1000));
  return results;
}

async function main(argv: string[]): Promise<number> {
  let args: ExperimentArgs;
  try {
    args = parseExperimentArgs(argv);
  } catch (err) {
    console.error(`${err instanceof Error ? err.message : err}\n\n${HELP}`);
    return 2;
  }
  if (args.help) {
    console.log(HELP);
    return 0;
  }
  const results: ExperimentResult[] = [];
  await runExperiment(args, (line) => {
    if (args.json) console.log(JSON.stringify(line));
    else if (line.event === "config") {
      results.push(line);
      console.error(
        `${line.name}: final eval loss ${line.final_eval_loss.toFixed(4)} (${line.wall_s} s)`,
      );
    } else {
      console.log(markdownTable(results));
      console.log(`\nsummary: ${JSON.stringify(line)}`);
    }
  });
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
