/**
 * The model's flat parameter vector to and from a safetensors file in Hugging
 * Face GPT-2 names and layouts: `wte.weight` [V,C], `wpe.weight` [T,C],
 * `h.{i}.ln_1.weight`/`bias` [C], `h.{i}.attn.c_attn.weight` [C,3C] (q,k,v
 * column blocks) / `bias` [3C], `h.{i}.attn.c_proj.weight` [C,C] / `bias`,
 * `h.{i}.ln_2.*`, `h.{i}.mlp.c_fc.weight` [C,4C] / `bias` [4C],
 * `h.{i}.mlp.c_proj.weight` [4C,C] / `bias`, `ln_f.weight`/`bias`. Linear
 * weights are stored [in, out] (HF's Conv1D); the output head is tied to
 * `wte.weight` and not stored. `__metadata__.config` holds the shape as JSON
 * `{n_layer, n_head, n_embd, block_size, vocab_size}`.
 *
 * @module
 */
import { type GptConfig, sameConfig, validateConfig } from "../kernels/config.ts";
import { buildLayout, type ParamLayout } from "../kernels/layout.ts";
import {
  readSafetensors,
  SafetensorsError,
  type SafetensorsFile,
  type TensorInput,
  tensorToFloat32,
  writeSafetensors,
} from "./safetensors.ts";

/** Raised when a checkpoint is well-formed but does not fit the expected model. */
export class CheckpointMismatchError extends Error {
  override name = "CheckpointMismatchError";
}

/** The HF-style config object stored in `__metadata__.config`. */
export interface HfGpt2Config {
  n_layer: number;
  n_head: number;
  n_embd: number;
  block_size: number;
  vocab_size: number;
}

/** Converts a model shape to the HF-style metadata object. */
export function toHfConfig(c: GptConfig): HfGpt2Config {
  return {
    n_layer: c.nLayer,
    n_head: c.nHead,
    n_embd: c.nEmbd,
    block_size: c.blockSize,
    vocab_size: c.vocabSize,
  };
}

/** Converts the HF-style metadata object to a validated model shape. */
export function fromHfConfig(h: HfGpt2Config): GptConfig {
  return validateConfig({
    nLayer: h.n_layer,
    nHead: h.n_head,
    nEmbd: h.n_embd,
    blockSize: h.block_size,
    vocabSize: h.vocab_size,
  });
}

/**
 * The flat parameters as HF GPT-2 tensors: views into `params` (no copy), to
 * be encoded before `params` changes.
 */
export function gpt2Tensors(
  layout: ParamLayout,
  params: Float32Array,
): Record<string, TensorInput> {
  if (params.length !== layout.totalLength && params.length !== layout.paramCount) {
    throw new RangeError(
      `Cannot encode parameters: got ${params.length} floats, the layout has ${layout.totalLength}`,
    );
  }
  const tensors: Record<string, TensorInput> = {};
  // Write in HF's natural order (embeddings, blocks, ln_f) for readability of the header.
  const ordered = [...layout.views].sort((a, b) => hfOrder(a.name) - hfOrder(b.name));
  for (const v of ordered) {
    tensors[v.name] = {
      dtype: "F32",
      shape: v.shape,
      data: params.subarray(v.offset, v.offset + v.length),
    };
  }
  return tensors;
}

const SUFFIXES = [
  "ln_1.weight",
  "ln_1.bias",
  "attn.c_attn.weight",
  "attn.c_attn.bias",
  "attn.c_proj.weight",
  "attn.c_proj.bias",
  "ln_2.weight",
  "ln_2.bias",
  "mlp.c_fc.weight",
  "mlp.c_fc.bias",
  "mlp.c_proj.weight",
  "mlp.c_proj.bias",
];

function hfOrder(name: string): number {
  if (name === "wte.weight") return 0;
  if (name === "wpe.weight") return 1;
  const m = /^h\.(\d+)\.(.+)$/.exec(name);
  if (m) return 2 + Number(m[1]) * 100 + SUFFIXES.indexOf(m[2]);
  return 1e9 + (name === "ln_f.bias" ? 1 : 0);
}

/** Options for {@linkcode saveGpt2}. */
export interface SaveOptions {
  /** Extra `__metadata__` entries (strings), e.g. step or data cursor. */
  metadata?: Record<string, string>;
}

/**
 * Writes `params` (flat, in the layout of `config`) to `path` as HF GPT-2 safetensors.
 *
 * @example
 * ```ts ignore
 * await saveGpt2("runs/train/model.safetensors", config, await model.getParams());
 * ```
 */
