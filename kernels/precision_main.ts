/**
 * `deno task precision [--config NAME] [--steps N] [--seeds 1,2,3] [--arms
 * f32,f32:other,f16] [--lr X] [--eval-every N] [--eval-windows N] [--json]`:
 * trains the same model from the same seeds in each arm (a precision, on the
 * adapter's kernels or a forced kernel family) and prints the mean validation
 * loss of each arm at every evaluation beside the first arm's
 * (kernels/precision_compare.ts says why it takes seeds and a control).
 * With `--json`, one line per run, then one per arm's summary.
 *
 * @module
 */
import { type Command, intFlag, numberFlag, parseFlags, runCommand, UsageError } from "./cli.ts";
import { DEFAULT_CONFIG, describeConfig, getConfig } from "./config.ts";
import { loadCorpus } from "./corpus.ts";
import { acquireGpu, type AdapterClass, type Gpu } from "./device.ts";
import {
  type ArmRun,
  formatSummary,
  parseArms,
  type PrecisionArm,
  type PrecisionSchedule,
  summarize,
  trainArm,
} from "./precision_compare.ts";

/** The command line of `deno task precision`. */
export const PRECISION_COMMAND = {
  prog: "precision",
  usage: "deno task precision [flags]",
  about: "Trains one model in several precisions from the same seeds and compares their " +
    "validation loss.",
  flags: {
    config: { value: "NAME", help: `model config (default ${DEFAULT_CONFIG})` },
    steps: { value: "N", help: "optimizer steps per run (default 150)" },
    seeds: { value: "LIST", help: "comma-separated seeds, each run by every arm (default 1,2,3)" },
    arms: {
      value: "LIST",
      help: "comma-separated arms, the first the baseline (default f32,f32:other,f16):\n" +
        "f32 or f16, optionally :cpu, :gpu or :other (the kernel family the adapter\n" +
        "does not use: the same precision summed in another order, the control)",
    },
    lr: { help: "peak learning rate (default: the config's)" },
    warmup: { value: "N", help: "linear warmup steps (default: the config's)" },
    "eval-every": { value: "N", help: "steps between evaluations (default 50)" },
    "eval-windows": { value: "N", help: "validation windows per evaluation (default 256)" },
    json: { type: "boolean", help: "one JSON line per run and per arm instead of the table" },
  },
} as const satisfies Command;

/** Parsed options of `deno task precision`. */
export interface PrecisionArgs {
  configName: string;
  schedule: PrecisionSchedule;
  seeds: number[];
  /** The arms as written (resolved against the adapter once it is known). */
  arms: string;
  json: boolean;
}

/**
 * Parses the command line of `deno task precision`; bad input is a UsageError.
 *
 * @example
 * ```ts
 * import { parsePrecisionArgs } from "./precision_main.ts";
 * console.log(parsePrecisionArgs(["--seeds", "4,5"]).seeds); // [4, 5]
 * ```
 */
export function parsePrecisionArgs(args: string[]): PrecisionArgs {
  const v = parseFlags(PRECISION_COMMAND, args);
  const configName = v.config ?? DEFAULT_CONFIG;
  let named;
  try {
    named = getConfig(configName);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const steps = intFlag("steps", v.steps) ?? 150;
  const seedsText = v.seeds ?? "1,2,3";
  const seeds = seedsText.split(",").map((s) => intFlag("seeds", s.trim(), 0)!);
  if (new Set(seeds).size !== seeds.length) {
    throw new UsageError(`Invalid --seeds: ${JSON.stringify(seedsText)} (a seed is repeated)`);
  }
  const arms = v.arms ?? "f32,f32:other,f16";
  try {
    parseArms(arms, "cpu");
  } catch (err) {
    throw new UsageError(`Invalid --arms: ${(err as Error).message}`);
  }
  return {
    configName,
    schedule: {
      config: named.model,
      batch: named.train.batch,
      steps,
      lr: numberFlag("lr", v.lr, { min: 0, max: 10 }) ?? named.train.lr,
      warmup: intFlag("warmup", v.warmup, 0) ?? Math.min(named.train.warmup, steps),
      evalEvery: intFlag("eval-every", v["eval-every"], 0) ?? 50,
      evalWindows: intFlag("eval-windows", v["eval-windows"]) ?? 256,
    },
    seeds,
    arms,
    json: v.json ?? false,
  };
}

async function main(a: PrecisionArgs): Promise<void> {
  const corpus = await loadCorpus();
  // One device per kernel family: the family is fixed when a device is acquired.
  const devices = new Map<AdapterClass, Gpu>();
  const own = await acquireGpu();
  devices.set(own.adapter.class, own);
  try {
    const arms = parseArms(a.arms, own.adapter.class);
    const device = async ({ kernels }: PrecisionArm) => {
      if (!devices.has(kernels)) devices.set(kernels, await acquireGpu({ adapterClass: kernels }));
      return devices.get(kernels)!;
    };
    const s = a.schedule;
    console.error(
      `precision: ${a.configName} (${
        describeConfig(s.config)
      }), batch ${s.batch}, ${s.steps} steps, ` +
        `lr ${s.lr}, seeds ${a.seeds.join(",")}, arms ${
          arms.map((x) => x.name).join(", ")
        }, WebGPU ${own.adapter.description} (${own.adapter.class} kernels)`,
    );
    const runs: ArmRun[] = [];
    for (const seed of a.seeds) {
      for (const arm of arms) {
        const run = await trainArm(await device(arm), corpus, arm, seed, s);
        runs.push(run);
        if (a.json) console.log(JSON.stringify({ event: "run", ...run }));
        else {
          console.error(
            `seed ${seed} ${arm.name}: val ${run.val.map((x) => x.toFixed(4)).join(" ")} ` +
              `(${Math.round(run.tokensPerS).toLocaleString("en-US")} tok/s)`,
          );
        }
      }
    }
    const summary = summarize(runs, arms.map((x) => x.name));
    if (a.json) {
      for (const row of summary) console.log(JSON.stringify({ event: "arm", ...row }));
    } else {
      console.log(formatSummary(summary, runs[0].steps));
    }
  } finally {
    for (const gpu of devices.values()) gpu.destroy();
  }
}

if (import.meta.main) {
  await runCommand(PRECISION_COMMAND, Deno.args, () => main(parsePrecisionArgs(Deno.args)));
}
