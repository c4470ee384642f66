/**
 * `deno task eval --checkpoint FILE [--data FILE] [--max-windows N] [--json]`:
 * the evaluation loss of a checkpoint, in nats/byte: the mean next-byte
 * cross-entropy over the data cut into windows of block_size+1 bytes at
 * offsets 0, T, 2T, ... (a trailing short window is dropped), at most N
 * windows. The default data is the default corpus's validation split.
 * With `--json` the last stdout line is `{"eval_loss": ..., "windows": ...}`.
 *
 * @module
 */
import {
  asUsageError,
  type Command,
  intFlag,
  parseFlags,
  PRECISION_FLAG,
  precisionFlag,
  readInput,
  runCommand,
  UsageError,
} from "./cli.ts";
import { CONFIGS, getConfig, type GptConfig } from "./config.ts";
import { SHAPE_FIELDS, shapeFlags, shapeFlagSpecs, type ShapeOverrides } from "./shape.ts";
import { DataError } from "./data.ts";
import { loadCorpus } from "./corpus.ts";
import { acquireGpu } from "./device.ts";
import { evaluate } from "./evaluate.ts";
import { createModel } from "./model.ts";
import type { Precision } from "./model_options.ts";
import { loadGpt2 } from "../checkpoint/gpt2_safetensors.ts";

/** The command line of `deno task eval`. */
export const EVAL_COMMAND = {
  prog: "eval",
  usage: "deno task eval --checkpoint FILE [flags]",
  about: "Prints the mean next-byte cross-entropy (nats/byte) of a checkpoint.",
  flags: {
    checkpoint: {
      value: "FILE",
      help: "model.safetensors written by deno task train (required)",
    },
    data: {
      value: "FILE",
      help: "bytes to evaluate (default: the default corpus's validation split)",
    },
    "max-windows": {
      value: "N",
      help: "evaluate at most the first N windows of block_size+1 bytes",
    },
    config: {
      value: "NAME",
      help: `fail unless the checkpoint has this config (known: ${
        Object.keys(CONFIGS).join(", ")
      })`,
    },
    ...shapeFlagSpecs("(must match the checkpoint)"),
    batch: {
      value: "N",
      help: "windows per forward pass (default 16; does not change the result)",
    },
    ...PRECISION_FLAG,
    json: { type: "boolean", help: 'print {"eval_loss": ..., "windows": ...} as the last line' },
  },
} as const satisfies Command;

/** Parsed options of `deno task eval`. */
export interface EvalArgs {
  checkpoint?: string;
  data?: string;
  maxWindows?: number;
  configName?: string;
  /** Shape flags: each must match the checkpoint's config. */
  shape: ShapeOverrides;
  batch: number;
  /** The matmul inputs' precision; undefined: the model's default for the adapter. */
  precision?: Precision;
  json: boolean;
  help: boolean;
}

/** Parses the command line of `deno task eval`. */
export function parseEvalArgs(args: string[]): EvalArgs {
  const v = parseFlags(EVAL_COMMAND, args);
  let shape: ShapeOverrides;
  try {
    shape = shapeFlags(v);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const out: EvalArgs = {
    checkpoint: v.checkpoint,
    shape,
    data: v.data,
    maxWindows: intFlag("max-windows", v["max-windows"]),
    configName: v.config,
    batch: intFlag("batch", v.batch) ?? 16,
    precision: precisionFlag(v.precision),
    json: v.json ?? false,
    help: v.help ?? false,
  };
  if (!out.help && !out.checkpoint) throw new UsageError("Missing --checkpoint FILE (see --help)");
  if (out.configName !== undefined) {
    try {
      getConfig(out.configName);
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err));
    }
  }
  return out;
}

async function readData(path: string): Promise<Uint8Array> {
  try {
    const info = await Deno.stat(path);
    if (!info.isFile) throw new DataError(`Cannot load data: ${path} is not a file`);
    return await Deno.readFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new DataError(`Cannot load data: ${path} does not exist`);
    }
    throw err;
  }
}

/**
 * Refuses, by flag, a shape flag of `deno task eval` that disagrees with the
 * checkpoint's config (`Invalid --n-layer: 4, the checkpoint has n_layer 2`).
 *
 * @example
 * ```ts
 * import { checkShapeFlags } from "./eval_main.ts";
 * import { throws } from "@std/assert";
 * const c = { nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: 256 };
 * throws(() => checkShapeFlags({ nLayer: 4 }, c, "model.safetensors"), /Invalid --n-layer: 4/);
 * ```
 */
export function checkShapeFlags(shape: ShapeOverrides, config: GptConfig, file: string): void {
  for (const { field, flag } of SHAPE_FIELDS) {
    const want = shape[field];
    if (want !== undefined && want !== config[field]) {
      const hf = { nLayer: "n_layer", nHead: "n_head", nEmbd: "n_embd", blockSize: "n_ctx" }[field];
      throw new UsageError(
        `Invalid --${flag}: ${want}, the checkpoint ${file} has ${hf} ${config[field]}`,
      );
    }
  }
}

/** The checkpoint and the data `a` names, checked: what fails here is the input's fault. */
async function readEvalInput(a: EvalArgs) {
  const expect = a.configName ? getConfig(a.configName).model : undefined;
  const ckpt = await loadGpt2(a.checkpoint!, {
    expect: expect && { ...expect, ...a.shape },
  });
  checkShapeFlags(a.shape, ckpt.config, a.checkpoint!);
  const bytes = a.data ? await readData(a.data) : (await loadCorpus()).val;
  return { ckpt, bytes };
}

async function main(a: EvalArgs, input: Awaited<ReturnType<typeof readEvalInput>>): Promise<void> {
  const { ckpt, bytes } = input;
  const source = a.data ?? "default corpus validation split";
  const gpu = await acquireGpu();
  try {
    const model = await createModel(gpu, ckpt.config, { batch: a.batch, precision: a.precision })
      .catch((err) => {
        throw asUsageError(err);
      });
    model.setParams(ckpt.params);
    const r = await evaluate(model, bytes, { maxWindows: a.maxWindows, selection: "first" });
    model.dispose();
    if (a.json) {
      console.log(JSON.stringify({ eval_loss: r.loss, windows: r.windows }));
    } else {
      console.log(
        `eval loss ${r.loss.toFixed(6)} nats/byte over ${r.windows} windows ` +
          `(${r.tokens} bytes predicted) of ${source}`,
      );
    }
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) {
  await runCommand(EVAL_COMMAND, Deno.args, async () => {
    const args = parseEvalArgs(Deno.args);
    await main(args, await readInput(() => readEvalInput(args)));
  });
}
