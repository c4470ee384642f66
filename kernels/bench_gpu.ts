/**
 * The `gpu` bench suite (`deno task bench --only gpu [--json] [--quick]
 * [--model NAME]`): the report to run in one call on a lent GPU machine.
 *
 * 1. For each model of {@linkcode GPU_MODELS} at batch 16: our training
 *    step's tokens/s (pipelined steps as the trainers run them, after a
 *    warm-up; the median of timed blocks of about a second each) in f32 and,
 *    where the device has `shader-f16`, with f16 matmul inputs
 *    (`precision: "f16"`), and, in the same run, PyTorch's for the identical model in fp32 eager and with TF32
 *    (tests/torch_gpt2_bench.py), when some `python3` imports torch with
 *    CUDA; otherwise the records say why those columns are missing. Models
 *    that the model would refuse (kernels/limits.ts) are skipped with the
 *    reason.
 * 2. The per-kernel profile of one step (kernels/step_profile.ts) of the
 *    model named by `--model` (default the largest that fits), by kind of
 *    kernel and by family (all matmuls together), in each precision measured.
 * 3. Attention at that model's shape: the kernels alone
 *    (kernels/bench_attention.ts: blocked and flash, forward and backward,
 *    the flash backward with its key pass fused and split), then the f32
 *    step with flash attention and each key pass, measured alternately.
 * 4. The matmul tuner on that model ({@linkcode tuneModel}).
 *
 * `--quick` measures the small model alone with short blocks. Records:
 * `gpu_step_tokens_per_s` (with the PyTorch figures and the ratio as
 * fields), `gpu_step_f16_tokens_per_s` (with the ratio to our f32),
 * `torch_step_tokens_per_s` (one per precision), `gpu_vs_torch_fp32`,
 * `gpu_model_skipped`, and `gpu_profile_step_ms`, `gpu_profile_kind`,
 * `gpu_profile_family` (each with its `precision`), `attention_ms`,
 * `attention_gflops`, `gpu_key_pass_step_tokens_per_s`, `gpu_tune_shape`,
 * `gpu_tuned_step_tokens_per_s`, `gpu_part_failed` for a part that threw
 * ({@linkcode guarded}: the report goes on) and `gpu_part_skipped` for one
 * not started because `--time-limit` had passed. {@linkcode summarize} prints
 * them as Markdown tables.
 *
 * @module
 */
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";
import { acquireGpu, type Gpu } from "./device.ts";
import { describeConfig, type GptConfig } from "./config.ts";
import { planModel } from "./limits.ts";
import { createModel, type GptModel } from "./model.ts";
import type { ModelOptions, Precision } from "./model_options.ts";
import { pipelinedSteps } from "./pipeline.ts";
import { batchSampler } from "./data.ts";
import { trainStepFlops } from "./bench_train.ts";
import { type DispatchTime, groupProfile, profileStep } from "./step_profile.ts";
import { findTorch, runTorchBaseline, type TorchResult } from "../tests/_torch_baseline.ts";
import { MatmulTuner } from "./matmul_tune.ts";
import { benchAttention } from "./bench_attention.ts";

export { summarize, TARGET_ATTENTION_SHARE, TARGET_VS_TORCH } from "./bench_gpu_summary.ts";
import { defaultKeyPass, type KeyPass } from "./flash_attention.ts";

/** Sequences per step of every model of the report. */
export const GPU_BATCH = 16;

const BYTES = 256;

/** The report's models, smallest first; `--model` takes these names. */
export const GPU_MODELS: readonly { name: string; config: GptConfig }[] = [
  { name: "small", config: { nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: BYTES } },
  { name: "medium", config: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: BYTES } },
  { name: "large", config: { nLayer: 6, nHead: 8, nEmbd: 256, blockSize: 256, vocabSize: BYTES } },
  { name: "L8C512", config: { nLayer: 8, nHead: 8, nEmbd: 512, blockSize: 256, vocabSize: BYTES } },
  {
    name: "L12C768",
    config: { nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 256, vocabSize: BYTES },
  },
];

