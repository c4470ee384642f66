/**
 * `deno task sample --checkpoint FILE [--prompt TEXT] [--tokens N]
 * [--temperature T] [--top-k K] [--seed S] [--json]`: text from a checkpoint.
 * The prompt's UTF-8 bytes are continued by N bytes generated on WebGPU
 * (kernels/sample.ts); the text goes to stdout as it comes, decoded as UTF-8
 * with U+FFFD for invalid sequences, and the speed to stderr. With `--json`
 * stdout is one line: `{"prompt", "text", "tokens", "tokens_per_s", ...}`.
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
import { acquireGpu } from "./device.ts";
import { createModel } from "./model.ts";
import type { Precision } from "./model_options.ts";
import { bytesToText, generate } from "./sample.ts";
import { loadGpt2 } from "../checkpoint/gpt2_safetensors.ts";

/** The command line of `deno task sample`. */
export const SAMPLE_COMMAND = {
  prog: "sample",
  usage: "deno task sample --checkpoint FILE [flags]",
  about: "Continues a prompt with bytes sampled from a checkpoint, on WebGPU.",
  flags: {
    checkpoint: {
      value: "FILE",
      help: "model.safetensors written by deno task train (required)",
    },
    prompt: {
      value: "TEXT",
      help: "text to continue, as UTF-8 bytes (default: a newline); only its last\n" +
        "block_size bytes condition the first new byte",
    },
    tokens: { value: "N", help: "bytes to generate (default 200)" },
    temperature: {
      value: "T",
      help: "softmax temperature, >= 0 (default 1; 0 = always the most likely byte)",
    },
    "top-k": { value: "K", help: "draw from the K most likely bytes only (default 0: from all)" },
    seed: { value: "N", help: "sampling seed (default 1): the same seed gives the same text" },
    ...PRECISION_FLAG,
    json: { type: "boolean", help: "print one JSON line with the prompt, the text and the speed" },
  },
} as const satisfies Command;

/** Parsed options of `deno task sample`. */
export interface SampleArgs {
  checkpoint?: string;
  /** The prompt's bytes. */
  prompt: Uint8Array;
  tokens: number;
  temperature: number;
  topK: number;
  seed: number;
  /** The matmul inputs' precision; undefined: the model's default for the adapter. */
  precision?: Precision;
  json: boolean;
  help: boolean;
}

/**
 * Parses the command line of `deno task sample`; bad input is a UsageError.
 *
 * @example
 * ```ts
 * import { parseSampleArgs } from "./sample_main.ts";
 * import { throws } from "@std/assert";
 * throws(() => parseSampleArgs(["--checkpoint", "m.safetensors", "--temperature", "-1"]));
 * ```
 */
export function parseSampleArgs(args: string[]): SampleArgs {
  const v = parseFlags(SAMPLE_COMMAND, args);
  const temperature = v.temperature === undefined ? 1 : Number(v.temperature);
  if (v.temperature?.trim() === "" || !Number.isFinite(temperature) || temperature < 0) {
    throw new UsageError(
      `Invalid --temperature: ${JSON.stringify(v.temperature)} (expected a number >= 0)`,
    );
  }
  if (v.prompt === "") {
    throw new UsageError("Invalid --prompt: empty (the model needs at least one byte to continue)");
  }
  const out: SampleArgs = {
    checkpoint: v.checkpoint,
    prompt: new TextEncoder().encode(v.prompt ?? "\n"),
    tokens: intFlag("tokens", v.tokens) ?? 200,
    temperature,
    topK: intFlag("top-k", v["top-k"], 0) ?? 0,
    seed: intFlag("seed", v.seed, 0) ?? 1,
    precision: precisionFlag(v.precision),
    json: v.json ?? false,
    help: v.help ?? false,
  };
  if (!out.help && !out.checkpoint) throw new UsageError("Missing --checkpoint FILE (see --help)");
  return out;
}

/** The checkpoint `a` names, checked: what fails here is the input's fault. */
async function readCheckpoint(a: SampleArgs) {
  const ckpt = await loadGpt2(a.checkpoint!);
  if (ckpt.config.vocabSize > 256) {
    throw new UsageError(
      `Cannot sample text: ${a.checkpoint} has a vocabulary of ${ckpt.config.vocabSize}, not bytes`,
    );
  }
  return ckpt;
}

async function main(
  a: SampleArgs,
  ckpt: Awaited<ReturnType<typeof readCheckpoint>>,
): Promise<void> {
  const gpu = await acquireGpu();
  try {
    const model = await createModel(gpu, ckpt.config, { batch: 1, precision: a.precision })
      .catch((err) => {
        throw asUsageError(err);
      });
    model.setParams(ckpt.params);
    // Stream the text as it comes; the decoder holds back a partial UTF-8 sequence.
    const decoder = new TextDecoder();
    const write = (bytes: Uint8Array) => {
      if (!a.json) {
        Deno.stdout.writeSync(new TextEncoder().encode(decoder.decode(bytes, { stream: true })));
      }
    };
    write(a.prompt);
    const out = await generate(model, a.prompt, {
      tokens: a.tokens,
      temperature: a.temperature,
      topK: a.topK,
      seed: a.seed,
      onToken: (t) => write(Uint8Array.of(t)),
    });
    model.dispose();
    const tokensPerS = a.tokens / out.seconds;
    if (a.json) {
      console.log(JSON.stringify({
        prompt: bytesToText(a.prompt),
        text: bytesToText(out.tokens),
        tokens: a.tokens,
        temperature: a.temperature,
        top_k: a.topK,
        seed: a.seed,
        tokens_per_s: tokensPerS,
        adapter: gpu.adapter.description,
      }));
    } else {
      Deno.stdout.writeSync(new TextEncoder().encode(decoder.decode() + "\n"));
      console.error(
        `sample: ${a.tokens} bytes in ${out.seconds.toFixed(2)} s (${
          tokensPerS.toFixed(1)
        } bytes/s) on ${gpu.adapter.description}`,
      );
    }
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) {
  await runCommand(SAMPLE_COMMAND, Deno.args, async () => {
    const args = parseSampleArgs(Deno.args);
    await main(args, await readInput(() => readCheckpoint(args)));
  });
}
