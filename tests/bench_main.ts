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
import { parseArgs } from "@std/cli";

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
}

/** A benchmark suite. */
export type BenchSuite = (options: BenchOptions) => AsyncGenerator<BenchRecord>;

const SUITES: Record<string, () => Promise<{ bench: BenchSuite }>> = {
  kernels: () => import("../kernels/bench.ts"),
  train: () => import("../kernels/bench_train.ts"),
  transport: () => import("../transport/bench.ts"),
  checkpoint: () => import("../checkpoint/bench.ts"),
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      json: { type: "boolean", default: false },
      quick: { type: "boolean", default: false },
      only: { type: "string", multiple: true },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      "Usage: deno task bench [--json] [--quick] [--only kernels|train|transport ...]",
    );
    return;
  }
  const names = values.only?.length ? values.only : Object.keys(SUITES);
  const print = (record: BenchRecord) => {
    if (values.json) console.log(JSON.stringify(record));
    else {
      const { name: n, value, unit, ...rest } = record;
      const extra = Object.entries(rest).map(([k, v]) => `${k}=${v}`).join(" ");
      console.log(
        `${n.padEnd(28)} ${value.toPrecision(4).padStart(12)} ${unit.padEnd(10)} ${extra}`,
      );
    }
  };
  // Figures that are compared across suites measured in this same run.
  let bestMatmul = 0;
  const trainSteps = new Map<string, number>();
  for (const name of names) {
    const load = SUITES[name];
    if (!load) throw new TypeError(`Unknown bench suite: ${name} (known: ${Object.keys(SUITES)})`);
    const { bench } = await load();
    for await (const record of bench({ quick: values.quick })) {
      if (record.name === "matmul_gflops") bestMatmul = Math.max(bestMatmul, record.value);
      if (record.name === "train_step_gflops") trainSteps.set(String(record.config), record.value);
      print(record);
    }
  }
  for (const [config, gflops] of bestMatmul > 0 ? trainSteps : []) {
    print({
      name: "train_step_vs_best_matmul",
      value: gflops / bestMatmul,
      unit: "ratio",
      config,
      target: ">= 0.5",
    });
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (err) {
    console.error(`bench: ${err instanceof Error ? err.message : err}`);
    Deno.exit(1);
  }
}