/**
 * Why `config` at `batch` cannot run on `gpu`, or undefined if it can: the
 * model's own pre-allocation check (kernels/limits.ts), with the attention
 * family the model would choose there (the T·T scratch only on CPU adapters).
 */
export function misfit(
  config: GptConfig,
  batch: number,
  gpu: Pick<Gpu, "isCpu" | "limits">,
): string | undefined {
  try {
    planModel(config, { batch, attentionScratch: gpu.isCpu }, gpu.limits);
    return undefined;
  } catch (err) {
    if (err instanceof RangeError) return err.message;
    throw err;
  }
}

/** The model named `name` of {@linkcode GPU_MODELS}; RangeError naming the known ones. */
function modelNamed(name: string) {
  const m = GPU_MODELS.find((m) => m.name === name);
  if (!m) {
    const known = GPU_MODELS.map((m) => m.name).join(", ");
    throw new RangeError(`Cannot profile model: unknown model ${name} (known: ${known})`);
  }
  return m;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

/** A model at {@linkcode GPU_BATCH} and a fixed batch of pseudo-random bytes (speed does not depend on the text). */
async function openModel(gpu: Gpu, config: GptConfig, options: ModelOptions) {
  const model = await createModel(gpu, config, { ...options, seed: 1, batch: GPU_BATCH });
  const bytes = new Uint8Array(1 << 16).map((_, i) => (i * 2654435761) >>> 24);
  const sampler = batchSampler(bytes, { batch: GPU_BATCH, blockSize: config.blockSize, seed: 1 });
  const batches = Array.from({ length: 4 }, () => sampler.next());
  const run = (steps: number) =>
    pipelinedSteps(model, steps, (i) => ({ ...batches[i % batches.length], lr: 1e-3 }));
  return { model, run };
}

/** Our tokens/s: warm-up, then blocks of pipelined steps sized to about `blockSeconds`. */
async function measureOurs(
  run: (steps: number) => Promise<void>,
  tokensPerStep: number,
  quick: boolean,
) {
  await run(2); // compiles every pipeline
  let t0 = performance.now();
  await run(2);
  const stepMs = (performance.now() - t0) / 2;
  const blockSeconds = quick ? 0.3 : 1;
  const steps = Math.max(2, Math.min(50, Math.round((blockSeconds * 1000) / stepMs)));
  const rates: number[] = [];
  for (let b = 0; b < (quick ? 2 : 5); b++) {
    t0 = performance.now();
    await run(steps);
    rates.push((steps * tokensPerStep) / ((performance.now() - t0) / 1000));
  }
  return { tokensPerS: median(rates), rates, steps };
}

/**
 * Tokens/s of each of `models` (of `config`), measured in turn three times
 * (once with `quick`) so that a drift of the device's clock or load falls on
 * all alike: the median per model, in the order given.
 */
async function measureAlternately(
  models: { run: (steps: number) => Promise<void> }[],
  config: GptConfig,
  quick: boolean,
): Promise<{ rates: number[]; statistic: string }> {
  const tokens = GPU_BATCH * config.blockSize;
  const rounds = quick ? 1 : 3;
  const rates = models.map(() => [] as number[]);
  for (let i = 0; i < rounds; i++) {
    for (const [j, m] of models.entries()) {
      rates[j].push((await measureOurs(m.run, tokens, quick)).tokensPerS);
    }
  }
  return {
    rates: rates.map(median),
    statistic: `median of ${rounds} alternating measurements of each (each a median of blocks)`,
  };
}

/** The table's figures for one model ({@linkcode bench} step 1). */
async function* tableRow(
  gpu: Gpu,
  name: string,
  config: GptConfig,
  torch: Map<string, TorchResult>,
  torchMissing: string | undefined,
  quick: boolean,
): AsyncGenerator<BenchRecord> {
  const { model, run } = await openModel(gpu, config, { precision: "f32" });
  try {
    const tokens = GPU_BATCH * config.blockSize;
    const ours = await measureOurs(run, tokens, quick);
    const fp32 = torch.get(`${name}/fp32`);
    const tf32 = torch.get(`${name}/tf32`);
    const common = { model: name, shape: describeConfig(config), batch: GPU_BATCH };
    const flops = trainStepFlops(config, model.paramCount, tokens);
    if (gpu.hasF16) {
      const half = await openModel(gpu, config, { precision: "f16" });
      try {
        const r = await measureOurs(half.run, tokens, quick);
        yield {
          name: "gpu_step_f16_tokens_per_s",
          value: r.tokensPerS,
          unit: "tokens/s",
          ...common,
          step_ms: round((tokens / r.tokensPerS) * 1000, 2),
          gflops: round((flops * r.tokensPerS) / tokens / 1e9),
          ratio_vs_f32: round(r.tokensPerS / ours.tokensPerS, 4),
          ratio_vs_torch_fp32: fp32 ? round(r.tokensPerS / fp32.tokens_per_s, 4) : undefined,
          statistic: `median of ${r.rates.length} blocks of ${r.steps} pipelined steps`,
          blocks: r.rates.map((x) => Math.round(x)).join(" "),
        };
      } finally {
        half.model.dispose();
      }
    }
    yield {
      name: "gpu_step_tokens_per_s",
      value: ours.tokensPerS,
      unit: "tokens/s",
      ...common,
      params: model.paramCount,
      step_ms: round((tokens / ours.tokensPerS) * 1000, 2),
      gflops: round((flops * ours.tokensPerS) / tokens / 1e9),
      statistic: `median of ${ours.rates.length} blocks of ${ours.steps} pipelined steps`,
      blocks: ours.rates.map((r) => Math.round(r)).join(" "),
      torch_fp32_tokens_per_s: fp32 ? Math.round(fp32.tokens_per_s) : undefined,
      torch_tf32_tokens_per_s: tf32 ? Math.round(tf32.tokens_per_s) : undefined,
      ratio_vs_torch_fp32: fp32 ? round(ours.tokensPerS / fp32.tokens_per_s, 4) : undefined,
      torch_missing: fp32 ? undefined : torchMissing ?? "the PyTorch run gave no figure",
      f16_missing: gpu.hasF16 ? undefined : "the device lacks the shader-f16 feature",
      adapter: gpu.adapter.description,
    };
    for (const r of [fp32, tf32]) {
      if (!r) continue;
      yield {
        name: "torch_step_tokens_per_s",
        value: r.tokens_per_s,
        unit: "tokens/s",
        ...common,
        precision: r.precision,
        params: r.params,
        attention: r.attention,
        statistic: `median of ${r.block_tokens_per_s.length} blocks of ${r.steps_per_block} steps`,
        torch: r.torch,
        device: r.device,
      };
    }
    if (fp32) {
      yield {
        name: "gpu_vs_torch_fp32",
        value: ours.tokensPerS / fp32.tokens_per_s,
        unit: "ratio",
        ...common,
      };
    }
  } finally {
    model.dispose();
  }
}

/** The profile's records for `dispatches` ({@linkcode bench} step 2). */
function profileRecords(
  name: string,
  config: GptConfig,
  dispatches: DispatchTime[],
  precision: Precision,
  extra: Record<string, unknown>,
): BenchRecord[] {
  const total = dispatches.reduce((s, d) => s + d.ms, 0);
  const common = { model: name, shape: describeConfig(config), batch: GPU_BATCH, precision };
  const records: BenchRecord[] = [{
    name: "gpu_profile_step_ms",
    value: total,
    unit: "ms",
    ...common,
    ...extra,
    dispatches: dispatches.length,
  }];
  const family = (kind: string) => kind.startsWith("matmul") ? "matmul (all)" : kind;
  const groups = [
    ["gpu_profile_kind", groupProfile(dispatches)],
    ["gpu_profile_family", groupProfile(dispatches, (d) => family(d.kind))],
  ] as const;
  for (const [recordName, list] of groups) {
    for (const g of list) {
      records.push({
        name: recordName,
        value: g.ms,
        unit: "ms",
        model: name,
        precision,
        kind: g.kind,
        count: g.count,
        ms_per_call: round(g.ms / g.count, 4),
        share_pct: round(g.share * 100, 2),
        gflops: g.flops !== undefined && g.ms > 0 ? round(g.flops / g.ms / 1e6) : undefined,
      });
    }
  }
  return records;
}

/** Yields the report's parts in order: table, profiles, attention, tuning (see the module comment). */
export async function* bench(options: BenchOptions): AsyncGenerator<BenchRecord> {
  const chosen = options.model ? modelNamed(options.model) : undefined; // refuse a bad name first
  const deadline = options.timeLimitS === undefined
    ? Infinity
    : performance.now() + options.timeLimitS * 1000;
  // Each part is a generator that does nothing until iterated: one past the deadline is skipped.
  const part = (name: string, records: AsyncGenerator<BenchRecord>) =>
    performance.now() > deadline
      ? skipped(name, `the time limit of ${options.timeLimitS} s had passed`)
      : guarded(name, records);
  const gpu = await acquireGpu({ features: ["timestamp-query"] });
  try {
    const models = options.quick ? GPU_MODELS.slice(0, 1) : GPU_MODELS;
    const fit = models.map((m) => ({
      ...m,
      misfit: misfit(m.config, GPU_BATCH, gpu),
    }));
    for (const m of fit) {
      if (!m.misfit) continue;
      yield {
        name: "gpu_model_skipped",
        value: 1,
        unit: "count",
        model: m.name,
        shape: describeConfig(m.config),
        reason: m.misfit,
      };
    }
    const runnable = fit.filter((m) => !m.misfit);
    const probe = await findTorch();
    const torch = new Map<string, TorchResult>();
    let torchMissing = probe.missing;
    if (probe.cuda && runnable.length > 0) {
      try {
        const results = await runTorchBaseline(
          runnable.map((m) => ({ name: m.name, ...m.config })),
          {
            python: probe.python!,
            batch: GPU_BATCH,
            blocks: options.quick ? 2 : 5,
            blockSeconds: options.quick ? 0.3 : 1,
          },
        );
        for (const r of results) torch.set(`${r.model}/${r.precision}`, r);
      } catch (err) {
        torchMissing = err instanceof Error ? err.message : String(err);
      }
    }
    for (const m of runnable) {
      yield* part(
        `table row ${m.name}`,
        tableRow(gpu, m.name, m.config, torch, torchMissing, options.quick),
      );
    }
    const target = chosen ?? (options.quick ? runnable[0] : runnable.at(-1));
    if (!target) return;
    const why = misfit(target.config, GPU_BATCH, gpu);
    if (why) throw new RangeError(`Cannot profile model ${target.name}: ${why}`);
    for (const precision of gpu.hasF16 ? ["f32", "f16"] as const : ["f32"] as const) {
      yield* part(`profile ${precision}`, profileModel(gpu, target, precision, options.quick));
    }
    yield* part("attention", attentionAtModel(gpu, target, options.quick));
    yield* part("matmul tuning", tuneModel(gpu, target, options.quick));
  } finally {
    gpu.destroy();
  }
}

/**
 * The records of `part`, then, if it throws, a `gpu_part_failed` record
 * naming it and the error, instead of ending the report: time on a lent GPU
 * is scarce, and one part failing there (a shader the driver rejects, memory
 * running out at one model) should not cost the parts after it.
 *
 * @example
 * ```ts ignore
 * yield* guarded("attention", attentionAtModel(gpu, target, quick));
 * ```
 */
export async function* guarded(
  part: string,
  records: AsyncGenerator<BenchRecord>,
): AsyncGenerator<BenchRecord> {
  try {
    yield* records;
  } catch (err) {
    yield {
      name: "gpu_part_failed",
      value: 1,
      unit: "count",
      part,
      error: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
    };
  }
}

/** A `gpu_part_skipped` record: `part` was not run, for `reason`. */
async function* skipped(part: string, reason: string): AsyncGenerator<BenchRecord> {
  yield { name: "gpu_part_skipped", value: 1, unit: "count", part, reason };
}

/**
 * Step 3: attention at `target`'s shape and batch: the kernels alone, then
 * the f32 step with flash attention (on every adapter) and each key pass,
 * measured alternately like the tuner's step.
 */
async function* attentionAtModel(
  gpu: Gpu,
  target: { name: string; config: GptConfig },
  quick: boolean,
): AsyncGenerator<BenchRecord> {
  const { name, config } = target;
  const { blockSize: t, nEmbd: c, nHead: nh } = config;
  const problem = { b: GPU_BATCH, t, c, nh, use: `${name} model, batch ${GPU_BATCH}` };
  for await (const r of benchAttention(gpu, { quick, problems: [problem] })) {
    yield { ...r, model: name, layers: config.nLayer };
  }
  const passes: KeyPass[] = ["fused", "split"];
  const opened = [];
  try {
    for (const flashKeyPass of passes) {
      opened.push(await openModel(gpu, config, { attention: "flash", flashKeyPass }));
    }
    const { rates, statistic } = await measureAlternately(opened, config, quick);
    for (const [j, keyPass] of passes.entries()) {
      yield {
        name: "gpu_key_pass_step_tokens_per_s",
        value: rates[j],
        unit: "tokens/s",
        model: name,
        shape: describeConfig(config),
        batch: GPU_BATCH,
        key_pass: keyPass,
        default: keyPass === defaultKeyPass(c / nh),
        ratio_vs_fused: round(rates[j] / rates[0], 4),
        statistic,
      };
    }
  } finally {
    for (const o of opened) o.model.dispose();
  }
}

/**
 * Step 4: the matmul tuner (kernels/matmul_tune.ts) on `target` in f32: every
 * shape's candidates timed, the choice against the built-in one, and the
 * tuned model's tokens/s against the default model's, measured alternately.
 */
async function* tuneModel(
  gpu: Gpu,
  target: { name: string; config: GptConfig },
  quick: boolean,
): AsyncGenerator<BenchRecord> {
  const { name, config } = target;
  const tuner = new MatmulTuner({ sampleMs: quick ? 2 : 10 });
  const t0 = performance.now();
  const tuned = await openModel(gpu, config, { precision: "f32", matmulTuner: tuner });
  const tuneSeconds = (performance.now() - t0) / 1000;
  const plain = await openModel(gpu, config, { precision: "f32" });
  try {
    for (const r of tuner.results()) {
      yield {
        name: "gpu_tune_shape",
        value: r.heuristicMs / r.ms,
        unit: "ratio",
        model: name,
        shape: r.key,
        variant: r.variant,
        ms: round(r.ms, 4),
        default_variant: r.heuristic,
        default_ms: round(r.heuristicMs, 4),
        tried: r.tried.map((t) => `${t.variant} ${t.ms.toFixed(4)}`).join(", "),
      };
    }
    const { rates: [plainRate, tunedRate], statistic } = await measureAlternately(
      [plain, tuned],
      config,
      quick,
    );
    yield {
      name: "gpu_tuned_step_tokens_per_s",
      value: tunedRate,
      unit: "tokens/s",
      model: name,
      shape: describeConfig(config),
      batch: GPU_BATCH,
      default_tokens_per_s: Math.round(plainRate),
      ratio_vs_default: round(tunedRate / plainRate, 4),
      shapes_tuned: tuner.results().length,
      changed: tuner.results().filter((r) => r.variant !== r.heuristic).length,
      tune_seconds: round(tuneSeconds, 1),
      statistic,
    };
  } finally {
    tuned.model.dispose();
    plain.model.dispose();
  }
}

async function* profileModel(
  gpu: Gpu,
  target: { name: string; config: GptConfig },
  precision: Precision,
  quick: boolean,
): AsyncGenerator<BenchRecord> {
  const { name, config } = target;
  let model: GptModel | undefined;
  try {
    const opened = await openModel(gpu, config, { precision });
    model = opened.model;
    await opened.run(2);
    const t0 = performance.now();
    await opened.run(3);
    const wallMs = (performance.now() - t0) / 3;
    const profile = await profileStep(gpu, model, { reps: quick ? 2 : 5 });
    yield* profileRecords(name, config, profile.dispatches, precision, {
      method: profile.method,
      reps: profile.reps,
      wall_step_ms: round(wallMs, 2),
      note: "sum of the dispatches' times; the step's two clearBuffer calls are not timed",
    });
  } finally {
    model?.dispose();
  }
}
