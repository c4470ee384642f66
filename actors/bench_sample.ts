/**
 * The `sample` bench suite (`deno task bench --only sample`): what a run's
 * text sample costs the trainer that writes it, beside the evaluation it
 * comes with, and how well the first sample's pacing estimate (one forward
 * pass of the evaluation times the sample's bytes) predicts it.
 *
 * In a trainer's compute Worker (the default config; `tiny` with `--quick`)
 * it times, three times each, the 64-window evaluation alone (the baseline,
 * same process) and with the run's default sample of 64 bytes
 * (kernels/sample.ts `DEFAULT_TEXT_SAMPLE`); the records are the medians.
 *
 * @module
 */
import { TrainerWorkerClient } from "./trainer_worker_client.ts";
import { engineSettings } from "./run_settings.ts";
import { DEFAULT_CONFIG } from "../kernels/config.ts";
import { textSample } from "../kernels/sample.ts";
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";

const REPEATS = 3;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** The suite. */
export async function* bench(options: BenchOptions): AsyncGenerator<BenchRecord> {
  const config = options.quick ? "tiny" : DEFAULT_CONFIG;
  const sample = textSample();
  const engine = engineSettings({
    run: "bench",
    config,
    rounds: 10,
    innerSteps: 10,
    outer: { lr: 1, momentum: 0 },
  });
  const worker = new TrainerWorkerClient({ onError: (m) => console.error(m) });
  const evalMs: number[] = [];
  const sampleMs: number[] = [];
  const forwardMs: number[] = [];
  try {
    const init = await worker.call({ op: "init", ...engine, dataShard: { index: 0, count: 16 } });
    const theta = init.params as Float32Array;
    for (let i = 0; i < REPEATS; i++) {
      const plain = await worker.call({ op: "eval", theta, maxWindows: 64 });
      evalMs.push(plain.ms as number);
      const withSample = await worker.call({ op: "eval", theta, maxWindows: 64, sample });
      sampleMs.push(withSample.sampleMs as number);
      forwardMs.push(withSample.forwardMs as number);
    }
  } finally {
    await worker.retire();
  }
  const base = { config, batch: engine.batch, bytes: sample.tokens };
  const evaluation = median(evalMs);
  const writing = median(sampleMs);
  const forward = median(forwardMs);
  yield { name: "eval_64_windows_ms", value: evaluation, unit: "ms", ...base, baseline: true };
  yield { name: "sample_ms", value: writing, unit: "ms", ...base };
  yield { name: "sample_ms_per_byte", value: writing / sample.tokens, unit: "ms", ...base };
  yield { name: "sample_vs_eval", value: writing / evaluation, unit: "ratio", ...base };
  yield { name: "eval_forward_ms", value: forward, unit: "ms", ...base };
  // Above 1 the first sample comes later than its share allows, below 1 sooner.
  yield {
    name: "sample_estimate_vs_measured",
    value: (forward * sample.tokens) / writing,
    unit: "ratio",
    ...base,
  };
}
