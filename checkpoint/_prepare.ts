/**
 * Encoding a round for the store: the state is checked (shape, finite
 * values), θ goes to model.safetensors in the Hugging Face GPT-2 layout, the
 * optimizer state to state.safetensors, and every file is hashed into the
 * manifest ({@linkcode prepareRound}).
 *
 * @module
 */
import { buildLayout, type ParamLayout } from "../kernels/layout.ts";
import { encodeSafetensors, type TensorInput } from "./safetensors.ts";
import { gpt2Tensors, toHfConfig } from "./gpt2_safetensors.ts";
import { firstNonFinite, floatBytes, gatherPadding, sha256Hex } from "./_bytes.ts";
import {
  type Manifest,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  type PreparedRound,
  type RoundState,
  STATE_FORMAT,
} from "./_round.ts";

function checkState(state: RoundState, pace?: () => void): ParamLayout {
  if (!Number.isSafeInteger(state.round) || state.round < 0) {
    throw new RangeError(`Invalid round state: round ${state.round} is not a non-negative integer`);
  }
  const layout = buildLayout(state.config);
  const n = layout.totalLength;
  if (!(state.params instanceof Float32Array) || state.params.length !== n) {
    throw new RangeError(
      `Invalid round state ${state.round}: params has ${state.params?.length} floats, the config needs ${n}`,
    );
  }
  for (const key of ["momentum", "residual"] as const) {
    const x = state[key];
    if (x === undefined && key === "residual") continue;
    if (!(x instanceof Float32Array) || x.length !== n) {
      throw new RangeError(
        `Invalid round state ${state.round}: ${key} has ${x?.length} floats, expected ${n}`,
      );
    }
  }
  for (const key of ["params", "momentum", "residual"] as const) {
    const x = state[key];
    const at = x ? firstNonFinite(x, pace) : -1;
    if (at >= 0) {
      throw new RangeError(`Invalid round state ${state.round}: ${key}[${at}] is not finite`);
    }
  }
  return layout;
}

/**
 * Encodes and hashes a round: the model file in the HF GPT-2 layout, the
 * state file, and the manifest (last). `alloc` allocates the two data files
 * (see `EncodeOptions.alloc` in safetensors.ts); `pace` is called after
 * every `PACE_BYTES` of checking, copying and hashing (a
 * background thread's CPU budget, see _background.ts). Refuses a state
 * holding a non-finite value in params, momentum or residual (a RangeError
 * naming it).
 *
 * @example
 * ```ts
 * import { prepareRound } from "./store.ts";
 * import { buildLayout } from "../kernels/layout.ts";
 * const config = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };
 * const n = buildLayout(config).totalLength;
 * const p = await prepareRound({ run: "r", round: 3, config, params: new Float32Array(n),
 *   momentum: new Float32Array(n) });
 * console.log(p.manifest.round, [...p.files.keys()]);
 * // 3 ["model.safetensors", "state.safetensors", "manifest.json"]
 * ```
 */
export async function prepareRound(
  state: RoundState,
  options: { created?: Date; alloc?: (bytes: number) => Uint8Array; pace?: () => void } = {},
): Promise<PreparedRound> {
  const { pace } = options;
  const alloc = { alloc: options.alloc, pace };
  const layout = checkState(state, pace);
  const hf = JSON.stringify(toHfConfig(state.config));
  const model = encodeSafetensors(gpt2Tensors(layout, state.params), {
    format: "pt",
    config: hf,
    run: state.run,
    round: String(state.round),
  }, alloc);
  const tensors: Record<string, TensorInput> = {
    momentum: { dtype: "F32", shape: [state.momentum.length], data: state.momentum },
  };
  if (state.residual) {
    tensors.residual = { dtype: "F32", shape: [state.residual.length], data: state.residual };
  }
  const padding = gatherPadding(layout, state.params);
  if (padding) tensors.params_padding = { dtype: "F32", shape: [padding.length], data: padding };
  const stateBytes = encodeSafetensors(tensors, {
    format: STATE_FORMAT,
    run: state.run,
    round: String(state.round),
    config: hf,
    view: JSON.stringify(state.view ?? null),
    cursors: JSON.stringify(state.cursors ?? {}),
    settings: JSON.stringify(state.settings ?? {}),
  }, alloc);
  const paramsSha = await sha256Hex(floatBytes(state.params), pace);
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    run: state.run,
    round: state.round,
    created: (options.created ?? new Date()).toISOString(),
    params: state.params.length,
    params_sha256: paramsSha,
    params_hash: paramsSha.slice(0, 16),
    ...(padding ? { params_padding: true } : {}),
    files: {
      "model.safetensors": { sha256: await sha256Hex(model, pace), size: model.length },
      "state.safetensors": { sha256: await sha256Hex(stateBytes, pace), size: stateBytes.length },
    },
  };
  const files = new Map<string, Uint8Array>([
    ["model.safetensors", model],
    ["state.safetensors", stateBytes],
    [MANIFEST_FILE, new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n")],
  ]);
  return { round: state.round, manifest, files };
}
