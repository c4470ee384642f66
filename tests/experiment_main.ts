/**
 * `deno task experiment`: DiLoCo against single trainers on the same token
 * budget (see tests/_experiment.ts for what each configuration does).
 *
 * Prints a markdown table of the final eval losses, or with `--json` one JSON
 * object per configuration and a last `{"event": "summary", ...}` line.
 *
 * @module
 */
import {
  choiceFlag,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  runCommand,
  UsageError,
} from "../kernels/cli.ts";
import { acquireGpu } from "../kernels/device.ts";
import { CONFIGS, DEFAULT_CONFIG } from "../kernels/config.ts";
import { loadCorpus } from "../kernels/corpus.ts";
import {
  DEFAULT_INNER_STEPS,
  DEFAULT_OUTER,
  type OuterOptimizer,
} from "../actors/outer_optimizer.ts";
import { runConfig } from "./_experiment.ts";
import {
  byzantineConfigs,
  type ExperimentConfig,
  type ExperimentSettings,
  standardConfigs,
} from "./_experiment_configs.ts";
import {
  type ExperimentResult,
  markdownTable,
  summarizeExperiment,
} from "./_experiment_summary.ts";

import { AGGREGATE_SYNTAX, parseAggregate } from "../actors/robust_aggregate.ts";
import { aggregateFlag, exchangeFlag } from "../actors/node_args.ts";

/** The robust rule of the Byzantine rows unless `--aggregate` says otherwise. */
const DEFAULT_ROBUST = "trimmed-mean:0.2";
const STANDARD = standardConfigs(DEFAULT_CONFIG);
const BYZANTINE = byzantineConfigs(DEFAULT_CONFIG, parseAggregate(DEFAULT_ROBUST));
const NAMES = [...STANDARD, ...BYZANTINE].map((c) => c.name);

/** The command line of `deno task experiment`. */
export const EXPERIMENT_COMMAND = {
  prog: "experiment",
  usage: "deno task experiment [flags]",
  about: `Trains each configuration on the same token budget and prints its final eval loss
(mean next-byte cross-entropy on the same windows spread over the validation split).`,
  flags: {
    steps: { value: "N", help: "inner steps per trainer (the budget; default 200)" },
    configs: { value: "LIST", help: "which configurations to run, comma-separated (default all)" },
    seed: { value: "N", help: "init and sampling seed (default 1)" },
    config: {
      value: "NAME",
      help: `model config: ${Object.keys(CONFIGS).join(", ")} (default ${DEFAULT_CONFIG})`,
    },
    trainers: { value: "N", help: "DiLoCo trainers (default 4; single-4x uses N x batch)" },
    "inner-steps": {
      value: "H",
      help: `DiLoCo inner steps per round (default ${DEFAULT_INNER_STEPS})`,
    },
    "outer-lr": { help: `outer lr of the default DiLoCo rows (default ${DEFAULT_OUTER.lr})` },
    "outer-momentum": {
      help: `outer Nesterov momentum of those rows (default ${DEFAULT_OUTER.momentum})`,
    },
    "outer-warmup": {
      value: "N",
      help: `rounds of outer lr/momentum warm-up of those rows (default ${
        DEFAULT_OUTER.warmupRounds ?? 0
      })`,
    },
    "inner-reset": {
      type: "boolean",
      help: "zero each trainer's AdamW moments every round (in-process rows only)",
    },
    "inner-schedule": {
      value: "S",
      help: "run (one cosine over the run, default) or round (restart each round)",
    },
    topk: {
      value: "F",
      help: "fraction of each block of 256 the diloco-topk row sends (default 0.05)",
    },
    "update-exchange": {
      value: "FORMAT",
      help: "the aggregator's update in the coded rows that name none: int8\n" +
        "(default), int4 or topk:F, with the aggregator's error feedback",
    },
    "overlap-steps": {
      value: "T",
      help: "inner steps of the next round an overlapped row runs before the\n" +
        "update is merged (default: a fifth of a round; diloco-overlap-late: H)",
    },
    "eval-windows": { value: "N", help: "validation windows for the final loss (default 1024)" },
    aggregate: {
      value: "RULE",
      help:
        `the robust rule of the byz-*-robust rows: ${AGGREGATE_SYNTAX}\n(default ${DEFAULT_ROBUST})`,
    },
    "data-shards": {
      value: "N",
      help: "data shards (chunks of the stream dealt round-robin); trainer i reads shard i\n" +
        "(default 16, the run's); single trainers read the whole stream",
    },
    json: { type: "boolean", help: "one JSON object per configuration, then a summary line" },
  },
  notes: `Configurations (--configs; default all but byz-*):
${STANDARD.map((c) => `  ${c.name.padEnd(16)}${c.description}`).join("\n")}

Byzantine rows (--configs byz runs them all; the last of 5 trainers is hostile):
${BYZANTINE.map((c) => `  ${c.name.padEnd(20)}${c.description}`).join("\n")}`,
} as const satisfies Command;

