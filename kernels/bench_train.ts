/**
 * The `train` bench suite (`deno task bench --only train`): the speed of a
 * whole training step (forward, backward, grad-norm, AdamW in one submit and
 * one 8-byte readback) of the default "small" model on the WebGPU adapter in
 * use, with two steps in flight as the trainers run them
 * ({@linkcode pipelinedSteps}); `train_step_ms_unpipelined` awaits each loss
 * before the next submit.
 *
 * FLOPs per step = 6 · N · tokens + 12 · L · C · T · tokens, with N the
 * parameters that take part in matmuls (all but wpe and the LayerNorm/bias
 * vectors are counted: we use paramCount − T·C, the biases and LayerNorm
 * parameters being a rounding error) and the second term attention's
 * QKᵀ and att·V, forward and backward (PaLM's formula; the causal mask's
 * halving is not subtracted).
 *
 * @module
 */
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";
import { acquireGpu, type Gpu } from "./device.ts";
import { describeConfig, getConfig } from "./config.ts";
import { createModel } from "./model.ts";
import { pipelinedSteps } from "./pipeline.ts";
import { batchSampler } from "./data.ts";

/** FLOPs of one training step of `config` on `tokens` tokens (see the module doc). */
export function trainStepFlops(
  config: { nLayer: number; nEmbd: number; blockSize: number },
  paramCount: number,
  tokens: number,
): number {
  const n = paramCount - config.blockSize * config.nEmbd;
  return 6 * n * tokens + 12 * config.nLayer * config.nEmbd * config.blockSize * tokens;
}

/**
 * Yields train_step_tokens_per_s, train_step_ms, train_step_ms_unpipelined and
 * train_step_gflops for the default "small" model and, unless quick, for
 * "medium" (width 128): the small model's matmuls are 64 wide, where the
 * register-blocked kernels run well below their square-matrix speed, so the
 * wider model shows how the step's share of matmul speed grows with width.
 */
export async function* bench(options: BenchOptions): AsyncGenerator<BenchRecord> {
  const gpu = await acquireGpu();
  try {
    for (const name of options.quick ? ["small"] : ["small", "medium"]) {
      yield* benchConfig(gpu, name, options.quick ? 5 : name === "small" ? 30 : 8);
    }
  } finally {
    gpu.destroy();
  }
}

/** A model of the named config with its default batch, a sampler over random bytes, and FLOPs per step. */
async function benchModel(gpu: Gpu, name: string) {
  const { model: config, train } = getConfig(name);
  const model = await createModel(gpu, config, { seed: 1, batch: train.batch });
  // Random bytes: speed does not depend on the text.
  const bytes = new Uint8Array(1 << 16).map((_, i) => (i * 2654435761) >>> 24);
  const sampler = batchSampler(bytes, { batch: train.batch, blockSize: config.blockSize, seed: 1 });
  const tokens = train.batch * config.blockSize;
  const flops = trainStepFlops(config, model.paramCount, tokens);
  return { config, batch: train.batch, model, sampler, tokens, flops };
}

async function* benchConfig(
  gpu: Gpu,
  name: string,
  steps: number,
): AsyncGenerator<BenchRecord> {
  const { config, batch, model, sampler, tokens, flops } = await benchModel(gpu, name);
  const warmup = 3;
  for (let i = 0; i < warmup; i++) {
    const b = sampler.next();
    await model.step(b.inputs, b.targets, { lr: 1e-3 });
  }
  const batches = Array.from({ length: steps }, () => sampler.next());
  // One step at a time, each loss awaited before the next submit: what a loop that reads
  // every loss at once pays.
  let t0 = performance.now();
  for (const b of batches) await model.step(b.inputs, b.targets, { lr: 1e-3 });
  const syncSeconds = (performance.now() - t0) / 1000;
  // As the trainers and `deno task train` run: two steps in flight.
  t0 = performance.now();
  await pipelinedSteps(model, steps, (i) => ({ ...batches[i], lr: 1e-3 }));
  const seconds = (performance.now() - t0) / 1000;
  const common = {
    config: name,
    shape: describeConfig(config),
    params: model.paramCount,
    batch,
    steps,
    adapter: gpu.adapter.description,
    backend: gpu.adapter.backend,
  };
  yield {
    name: "train_step_tokens_per_s",
    value: (steps * tokens) / seconds,
    unit: "tokens/s",
    ...common,
  };
  yield { name: "train_step_ms", value: (seconds * 1000) / steps, unit: "ms", ...common };
  yield {
    name: "train_step_ms_unpipelined",
    value: (syncSeconds * 1000) / steps,
    unit: "ms",
    note: "each loss read back before the next step is submitted",
    ...common,
  };
  yield {
    name: "train_step_gflops",
    value: (steps * flops) / seconds / 1e9,
    unit: "GFLOP/s",
    flops_per_step: flops,
    flop_formula: "6*(params-T*C)*tokens + 12*L*C*T*tokens",
    ...common,
  };
  model.dispose();
}

/**
 * A model of the named config ready to time: `measure(steps)` runs that many
 * pipelined steps on fixed random batches and returns their GFLOP/s. For
 * ratios against other kernels timed right before or after it.
 */
export async function openStepTimer(gpu: Gpu, name: string): Promise<{
  measure(steps: number): Promise<number>;
  close(): void;
}> {
  const { model, sampler, flops } = await benchModel(gpu, name);
  const batch = sampler.next();
  await pipelinedSteps(model, 2, () => ({ ...batch, lr: 1e-3 })); // compile and warm
  return {
    async measure(steps: number): Promise<number> {
      const t0 = performance.now();
      await pipelinedSteps(model, steps, () => ({ ...batch, lr: 1e-3 }));
      return (steps * flops) / ((performance.now() - t0) / 1000) / 1e9;
    },
    close: () => model.dispose(),
  };
}
