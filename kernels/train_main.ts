/**
 * `deno task train [flags]`: trains a GPT-2 style byte-level model on WebGPU
 * and writes `DIR/model.safetensors` (Hugging Face GPT-2 names).
 *
 * With no flags it trains the "small" config on the default corpus (the State
 * of the Union addresses) for that config's default steps, with linear warmup
 * then cosine decay to 10% of the peak learning rate, AdamW betas (0.9, 0.95),
 * weight decay 0.1 on 2-D tensors, gradient clipping at norm 1. Progress goes
 * to stderr on one updating line (a plain line every 10 s when stderr is not a
 * terminal), or with `--json` to stdout as one JSON object per line.
 *
 * @module
 */
import {
  asUsageError,
  type Command,
  intFlag,
  numberFlag,
  parseFlags,
  PRECISION_FLAG,
  precisionFlag,
  ProgressLine,
  readInput,
  runCommand,
  TUNE_FLAGS,
  tuneFileFlag,
  UsageError,
} from "./cli.ts";
import { loadTuner, saveTuner, tunedEvent, tunedText } from "./matmul_tune_file.ts";
import { CONFIGS, DEFAULT_CONFIG, describeConfig, getConfig, type GptConfig } from "./config.ts";
import { resolveShape, SHAPE_FLAGS, shapeFlags } from "./shape.ts";
import { batchSampler, type Corpus } from "./data.ts";
import { loadCorpus } from "./corpus.ts";
import { acquireGpu, type Gpu } from "./device.ts";
import { evaluate } from "./evaluate.ts";
import { createModel } from "./model.ts";
import type { Precision } from "./model_options.ts";
import { pipelinedSteps } from "./pipeline.ts";
import { bytesToText, generate } from "./sample.ts";
import { saveGpt2 } from "../checkpoint/gpt2_safetensors.ts";

/** The command line of `deno task train`. */
export const TRAIN_COMMAND = {
  prog: "train",
  usage: "deno task train [flags]",
  about: "Trains a byte-level GPT-2 on WebGPU and writes DIR/model.safetensors.",
  flags: {
    config: {
      value: "NAME",
      help: `model config (default ${DEFAULT_CONFIG}; known: ${
        Object.keys(CONFIGS).join(", ")
      });\nthe shape flags below override its fields`,
    },
    ...SHAPE_FLAGS,
    steps: {
      value: "N",
      help: `optimizer steps (default: the config's, ${
        CONFIGS[DEFAULT_CONFIG].train.steps
      } for ${DEFAULT_CONFIG})`,
    },
    data: {
      value: "PATH",
      help: "text file or folder of files (default: the State of the Union corpus)",
    },
    out: { value: "DIR", help: "output folder (default runs/train)" },
    seed: { value: "N", help: "init and sampling seed (default 1)" },
    lr: {
      help: `peak learning rate (default: the config's, ${
        CONFIGS[DEFAULT_CONFIG].train.lr
      } for ${DEFAULT_CONFIG})`,
    },
    warmup: { value: "N", help: "linear warmup steps (default: the config's)" },
    batch: { value: "N", help: "sequences per micro-batch (default: the config's)" },
    "grad-accum": {
      value: "N",
      help: "micro-batches per step, gradients summed before one AdamW update\n" +
        "(default 1): a step trains on N × batch sequences",
    },
    "eval-every": {
      value: "N",
      help: "steps between validation evaluations (default: the config's; 0 = only at the end)",
    },
    "eval-windows": {
      value: "N",
      help: "validation windows per evaluation, spread over the split (default 1024)",
    },
    "sample-bytes": {
      value: "N",
      help: "bytes sampled after a newline at each evaluation, with the seed of --seed\n" +
        "(default 100; 0 = none)",
    },
    ...PRECISION_FLAG,
    ...TUNE_FLAGS,
    json: {
      type: "boolean",
      help: "one JSON object per line on stdout instead of the progress line",
    },
  },
} as const satisfies Command;

/** Parsed training options. */
export interface TrainArgs {
  configName: string;
  /** The model shape: the named config's with the shape flags applied. */
  config: GptConfig;
  /** Micro-batches per step. */
  gradAccum: number;
  steps: number;
  data?: string;
  out: string;
  seed: number;
  lr: number;
  warmup: number;
  batch: number;
  evalEvery: number;
  evalWindows: number;
  sampleBytes: number;
  /** The matmul inputs' precision; undefined: the model's default for the adapter. */
  precision?: Precision;
  /** With --tune-matmuls: the file of the matmul tuning table. */
  tuneFile?: string;
  json: boolean;
  help: boolean;
}