/** Parsed command line of `deno task experiment`. */
export interface ExperimentArgs {
  settings: ExperimentSettings;
  configs: ExperimentConfig[];
  json: boolean;
  help: boolean;
}

/**
 * Parses the flags.
 *
 * @throws {UsageError} naming the flag at fault
 *
 * @example
 * ```ts
 * import { parseExperimentArgs } from "./experiment_main.ts";
 * const a = parseExperimentArgs(["--steps", "20", "--configs", "single,diloco-int8"]);
 * console.log(a.settings.steps, a.configs.map((c) => c.name)); // 20 ["single", "diloco-int8"]
 * ```
 */
export function parseExperimentArgs(argv: string[]): ExperimentArgs {
  const values = parseFlags(EXPERIMENT_COMMAND, argv);
  const config = choiceFlag("config", values.config, Object.keys(CONFIGS), DEFAULT_CONFIG);
  const schedule = choiceFlag("inner-schedule", values["inner-schedule"], ["run", "round"], "run");
  const outer: OuterOptimizer = {
    lr: numberFlag("outer-lr", values["outer-lr"], { min: 0, max: Infinity, closedMin: true }) ??
      DEFAULT_OUTER.lr,
    momentum: numberFlag("outer-momentum", values["outer-momentum"], {
      min: 0,
      max: Infinity,
      closedMin: true,
    }) ?? DEFAULT_OUTER.momentum,
    warmupRounds: intFlag("outer-warmup", values["outer-warmup"], 0) ??
      DEFAULT_OUTER.warmupRounds ?? 0,
  };
  if (outer.momentum >= 1) {
    throw new UsageError(`Invalid --outer-momentum: expected a number < 1, got ${outer.momentum}`);
  }
  const diloco = {
    trainers: intFlag("trainers", values.trainers) ?? 4,
    innerSteps: intFlag("inner-steps", values["inner-steps"]) ?? DEFAULT_INNER_STEPS,
    outer,
    innerReset: values["inner-reset"] ?? false,
    innerSchedule: schedule,
    topk: numberFlag("topk", values.topk, { min: 0, max: 1 }) ?? 0.05,
    ...(values["update-exchange"] !== undefined
      ? { updateExchange: exchangeFlag("update-exchange", values["update-exchange"]) }
      : {}),
    ...(values["overlap-steps"] !== undefined
      ? { overlapSteps: intFlag("overlap-steps", values["overlap-steps"], 0) }
      : {}),
  };
  const standard = standardConfigs(config, diloco);
  const robust = aggregateFlag(values.aggregate ?? DEFAULT_ROBUST);
  const all = [...standard, ...byzantineConfigs(config, robust, diloco)];
  const wanted = values.configs?.split(",").map((x: string) => x.trim()).filter((x: string) => x)
    .flatMap((x: string) => x === "byz" ? BYZANTINE.map((c) => c.name) : [x]) ??
    standard.map((c) => c.name);
  for (const w of wanted) {
    if (!all.some((c) => c.name === w)) {
      throw new UsageError(`Invalid --configs: unknown "${w}" (known: ${NAMES.join(", ")})`);
    }
  }
  if (wanted.length === 0) throw new UsageError("Invalid --configs: empty list");
  const settings: ExperimentSettings = {
    config,
    steps: intFlag("steps", values.steps) ?? 200,
    seed: intFlag("seed", values.seed, 0) ?? 1,
    evalWindows: intFlag("eval-windows", values["eval-windows"]) ?? 1024,
    dataShards: intFlag("data-shards", values["data-shards"]) ?? 16,
  };
  const configs = all.filter((c) => wanted.includes(c.name));
  for (const c of configs) {
    if (c.kind !== "single" && settings.steps % c.innerSteps !== 0) {
      throw new UsageError(
        `Invalid --steps: ${settings.steps} is not a multiple of H = ${c.innerSteps} (${c.name})`,
      );
    }
    if (c.kind === "run" && (c.innerReset || c.innerSchedule === "round")) {
      throw new UsageError(
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
  const args = parseExperimentArgs(argv);
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
  await runCommand(EXPERIMENT_COMMAND, Deno.args, () => main(Deno.args));
}
