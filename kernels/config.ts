/**
 * Model configurations by name, with validation. A configuration fixes the
 * GPT-2 shape (layers, width, heads, context, vocabulary) and the training
 * defaults that go with it (batch, learning rate, steps).
 *
 * @module
 */

/** The shape of a GPT-2 style decoder. */
export interface GptConfig {
  /** Number of transformer blocks. */
  nLayer: number;
  /** Number of attention heads; must divide `nEmbd`. */
  nHead: number;
  /** Model width (channels). */
  nEmbd: number;
  /** Context length T (maximum sequence length). */
  blockSize: number;
  /** Vocabulary size; 256 for byte-level text. */
  vocabSize: number;
}

/** Training defaults that go with a named configuration. */
export interface TrainDefaults {
  /** Sequences per step. */
  batch: number;
  /** Peak learning rate (after warmup). */
  lr: number;
  /** Optimizer steps of a default run. */
  steps: number;
  /** Linear warmup steps before the cosine decay. */
  warmup: number;
  /** Steps between validation-loss evaluations. */
  evalEvery: number;
}

/** A named configuration: the model shape plus its training defaults. */
export interface NamedConfig {
  /** The name used with `--config`. */
  name: string;
  /** One line for `--help`. */
  description: string;
  /** The model's shape. */
  model: GptConfig;
  /** The training defaults. */
  train: TrainDefaults;
}

const BYTE_VOCAB = 256;

/**
 * The known configurations. "small" is the default of `deno task train`;
 * "tiny" is for gradient checks and fast tests.
 */
export const CONFIGS: Readonly<Record<string, NamedConfig>> = Object.freeze({
  tiny: {
    name: "tiny",
    description: "2 layers, width 16, 2 heads, context 8 (tests and gradient checks)",
    model: { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: BYTE_VOCAB },
    train: { batch: 2, lr: 3e-3, steps: 50, warmup: 5, evalEvery: 25 },
  },
  small: {
    name: "small",
    description: "2 layers, width 64, 4 heads, context 64, batch 16 (the default, ~120k params)",
    model: { nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: BYTE_VOCAB },
    train: { batch: 16, lr: 6e-3, steps: 400, warmup: 30, evalEvery: 100 },
  },
  medium: {
    name: "medium",
    description: "4 layers, width 128, 4 heads, context 128, batch 16 (~0.8M params)",
    model: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: BYTE_VOCAB },
    train: { batch: 16, lr: 3e-3, steps: 2000, warmup: 100, evalEvery: 200 },
  },
  large: {
    name: "large",
    description: "6 layers, width 256, 8 heads, context 256, batch 16 (~4.8M params)",
    model: { nLayer: 6, nHead: 8, nEmbd: 256, blockSize: 256, vocabSize: BYTE_VOCAB },
    train: { batch: 16, lr: 1e-3, steps: 5000, warmup: 200, evalEvery: 250 },
  },
  // GPT-2 small's depth, width and heads over bytes (85.4M parameters: the byte vocabulary
  // and the shorter context drop most of GPT-2's 124M embedding parameters). Context
  // 256, not GPT-2's 1024: the CPU adapters' attention keeps a [B, NH, T, T] scratch per layer,
  // which at T = 256 and batch 16 is 48 MiB and fits llvmpipe's 128 MiB binding (at T = 1024 it is
  // 768 MiB, and batch 2 is the most that fits); it is also the shape measured against PyTorch on
  // an H200 (PLATFORM.md). `--block-size 1024` gives GPT-2's context where the memory allows.
  "gpt2-small": {
    name: "gpt2-small",
    description: "12 layers, width 768, 12 heads, context 256, batch 16 (GPT-2 small, ~85M params)",
    model: { nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 256, vocabSize: BYTE_VOCAB },
    train: { batch: 16, lr: 6e-4, steps: 5000, warmup: 200, evalEvery: 250 },
  },
});

/** The configuration `deno task train` uses without `--config`. */
export const DEFAULT_CONFIG = "small";

/**
 * Looks up a named configuration.
 *
 * @example
 * ```ts
 * import { getConfig } from "./config.ts";
 * const { model } = getConfig("small");
 * console.log(model.nEmbd); // 64
 * ```
 *
 * @throws {RangeError} if the name is unknown (the message lists the known names)
 */
export function getConfig(name: string): NamedConfig {
  const config = Object.hasOwn(CONFIGS, name) ? CONFIGS[name] : undefined;
  if (!config) {
    throw new RangeError(
      `Unknown model config: "${name}" (known: ${Object.keys(CONFIGS).join(", ")})`,
    );
  }
  return config;
}

function checkInt(name: string, value: unknown, min: number, max: number): void {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(
      `Invalid model config: ${name} must be an integer in [${min}, ${max}], got ${
        JSON.stringify(value)
      }`,
    );
  }
}

/**
 * Checks a model shape and returns it; throws a RangeError naming the bad field.
 *
 * @example
 * ```ts
 * import { validateConfig } from "./config.ts";
 * import { throws } from "@std/assert";
 * throws(() => validateConfig({ nLayer: 2, nHead: 3, nEmbd: 64, blockSize: 64, vocabSize: 256 }));
 * ```
 */
export function validateConfig(config: GptConfig): GptConfig {
  if (typeof config !== "object" || config === null) {
    throw new TypeError("Invalid model config: expected an object");
  }
  checkInt("nLayer", config.nLayer, 1, 256);
  checkInt("nHead", config.nHead, 1, 256);
  checkInt("nEmbd", config.nEmbd, 1, 16384);
  checkInt("blockSize", config.blockSize, 1, 16384);
  checkInt("vocabSize", config.vocabSize, 2, 1 << 20);
  if (config.nEmbd % config.nHead !== 0) {
    throw new RangeError(
      `Invalid model config: nEmbd (${config.nEmbd}) must be divisible by nHead (${config.nHead})`,
    );
  }
  return config;
}

/** True when two model shapes are identical. */
export function sameConfig(a: GptConfig, b: GptConfig): boolean {
  return a.nLayer === b.nLayer && a.nHead === b.nHead && a.nEmbd === b.nEmbd &&
    a.blockSize === b.blockSize && a.vocabSize === b.vocabSize;
}

/** A short human-readable form, e.g. `L2 C64 H4 T64 V256`. */
export function describeConfig(c: GptConfig): string {
  return `L${c.nLayer} C${c.nEmbd} H${c.nHead} T${c.blockSize} V${c.vocabSize}`;
}
