/**
 * Loss curves of the same training run in different precisions, over several
 * seeds, and how to read them.
 *
 * A single pair of runs cannot say whether f16 matmul inputs cost loss: at the
 * `small` config's learning rate the curve of one seed is chaotic (a run sits
 * on a plateau near loss 3.0 for a while and leaves it at a step that any
 * perturbation moves), so two f32 runs that differ only in the order of their
 * sums end several percent apart on some seeds. Hence every comparison here
 * carries a control, the same precision on the other kernel family (CPU-shaped
 * kernels against GPU tiles and flash attention: the same arithmetic, summed in
 * another order), and compares means over seeds.
 *
 * @module
 */
import type { AdapterClass, Gpu } from "./device.ts";
import type { GptConfig } from "./config.ts";
import type { Corpus } from "./data.ts";
import { batchSampler } from "./data.ts";
import { evaluate } from "./evaluate.ts";
import { createModel } from "./model.ts";
import type { Precision } from "./model_options.ts";
import { pipelinedSteps } from "./pipeline.ts";
import { learningRate } from "./train_main.ts";

/** One arm of the comparison: a precision, on the adapter's own kernels or a forced family. */
export interface PrecisionArm {
  /** As written on the command line: `f32`, `f16`, `f32:gpu`, `f16:cpu`. */
  name: string;
  precision: Precision;
  /** The kernel family it runs on (the adapter's own unless forced). */
  kernels: AdapterClass;
}

/**
 * Parses arms such as `f32`, `f16` or `f32:gpu` (precision, then optionally the
 * kernel family forced); `other` stands for the family the adapter does not use.
 *
 * @throws {RangeError} naming the arm that is not understood
 *
 * @example
 * ```ts
 * import { parseArms } from "./precision_compare.ts";
 * console.log(parseArms("f32,f32:other,f16", "cpu").map((a) => a.name)); // ["f32", "f32:gpu", "f16"]
 * ```
 */
export function parseArms(text: string, adapterClass: AdapterClass): PrecisionArm[] {
  const arms = text.split(",").map((part) => {
    const [precision, family, extra] = part.trim().split(":");
    if (
      (precision !== "f32" && precision !== "f16") || extra !== undefined ||
      (family !== undefined && !["cpu", "gpu", "other"].includes(family))
    ) {
      throw new RangeError(
        `Invalid arm ${
          JSON.stringify(part)
        } (expected f32 or f16, optionally :cpu, :gpu or :other)`,
      );
    }
    const kernels = family === "other"
      ? (adapterClass === "cpu" ? "gpu" : "cpu")
      : family as AdapterClass | undefined;
    const name = kernels === undefined || kernels === adapterClass
      ? precision
      : `${precision}:${kernels}`;
    return { name, precision, kernels: kernels ?? adapterClass } as PrecisionArm;
  });
  const names = arms.map((a) => a.name);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new RangeError(`Arm ${twice} is given twice`);
  return arms;
}

/** What one training run of the comparison measured. */
export interface ArmRun {
  arm: string;
  seed: number;
  /** Steps at which the validation loss was measured. */
  steps: number[];
  /** Validation loss at each of `steps`. */
  val: number[];
  /** Training tokens per second (evaluations excluded). */
  tokensPerS: number;
}

/** The training schedule shared by every run of a comparison. */
export interface PrecisionSchedule {
  config: GptConfig;
  batch: number;
  steps: number;
  lr: number;
  warmup: number;
  evalEvery: number;
  evalWindows: number;
}

/**
 * Trains one arm from `seed` (init and data order, as `deno task train`) on
 * `gpu` and measures the validation loss every `evalEvery` steps and at the end.
 */
export async function trainArm(
  gpu: Gpu,
  corpus: Corpus,
  arm: PrecisionArm,
  seed: number,
  s: PrecisionSchedule,
): Promise<ArmRun> {
  const model = await createModel(gpu, s.config, {
    seed,
    batch: s.batch,
    precision: arm.precision,
  });
  try {
    const sampler = batchSampler(corpus.train, {
      batch: s.batch,
      blockSize: s.config.blockSize,
      seed,
    });
    const run: ArmRun = { arm: arm.name, seed, steps: [], val: [], tokensPerS: 0 };
    let trainMs = 0;
    for (let from = 0; from < s.steps;) {
      const to = Math.min(s.steps, from + (s.evalEvery > 0 ? s.evalEvery : s.steps));
      const t0 = performance.now();
      await pipelinedSteps(model, to - from, (i) => ({
        ...sampler.next(),
        lr: learningRate(from + i, s),
      }), (i, loss) => {
        if (!Number.isFinite(loss)) {
          throw new Error(
            `${arm.name} seed ${seed} diverged: loss ${loss} at step ${from + i + 1}`,
          );
        }
      });
      trainMs += performance.now() - t0;
      const val = await evaluate(model, corpus.val, {
        maxWindows: s.evalWindows,
        selection: "spread",
      });
      run.steps.push(to);
      run.val.push(val.loss);
      from = to;
    }
    run.tokensPerS = (s.steps * model.tokensPerStep) / (trainMs / 1000);
    return run;
  } finally {
    model.dispose();
  }
}

