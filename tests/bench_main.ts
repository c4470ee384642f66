/**
 * `deno task bench [--json] [--only NAME]`: runs every benchmark suite and
 * prints one record per measurement. With `--json`, one JSON object per line
 * with at least `name`, `value` and `unit`.
 *
 * Each suite is a module exporting `bench(options)`, an async generator of
 * {@linkcode BenchRecord}s. Benchmarks measure and print; they never assert.
 *
 * @module
 */
import type { Problem } from "../kernels/bench.ts";
import { type Command, type Flags, numberFlag, runCommand, UsageError } from "../kernels/cli.ts";

/** One measurement. */
export interface BenchRecord {
  /** Stable identifier, e.g. `matmul_gflops`. */
  name: string;
  /** The measured figure. */
  value: number;
  /** Unit of `value`, e.g. `GFLOP/s`, `msgs/s`, `ratio`. */
  unit: string;
  /** Anything that qualifies the figure (variant, size, backend, ...). */
  [extra: string]: unknown;
}

/** Options every suite receives. */
export interface BenchOptions {
  /** Smaller sizes and fewer repetitions, for a quick look. */
  quick: boolean;
  /** The model a suite profiles (`--model`, the gpu suite's model names), when given. */
  model?: string;
  /**
   * Seconds after which the gpu suite starts no further part (`--time-limit`):
   * on a lent machine whose call is cut at a fixed time, the parts not reached
   * are recorded as skipped and the summary is still printed.
   */
  timeLimitS?: number;
}

/** A benchmark suite. */
export type BenchSuite = (options: BenchOptions) => AsyncGenerator<BenchRecord>;

/**
 * A suite module: `bench`, and optionally `summarize`, which turns the
 * suite's records into text for people (printed after them, to stderr with
 * `--json` so that stdout stays one JSON object per line).
 */
export interface BenchModule {
  /** The suite. */
  bench: BenchSuite;
  /** Its records as text for people. */
  summarize?: (records: BenchRecord[]) => string;
}

const SUITES: Record<string, () => Promise<BenchModule>> = {
  gpu: () => import("../kernels/bench_gpu.ts"),
  kernels: () => import("../kernels/bench.ts"),
  train: () => import("../kernels/bench_train.ts"),
  transport: () => import("../transport/bench.ts"),
  checkpoint: () => import("../checkpoint/bench.ts"),
  aggregation: () => import("../actors/bench_aggregation.ts"),
  sample: () => import("../actors/bench_sample.ts"),
  memory: () => import("../actors/bench_memory.ts"),
};

/**
 * The training step's GFLOP/s against the best matmul's, each pair timed back
 * to back so both see the machine in the same state (on a shared box the
 * speed of everything drifts between suites run minutes apart): the best
 * kernel and shape of the kernels suite, then a few steps of each config.
 */
async function* stepVsMatmul(
  best: BenchRecord,
  configs: string[],
  quick: boolean,
): AsyncGenerator<BenchRecord> {
  const { acquireGpu } = await import("../kernels/device.ts");
  const { timeMatmul } = await import("../kernels/bench.ts");
  const { openStepTimer } = await import("../kernels/bench_train.ts");
  const gpu = await acquireGpu();
  try {
    const shape = {
      m: Number(best.m),
      n: Number(best.n),
      k: Number(best.k),
      layout: String(best.layout) as Problem["layout"],
      use: "best",
    };
    for (const config of configs) {
      const timer = await openStepTimer(gpu, config);
      try {
        // This machine's speed swings within seconds: many short pairs, and their median.
        const pairs = quick ? 2 : 9;
        const ratios: number[] = [];
        for (let i = 0; i < pairs; i++) {
          const mm = await timeMatmul(gpu, String(best.variant), shape, quick ? 100 : 300);
          const step = await timer.measure(config === "small" ? (quick ? 3 : 10) : 3);
          ratios.push(step / mm);
        }
        ratios.sort((a, b) => a - b);
        yield {
          name: "train_step_vs_best_matmul",
          value: ratios[Math.floor(ratios.length / 2)],
          unit: "ratio",
          config,
          target: ">= 0.5",
          statistic: `median of ${pairs} back-to-back pairs`,
          matmul: `${best.variant} ${shape.layout} ${shape.m}x${shape.n}x${shape.k}`,
          pairs: ratios.map((r) => Math.round(r * 1000) / 1000).join(" "),
        };
      } finally {
        timer.close();
      }
    }
  } finally {
    gpu.destroy();
  }
}

/** The command line of `deno task bench`. */
export const BENCH_COMMAND = {
  prog: "bench",
  usage: "deno task bench [flags]",
  about: "Runs the benchmark suites and prints one record per measurement.",
  flags: {
    json: { type: "boolean", help: "one JSON object per record (name, value, unit, ...)" },
    quick: { type: "boolean", help: "smaller sizes and fewer repetitions, for a quick look" },
    only: {
      value: "SUITE",
      multiple: true,
      help: `run only this suite (repeatable): ${Object.keys(SUITES).join(", ")}`,
    },
    model: { value: "NAME", help: "gpu suite: the model to profile" },
    "time-limit": {
      value: "S",
      help: "gpu suite: start no part after S seconds (the rest are recorded as skipped)",
    },
  },
} as const satisfies Command;

async function main(values: Flags<typeof BENCH_COMMAND.flags>): Promise<void> {
  const quick = values.quick ?? false;
  const timeLimitS = numberFlag("time-limit", values["time-limit"], { min: 0, max: 86_400 });
  for (const name of values.only ?? []) {
    if (!SUITES[name]) {
      throw new UsageError(
        `Invalid --only: unknown suite "${name}" (known: ${Object.keys(SUITES).join(", ")})`,
      );
    }
  }
  const names = values.only?.length ? values.only : Object.keys(SUITES);
  const print = (record: BenchRecord) => {
    if (values.json) console.log(JSON.stringify(record));
    else {
      const { name: n, value, unit, ...rest } = record;
      const extra = Object.entries(rest).filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k}=${v}`).join(" ");
      console.log(
        `${n.padEnd(28)} ${value.toPrecision(4).padStart(12)} ${unit.padEnd(10)} ${extra}`,
      );
    }
  };
  // Figures that are compared across suites measured in this same run.
  let best: BenchRecord | undefined;
  const trainSteps = new Map<string, number>();
  for (const name of names) {
    const { bench, summarize } = await SUITES[name]();
    const records: BenchRecord[] = [];
    for await (const record of bench({ quick, model: values.model, timeLimitS })) {
      if (record.name === "matmul_gflops" && record.value > (best?.value ?? 0)) best = record;
      if (record.name === "train_step_gflops") trainSteps.set(String(record.config), record.value);
      records.push(record);
      print(record);
    }
    if (summarize) (values.json ? console.error : console.log)(`\n${summarize(records)}\n`);
  }
  if (best && trainSteps.size > 0) {
    for await (const r of stepVsMatmul(best, [...trainSteps.keys()], quick)) print(r);
  }
}

if (import.meta.main) {
  await runCommand(BENCH_COMMAND, Deno.args, main);
}