export async function saveGpt2(
  path: string,
  config: GptConfig,
  params: Float32Array,
  options: SaveOptions = {},
): Promise<void> {
  const layout = buildLayout(config);
  await writeSafetensors(path, gpt2Tensors(layout, params), {
    format: "pt",
    ...options.metadata,
    config: JSON.stringify(toHfConfig(config)),
  });
}

/** A loaded checkpoint. */
export interface LoadedGpt2 {
  /** The model shape from `__metadata__.config`. */
  config: GptConfig;
  /** The parameters in the flat padded layout of {@linkcode buildLayout}(config). */
  params: Float32Array;
  /** All `__metadata__` entries. */
  metadata: Record<string, string>;
}

/** Options for {@linkcode loadGpt2}. */
export interface LoadOptions {
  /** If given, the checkpoint's config must equal it. */
  expect?: GptConfig;
}

/** Tensors that HF checkpoints may carry but the model does not use (masks, tied head). */
const IGNORED = /^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$/;

/**
 * Parses a decoded safetensors file as a GPT-2 checkpoint; `source` names it in errors.
 *
 * @throws {SafetensorsError} when the metadata is missing or malformed
 * @throws {CheckpointMismatchError} when tensors or the expected config disagree
 */
export function parseGpt2(
  file: SafetensorsFile,
  source: string,
  options: LoadOptions = {},
): LoadedGpt2 {
  const raw = file.metadata.config;
  if (raw === undefined) {
    throw new SafetensorsError(`Invalid checkpoint ${source}: __metadata__.config is missing`);
  }
  let config: GptConfig;
  try {
    const hf = JSON.parse(raw);
    if (typeof hf !== "object" || hf === null) throw new TypeError("not an object");
    config = fromHfConfig(hf as HfGpt2Config);
  } catch (err) {
    throw new SafetensorsError(
      `Invalid checkpoint ${source}: __metadata__.config ${raw}: ${
        err instanceof Error ? err.message : err
      }`,
    );
  }
  if (options.expect && !sameConfig(options.expect, config)) {
    throw new CheckpointMismatchError(
      `Checkpoint does not match the model config: ${source} has ${
        JSON.stringify(toHfConfig(config))
      }, expected ${JSON.stringify(toHfConfig(options.expect))}`,
    );
  }
  const layout = buildLayout(config);
  const params = new Float32Array(layout.totalLength);
  for (const v of layout.views) {
    const t = file.tensors.get(v.name);
    if (!t) {
      throw new CheckpointMismatchError(`Checkpoint ${source} lacks tensor ${v.name}`);
    }
    if (t.shape.length !== v.shape.length || t.shape.some((d, i) => d !== v.shape[i])) {
      throw new CheckpointMismatchError(
        `Checkpoint ${source}: tensor ${v.name} has shape [${t.shape}], the config needs [${v.shape}]`,
      );
    }
    const data = tensorToFloat32(t, v.name);
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) {
        throw new CheckpointMismatchError(
          `Checkpoint ${source}: tensor ${v.name} holds a non-finite value at index ${i}`,
        );
      }
    }
    params.set(data, v.offset);
  }
  for (const name of file.tensors.keys()) {
    if (!layout.byName.has(name) && !IGNORED.test(name)) {
      throw new CheckpointMismatchError(`Checkpoint ${source} has an unexpected tensor ${name}`);
    }
  }
  return { config, params, metadata: file.metadata };
}

/**
 * Reads a GPT-2 checkpoint written by {@linkcode saveGpt2} (or a compatible HF file).
 *
 * @example Save a model's parameters and load them back
 * ```ts
 * import { loadGpt2, saveGpt2 } from "./gpt2_safetensors.ts";
 * import { getConfig } from "../kernels/config.ts";
 * import { initParams } from "../kernels/init.ts";
 * import assert from "node:assert/strict";
 * const config = getConfig("tiny").model;
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await saveGpt2(path, config, initParams(config, 1));
 * const loaded = await loadGpt2(path, { expect: config });
 * assert.deepEqual(loaded.params, initParams(config, 1));
 * await Deno.remove(path);
 * ```
 *
 * @throws {SafetensorsError} for missing, truncated or corrupt files
 * @throws {CheckpointMismatchError} when tensors or `options.expect` disagree with the config
 */
export async function loadGpt2(path: string, options: LoadOptions = {}): Promise<LoadedGpt2> {
  return parseGpt2(await readSafetensors(path), path, options);
}