/** Means over seeds of one arm, and its ratios to the baseline arm. */
export interface ArmSummary {
  arm: string;
  seeds: number;
  /** Mean validation loss at each evaluation step. */
  meanVal: number[];
  /** meanVal over the baseline's meanVal, step by step. */
  ratio: number[];
  /** The largest |final val / baseline's final val − 1| of a single seed. */
  worstSeed: number;
  /** Mean training tokens per second. */
  tokensPerS: number;
}

/**
 * Summarizes runs by arm against `baseline` (the arm named first): runs are
 * paired by seed, and only seeds every arm finished count.
 *
 * @throws {RangeError} when an arm has no run, or runs disagree on their evaluation steps
 *
 * @example
 * ```ts
 * import { summarize } from "./precision_compare.ts";
 * const run = (arm: string, seed: number, val: number[]) =>
 *   ({ arm, seed, steps: [10, 20], val, tokensPerS: 1 });
 * const s = summarize([run("f32", 1, [3, 2]), run("f16", 1, [3, 2.02])], ["f32", "f16"]);
 * console.log(s[1].ratio[1].toFixed(2)); // 1.01
 * ```
 */
export function summarize(runs: readonly ArmRun[], arms: readonly string[]): ArmSummary[] {
  const byArm = new Map(arms.map((a) => [a, new Map<number, ArmRun>()]));
  for (const r of runs) byArm.get(r.arm)?.set(r.seed, r);
  const seeds = [...byArm.get(arms[0])!.keys()].filter((seed) =>
    arms.every((a) => byArm.get(a)!.has(seed))
  );
  if (seeds.length === 0) throw new RangeError(`No seed was run by every arm (${arms.join(", ")})`);
  const steps = byArm.get(arms[0])!.get(seeds[0])!.steps;
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const of = (arm: string) => seeds.map((seed) => byArm.get(arm)!.get(seed)!);
  for (const arm of arms) {
    for (const r of of(arm)) {
      if (r.steps.join() !== steps.join()) {
        throw new RangeError(`${arm} seed ${r.seed} evaluated at other steps than ${arms[0]}`);
      }
    }
  }
  const base = of(arms[0]);
  const baseMean = steps.map((_, i) => mean(base.map((r) => r.val[i])));
  const last = steps.length - 1;
  return arms.map((arm) => {
    const rs = of(arm);
    const meanVal = steps.map((_, i) => mean(rs.map((r) => r.val[i])));
    return {
      arm,
      seeds: seeds.length,
      meanVal,
      ratio: meanVal.map((v, i) => v / baseMean[i]),
      worstSeed: Math.max(...rs.map((r, j) => Math.abs(r.val[last] / base[j].val[last] - 1))),
      tokensPerS: mean(rs.map((r) => r.tokensPerS)),
    };
  });
}

/**
 * The comparison as a Markdown table: per arm the mean validation loss at each
 * evaluation, its ratio to the first arm, the worst single seed at the end and
 * the speed.
 */
export function formatSummary(summary: readonly ArmSummary[], steps: readonly number[]): string {
  const head = [
    "arm",
    ...steps.map((s) => `val @${s}`),
    "final / first arm",
    "worst seed",
    "tok/s",
  ];
  const rows = summary.map((s) => [
    s.arm,
    ...s.meanVal.map((v) => v.toFixed(4)),
    s.ratio[s.ratio.length - 1].toFixed(4),
    `${(100 * s.worstSeed).toFixed(1)}%`,
    Math.round(s.tokensPerS).toLocaleString("en-US"),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(" | ")} |`;
  return [
    line(head),
    `| ${widths.map((w, i) => i === 0 ? "-".repeat(w) : "-".repeat(w - 1) + ":").join(" | ")} |`,
    ...rows.map(line),
  ].join("\n");
}