/** Parses the command line of `deno task train`. */
export function parseTrainArgs(args: string[]): TrainArgs {
  const v = parseFlags(TRAIN_COMMAND, args);
  const configName = v.config ?? DEFAULT_CONFIG;
  let named;
  let config;
  try {
    named = getConfig(configName);
    config = resolveShape(configName, shapeFlags(v));
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const d = named.train;
  const steps = intFlag("steps", v.steps) ?? d.steps;
  const out = {
    configName,
    config,
    gradAccum: intFlag("grad-accum", v["grad-accum"]) ?? 1,
    steps,
    data: v.data,
    out: v.out ?? "runs/train",
    seed: intFlag("seed", v.seed, 0) ?? 1,
    lr: numberFlag("lr", v.lr, { min: 0, max: 10 }) ?? d.lr,
    warmup: intFlag("warmup", v.warmup, 0) ?? Math.min(d.warmup, steps),
    batch: intFlag("batch", v.batch) ?? d.batch,
    evalEvery: intFlag("eval-every", v["eval-every"], 0) ?? d.evalEvery,
    evalWindows: intFlag("eval-windows", v["eval-windows"]) ?? 1024,
    sampleBytes: intFlag("sample-bytes", v["sample-bytes"], 0) ?? 100,
    precision: precisionFlag(v.precision),
    tuneFile: tuneFileFlag(v["tune-matmuls"], v["tune-file"]),
    json: v.json ?? false,
    help: v.help ?? false,
  };
  if (out.data !== undefined && out.data.trim() === "") {
    throw new UsageError("Invalid --data: empty path");
  }
  if (out.out.trim() === "") throw new UsageError("Invalid --out: empty path");
  return out;
}

/** Learning rate at `step` (0-based): linear warmup, then cosine decay to 10% of the peak. */
export function learningRate(
  step: number,
  a: { lr: number; warmup: number; steps: number },
): number {
  if (step < a.warmup) return (a.lr * (step + 1)) / a.warmup;
  const span = Math.max(1, a.steps - a.warmup);
  const progress = Math.min(1, (step - a.warmup) / span);
  const min = a.lr * 0.1;
  return min + 0.5 * (a.lr - min) * (1 + Math.cos(Math.PI * progress));
}

function fmtRate(x: number): string {
  return Math.round(x).toLocaleString("en-US");
}

/**
 * The training text of `a`, checked, and the output folder, made: what fails
 * here is the input's fault (exit 2), found before any step is trained.
 */
async function readTrainInput(a: TrainArgs): Promise<Corpus> {
  const corpus = await loadCorpus({ path: a.data });
  if (corpus.val.length < a.config.blockSize + 1) {
    throw new RangeError(
      `Cannot train: the validation split of ${corpus.source} has ${corpus.val.length} bytes, ` +
        `fewer than block size + 1 = ${a.config.blockSize + 1}`,
    );
  }
  try {
    await Deno.mkdir(a.out, { recursive: true });
  } catch (err) {
    throw new UsageError(
      `Cannot write --out ${a.out}: ${err instanceof Error ? err.message : err}`,
    );
  }
  return corpus;
}

async function train(a: TrainArgs, corpus: Corpus): Promise<void> {
  const config = a.config;
  const log = (obj: Record<string, unknown>) => {
    if (a.json) console.log(JSON.stringify(obj));
  };
  // A plain line every 10 s when stderr is a file or pipe, rather than one per step.
  const progress = new ProgressLine({ plainEvery: 10 });
  const status = (line: string, final = false) => {
    if (a.json) return;
    if (final) progress.done(line);
    else progress.update(line);
  };
  const gpu: Gpu = await acquireGpu();
  try {
    const file = a.tuneFile;
    const tuner = file === undefined ? undefined : await readInput(() =>
      loadTuner(file, {
        onResult: (r) => {
          log(tunedEvent(r));
          status(tunedText(r));
        },
      })
    );
    const model = await createModel(gpu, config, {
      seed: a.seed,
      batch: a.batch,
      gradAccum: a.gradAccum,
      precision: a.precision,
      matmulTuner: tuner,
    }).catch((err) => {
      // A shape or precision the device cannot hold is the flags' fault: exit 2.
      throw asUsageError(err);
    });
    if (tuner && tuner.results().length > 0) await saveTuner(a.tuneFile!, tuner);
    // A step's N micro-batches are the rows of one N × batch draw: the same data as one batch
    // of that size.
    const sampler = batchSampler(corpus.train, {
      batch: a.batch * a.gradAccum,
      blockSize: config.blockSize,
      seed: a.seed,
    });
    const header = {
      event: "start",
      config: a.configName,
      shape: describeConfig(config),
      params: model.paramCount,
      batch: a.batch,
      grad_accum: a.gradAccum,
      precision: model.precision,
      attention: model.attention,
      ...(model.attention === "flash" ? { flash_key_pass: model.flashKeyPass } : {}),
      ...(a.tuneFile !== undefined
        ? { tune_file: a.tuneFile, shapes_measured: tuner!.results().length }
        : {}),
      steps: a.steps,
      lr: a.lr,
      warmup: a.warmup,
      data: corpus.source,
      train_bytes: corpus.train.length,
      val_bytes: corpus.val.length,
      adapter: gpu.adapter.description,
      backend: gpu.adapter.backend,
    };
    if (a.json) log(header);
    else {
      console.error(
        `train: ${a.configName} (${describeConfig(config)}, ${
          model.paramCount.toLocaleString("en-US")
        } params), ` +
          `batch ${a.batch}${
            a.gradAccum > 1 ? ` × ${a.gradAccum} micro-batches` : ""
          }, ${model.describeKernels()}, ${a.steps} steps, lr ${a.lr}, data ${corpus.source} ` +
          `(${corpus.train.length.toLocaleString("en-US")} train / ${
            corpus.val.length.toLocaleString("en-US")
          } val bytes), ` +
          `WebGPU ${gpu.adapter.description}`,
      );
    }
    const evalOpts = { maxWindows: a.evalWindows, selection: "spread" as const };
    // Samples run on a batch-1 copy: the training batch's other rows would cost ~2.5x per byte.
    const twin = a.sampleBytes > 0
      ? await createModel(gpu, config, { batch: 1, precision: model.precision })
      : undefined;
    const sample = async (step: number): Promise<{ sample?: string }> => {
      if (!twin) return {};
      twin.setParams(await model.getParams());
      const out = await generate(twin, new Uint8Array([10]), {
        tokens: a.sampleBytes,
        seed: a.seed,
      });
      const text = bytesToText(out.tokens);
      status(`sample @${step}: ${JSON.stringify(text)}`, true);
      return { sample: text };
    };
    // Every micro-batch counts.
    const tokensPerStep = model.tokensPerStep;
    const t0 = performance.now();
    let stepTime = 0;
    let lastVal = NaN;
    let lastValStep = -1;
    let loss = NaN;
    // Steps run two in flight (pipelinedSteps) in segments that end at each evaluation, so an
    // evaluation sees exactly the parameters after its step.
    for (let from = 0; from < a.steps;) {
      const to = a.evalEvery > 0
        ? Math.min(a.steps, (Math.floor(from / a.evalEvery) + 1) * a.evalEvery)
        : a.steps;
      const ts = performance.now();
      const lrs: number[] = [];
      await pipelinedSteps(model, to - from, (i) => {
        lrs[i] = learningRate(from + i, a);
        return { ...sampler.next(), lr: lrs[i] };
      }, (i, stepLoss) => {
        loss = stepLoss;
        const done = from + i + 1;
        if (!Number.isFinite(loss)) {
          throw new Error(`Training diverged: loss ${loss} at step ${done} (try a lower --lr)`);
        }
        const tokS = (done * tokensPerStep) / ((stepTime + performance.now() - ts) / 1000);
        const elapsed = (performance.now() - t0) / 1000;
        log({
          step: done,
          loss,
          lr: lrs[i],
          grad_norm: model.lastGradNorm,
          tokens_per_s: tokS,
          elapsed_s: elapsed,
        });
        const val = lastValStep > 0 ? ` | val ${lastVal.toFixed(4)} @${lastValStep}` : "";
        status(
          `step ${done}/${a.steps} | loss ${loss.toFixed(4)} | lr ${lrs[i].toExponential(2)} | ` +
            `${fmtRate(tokS)} tok/s | ${elapsed.toFixed(0)} s${val}`,
        );
      });
      stepTime += performance.now() - ts;
      from = to;
      if (a.evalEvery > 0 && to % a.evalEvery === 0 && to < a.steps) {
        lastVal = (await evaluate(model, corpus.val, evalOpts)).loss;
        lastValStep = to;
        const elapsed = (performance.now() - t0) / 1000;
        log({ step: to, val_loss: lastVal, elapsed_s: elapsed, ...await sample(to) });
      }
    }
    const final = await evaluate(model, corpus.val, evalOpts);
    const finalSample = await sample(a.steps);
    twin?.dispose();
    const elapsed = (performance.now() - t0) / 1000;
    const tokS = (a.steps * tokensPerStep) / (stepTime / 1000);
    await Deno.mkdir(a.out, { recursive: true });
    const path = `${a.out.replace(/\/$/, "")}/model.safetensors`;
    await saveGpt2(path, config, await model.getParams(), {
      metadata: {
        config_name: a.configName,
        grad_accum: String(a.gradAccum),
        step: String(a.steps),
        seed: String(a.seed),
        val_loss: String(final.loss),
        data: corpus.source,
        data_cursor: JSON.stringify(sampler.cursor),
      },
    });
    model.dispose();
    status(
      `step ${a.steps}/${a.steps} | loss ${loss.toFixed(4)} | ${fmtRate(tokS)} tok/s | ` +
        `${elapsed.toFixed(1)} s | val ${
          final.loss.toFixed(4)
        } (${final.windows} windows) | saved ${path}`,
      true,
    );
    log({
      event: "done",
      steps: a.steps,
      loss,
      val_loss: final.loss,
      val_windows: final.windows,
      tokens_per_s: tokS,
      elapsed_s: elapsed,
      checkpoint: path,
      ...finalSample,
    });
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) {
  await runCommand(TRAIN_COMMAND, Deno.args, async () => {
    const args = parseTrainArgs(Deno.args);
    await train(args, await readInput(() => readTrainInput(args)));
  });
}
