/**
 * Reading a round back without trusting it: the manifest is parsed and
 * checked ({@linkcode parseManifest}), every file's size and sha256 are
 * checked against it ({@linkcode verifyFiles}), and the decoded θ against
 * the manifest's parameter hash, bit for bit ({@linkcode decodeRound}).
 *
 * @module
 */
import { type GptConfig, sameConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";
import { decodeSafetensors, tensorToFloat32 } from "./safetensors.ts";
import { parseGpt2, toHfConfig } from "./gpt2_safetensors.ts";
import { floatBytes, scatterPadding, sha256Hex } from "./_bytes.ts";
import {
  CorruptCheckpointError,
  type Manifest,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  ROUND_FILES,
  type RoundState,
  STATE_FORMAT,
} from "./_round.ts";

/**
 * Parses and checks a manifest's bytes; `source` names it in errors.
 *
 * @throws {CorruptCheckpointError} when it is not a manifest of `round`
 */
export function parseManifest(bytes: Uint8Array, round: number, source: string): Manifest {
  let m: Manifest;
  try {
    m = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new CorruptCheckpointError(
      round,
      MANIFEST_FILE,
      `Checkpoint round ${round} is corrupt: ${source} is not valid JSON: ${
        err instanceof Error ? err.message : err
      }`,
    );
  }
  const bad = (what: string): never => {
    throw new CorruptCheckpointError(
      round,
      MANIFEST_FILE,
      `Checkpoint round ${round} is corrupt: ${source} ${what}`,
    );
  };
  if (typeof m !== "object" || m === null) bad("is not an object");
  if (m.format !== MANIFEST_FORMAT) bad(`has format ${JSON.stringify(m.format)}`);
  if (m.round !== round) bad(`names round ${m.round}`);
  if (typeof m.params_sha256 !== "string" || !/^[0-9a-f]{64}$/.test(m.params_sha256)) {
    bad("has no valid params_sha256");
  }
  if (typeof m.files !== "object" || m.files === null) bad("has no files");
  for (const name of ROUND_FILES) {
    const e = m.files[name];
    if (
      !e || typeof e.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(e.sha256) ||
      !Number.isSafeInteger(e.size) || e.size < 0
    ) bad(`has no valid entry for ${name}`);
  }
  return m;
}

/**
 * Checks files against a manifest (size and sha256).
 *
 * @throws {CorruptCheckpointError} naming the first file that disagrees
 */
export async function verifyFiles(
  manifest: Manifest,
  files: ReadonlyMap<string, Uint8Array>,
  source: string,
): Promise<void> {
  const round = manifest.round;
  for (const name of ROUND_FILES) {
    const want = manifest.files[name];
    const bytes = files.get(name);
    if (!bytes) {
      throw new CorruptCheckpointError(
        round,
        name,
        `Checkpoint round ${round} is corrupt: ${source}/${name} is missing`,
      );
    }
    if (bytes.length !== want.size) {
      throw new CorruptCheckpointError(
        round,
        name,
        `Checkpoint round ${round} is corrupt: ${source}/${name} has ${bytes.length} bytes, ` +
          `the manifest says ${want.size} (torn write?)`,
      );
    }
    const got = await sha256Hex(bytes);
    if (got !== want.sha256) {
      throw new CorruptCheckpointError(
        round,
        name,
        `Checkpoint round ${round} is corrupt: ${source}/${name} sha256 ${got.slice(0, 16)}… ` +
          `does not match the manifest's ${want.sha256.slice(0, 16)}…`,
      );
    }
  }
}

function metaJson(meta: Record<string, string>, key: string, round: number, source: string) {
  try {
    return meta[key] === undefined ? undefined : JSON.parse(meta[key]);
  } catch {
    throw new CorruptCheckpointError(
      round,
      "state.safetensors",
      `Checkpoint round ${round} is corrupt: ${source}/state.safetensors metadata ${key} is not JSON`,
    );
  }
}

/**
 * Decodes verified files into a round's state and checks θ against the
 * manifest's hash (bit for bit). Only `model.safetensors` is needed for θ;
 * without `state.safetensors` the momentum is empty (joiners need θ only),
 * which fails when θ has non-zero padding stored in the state file.
 *
 * @throws {CorruptCheckpointError} when a file does not decode or θ's hash differs
 */
export async function decodeRound(
  manifest: Manifest,
  files: ReadonlyMap<string, Uint8Array>,
  options: { source?: string; expect?: GptConfig } = {},
): Promise<RoundState> {
  const round = manifest.round;
  const source = options.source ?? `round ${round}`;
  const wrap = (file: string, err: unknown): never => {
    if (err instanceof CorruptCheckpointError) throw err;
    throw new CorruptCheckpointError(
      round,
      file,
      `Checkpoint round ${round} is corrupt: ${source}/${file}: ${
        err instanceof Error ? err.message : err
      }`,
    );
  };
  const modelBytes = files.get("model.safetensors");
  if (!modelBytes) return wrap("model.safetensors", "missing");
  let loaded;
  try {
    loaded = parseGpt2(decodeSafetensors(modelBytes, "model.safetensors"), "model.safetensors");
  } catch (err) {
    return wrap("model.safetensors", err);
  }
  if (options.expect && !sameConfig(options.expect, loaded.config)) {
    throw new RangeError(
      `Checkpoint round ${round} in ${source} does not match the model config: it has ${
        JSON.stringify(toHfConfig(loaded.config))
      }, expected ${JSON.stringify(toHfConfig(options.expect))}`,
    );
  }
  const params = loaded.params;
  const layout = buildLayout(loaded.config);
  const state: RoundState = {
    run: manifest.run,
    round,
    config: loaded.config,
    params,
    momentum: new Float32Array(0),
  };
  const stateBytes = files.get("state.safetensors");
  if (stateBytes) {
    try {
      const f = decodeSafetensors(stateBytes, "state.safetensors");
      const meta = f.metadata;
      if (meta.format !== STATE_FORMAT) throw new Error(`format ${meta.format}`);
      if (Number(meta.round) !== round) throw new Error(`metadata round ${meta.round}`);
      const get = (name: string) => {
        const t = f.tensors.get(name);
        return t ? tensorToFloat32(t, name) : undefined;
      };
      const momentum = get("momentum");
      if (!momentum || momentum.length !== params.length) {
        throw new Error(`momentum has ${momentum?.length} floats, expected ${params.length}`);
      }
      state.momentum = momentum;
      const residual = get("residual");
      if (residual) state.residual = residual;
      const padding = get("params_padding");
      if (padding) scatterPadding(layout, params, padding);
      state.view = metaJson(meta, "view", round, source) ?? undefined;
      state.cursors = metaJson(meta, "cursors", round, source) ?? {};
      state.settings = metaJson(meta, "settings", round, source) ?? {};
    } catch (err) {
      wrap("state.safetensors", err);
    }
  }
  const got = await sha256Hex(floatBytes(params));
  if (got !== manifest.params_sha256) {
    throw new CorruptCheckpointError(
      round,
      undefined,
      `Checkpoint round ${round} is corrupt: ${source}: decoded θ hashes ${got.slice(0, 16)}, ` +
        `the manifest recorded ${manifest.params_hash}`,
    );
  }
  return state;
}
