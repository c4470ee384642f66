/**
 * The durable store of committed rounds under a run directory:
 *
 * ```
 * runs/<name>/
 *   rounds/<round>/model.safetensors   θ in the Hugging Face GPT-2 layout (gpt2_safetensors.ts)
 *   rounds/<round>/state.safetensors   outer momentum (and residual) + __metadata__: round,
 *                                       view, data cursors, settings, config
 *   rounds/<round>/manifest.json       sha256 and size of each file, round, params hash, created
 *   latest -> rounds/<round>            symlink to the newest committed round
 * ```
 *
 * A round is committed by one rename: its files are written into a temporary
 * folder `rounds/.tmp-*` (each file fsynced, the manifest last), the folder is
 * fsynced, renamed to `rounds/<round>`, and `rounds/` is fsynced. Only then is
 * `latest` moved (a new symlink renamed over the old one) and old rounds
 * pruned (renamed to `rounds/.trash-*` first, so a kill during deletion never
 * leaves a half-deleted round under a round's name). A kill at any point
 * leaves either no `rounds/<round>` or a complete one; stale temporary folders
 * are removed when a store opens.
 *
 * Loading never trusts a name alone: every file's size and sha256 are checked
 * against the manifest, and the decoded parameters against the manifest's
 * parameter hash. A round that fails is named with the reason and skipped; the
 * newest round that verifies is used.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { inPieces, PACE_BYTES } from "./_background.ts";
import { type GptConfig, sameConfig } from "../kernels/config.ts";
import { buildLayout, type ParamLayout } from "../kernels/layout.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  type TensorInput,
  tensorToFloat32,
} from "./safetensors.ts";
import { gpt2Tensors, parseGpt2, toHfConfig } from "./gpt2_safetensors.ts";

/** Format tag of manifest.json. */
export const MANIFEST_FORMAT = "decentra-checkpoint/1";
/** Format tag in state.safetensors' metadata. */
export const STATE_FORMAT = "decentra-state/1";
/** File names of a round, in the order they are written (the manifest last). */
export const ROUND_FILES = ["model.safetensors", "state.safetensors"] as const;
/** Name of a round's manifest. */
export const MANIFEST_FILE = "manifest.json";

/**
 * Default retention: the last 3 committed rounds are kept, and every round
 * that is a multiple of 10, so that a long run keeps sparse history without
 * filling the disk.
 */
export const DEFAULT_RETENTION: Readonly<Retention> = Object.freeze({ keepLast: 3, keepEvery: 10 });

/** Which rounds survive pruning. */
export interface Retention {
  /** Keep the newest K committed rounds (at least 1). */
  keepLast: number;
  /** Also keep every round that is a multiple of M (0: none). */
  keepEvery: number;
}

/** The state of one round: θ at the start of `round` and what the outer loop needs to go on. */
export interface RoundState {
  /** Run id. */
  run: string;
  /** θ is the start of this round. */
  round: number;
  /** The model shape. */
  config: GptConfig;
  /** θ_round, flat, in the padded layout of `config`. */
  params: Float32Array;
  /** Outer optimizer momentum, same length as `params`. */
  momentum: Float32Array;
  /** Error-feedback residual of the int8 update, same length, if any. */
  residual?: Float32Array;
  /** The membership view of the round (JSON data). */
  view?: unknown;
  /** Data cursors of every trainer, by trainer id (JSON data). */
  cursors?: Record<string, unknown>;
  /** Run settings (outer optimizer, inner steps, ...) (JSON data). */
  settings?: Record<string, unknown>;
}

/** Size and sha256 of one file of a round. */
export interface FileEntry {
  /** Lower-case hex sha256 of the file's bytes. */
  sha256: string;
  /** Bytes. */
  size: number;
}

/** A round's manifest.json. */
export interface Manifest {
  format: string;
  run: string;
  round: number;
  /** ISO time the round was prepared. */
  created: string;
  /** Length of the flat parameter vector. */
  params: number;
  /** sha256 (hex) of θ's flat float32 bytes. */
  params_sha256: string;
  /** The first 16 hex digits of params_sha256 (the run's θ hash of trainers' reports). */
  params_hash: string;
  /** True when θ has non-zero padding, kept in state.safetensors (joiners then need that file). */
  params_padding?: boolean;
  /** Every file but the manifest, by name. */
  files: Record<string, FileEntry>;
}

/** A round encoded and hashed, ready to write or to serve. */
export interface PreparedRound {
  /** Round number. */
  round: number;
  /** Its manifest. */
  manifest: Manifest;
  /** The files' bytes, by name (manifest.json included). */
  files: Map<string, Uint8Array>;
}

/** A round read back and verified. */
export interface LoadedRound {
  /** The decoded state. */
  state: RoundState;
  /** Its manifest. */
  manifest: Manifest;
  /** The round's folder. */
  dir: string;
}

/** A round skipped while loading, and why. */
export interface SkippedRound {
  round: number;
  reason: string;
}

/** The result of {@linkcode CheckpointStore.loadLatest}. */
export interface LatestRound extends LoadedRound {
  /** Newer rounds that failed verification, newest first. */
  skipped: SkippedRound[];
}

/** Raised when a round's files do not match its manifest or cannot be decoded. */
export class CorruptCheckpointError extends Error {
  override name = "CorruptCheckpointError";
  /** The round. */
  readonly round: number;
  /** The file at fault, when one is. */
  readonly file: string | undefined;
  /** Creates the error. */
  constructor(round: number, file: string | undefined, message: string) {
    super(message);
    this.round = round;
    this.file = file;
  }
}

/**
 * Raised when a round cannot be written (disk full, permission, read-only
 * file system...). The round is not committed.
 */
export class CheckpointWriteError extends Error {
  override name = "CheckpointWriteError";
  /** The round that was not written. */
  readonly round: number;
  /** The OS error code ("ENOSPC", "EACCES", "EROFS", ...) or "EIO" when unknown. */
  readonly code: string;
  /** Creates the error. */
  constructor(round: number, code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.round = round;
    this.code = code;
  }
}

/**
 * The file operations the store uses; tests inject failing ones. Every
 * `writeFile` must be durable when it resolves (written and fsynced).
 */
export interface StoreFs {
  /** Creates `path` with `bytes`, fsyncs and closes it. */
  writeFile(path: string, bytes: Uint8Array): Promise<void>;
  /** Reads a whole file. */
  readFile(path: string): Promise<Uint8Array>;
  /** Creates a folder (and its parents). */
  mkdir(path: string): Promise<void>;
  /** Renames (atomically replaces files and symlinks). */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file, symlink or folder tree; missing is fine. */
  remove(path: string): Promise<void>;
  /** Fsyncs a folder, making renames and creations inside it durable. */
  syncDir(path: string): Promise<void>;
  /** Creates a symlink at `path` pointing at `target`. */
  symlink(target: string, path: string): Promise<void>;
  /** Names in a folder (empty when it does not exist). */
  readDir(path: string): Promise<string[]>;
}

/** The real file system. */
export const denoFs: StoreFs = {
  async writeFile(path, bytes) {
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    try {
      let at = 0;
      while (at < bytes.length) at += await f.write(bytes.subarray(at));
      await f.sync();
    } finally {
      f.close();
    }
  },
  readFile: (path) => Deno.readFile(path),
  mkdir: (path) => Deno.mkdir(path, { recursive: true }),
  rename: (from, to) => Deno.rename(from, to),
  async remove(path) {
    try {
      await Deno.remove(path, { recursive: true });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  },
  async syncDir(path) {
    const d = await Deno.open(path, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  },
  symlink: (target, path) => Deno.symlink(target, path),
  async readDir(path) {
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(path)) names.push(e.name);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return [];
      throw err;
    }
    return names;
  },
};

/**
 * Lower-case hex sha256 of bytes, on the calling thread: node:crypto's
 * sha256 runs ~1.5 GB/s here against ~0.23 GB/s for `crypto.subtle.digest`,
 * and running on the caller keeps a keeper's hashing on its low-priority
 * writer thread.
 */
export function sha256Hex(bytes: Uint8Array, pace?: () => void): Promise<string> {
  const hash = createHash("sha256");
  inPieces(bytes.length, PACE_BYTES, pace, (a, b) => hash.update(bytes.subarray(a, b)));
  return Promise.resolve(hash.digest("hex"));
}

function floatBytes(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}

/** The padding elements of a flat layout (between views), in order. */
function paddingRanges(layout: ParamLayout): [number, number][] {
  const views = [...layout.views].sort((a, b) => a.offset - b.offset);
  const out: [number, number][] = [];
  let at = 0;
  for (const v of views) {
    if (v.offset > at) out.push([at, v.offset]);
    at = v.offset + v.length;
  }
  if (layout.totalLength > at) out.push([at, layout.totalLength]);
  return out;
}

function gatherPadding(layout: ParamLayout, params: Float32Array): Float32Array | undefined {
  const ranges = paddingRanges(layout);
  const n = ranges.reduce((s, [a, b]) => s + b - a, 0);
  const out = new Float32Array(n);
  let k = 0;
  let nonzero = false;
  const bits = new Uint32Array(params.buffer, params.byteOffset, params.length);
  for (const [a, b] of ranges) {
    for (let i = a; i < b; i++) {
      if (bits[i] !== 0) nonzero = true;
      out[k++] = params[i];
    }
  }
  return nonzero ? out : undefined;
}

function scatterPadding(layout: ParamLayout, params: Float32Array, padding: Float32Array): void {
  let k = 0;
  for (const [a, b] of paddingRanges(layout)) {
    for (let i = a; i < b; i++) params[i] = padding[k++];
  }
}

/**
 * Index of the first non-finite element of `x`, -1 when all are finite. One
 * float64 sum is non-finite exactly when some element is (float32 values
 * cannot overflow it): a plain add loop, then a search only on failure.
 */
export function firstNonFinite(x: Float32Array, pace?: () => void): number {
  let sum = 0;
  inPieces(x.length, PACE_BYTES / 4, pace, (a, b) => {
    let s = 0;
    for (let i = a; i < b; i++) s += x[i];
    sum += s;
  });
  return Number.isFinite(sum) ? -1 : x.findIndex((v) => !Number.isFinite(v));
}

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
 * every {@linkcode PACE_BYTES} of checking, copying and hashing (a
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

function errCode(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "string" && code) return code;
  if (err instanceof Deno.errors.PermissionDenied) return "EACCES";
  if (err instanceof Deno.errors.NotFound) return "ENOENT";
  return "EIO";
}

const WRITE_HINT: Record<string, string> = {
  ENOSPC: "disk full",
  EDQUOT: "disk quota exceeded",
  EACCES: "permission denied",
  EPERM: "permission denied",
  EROFS: "read-only file system",
};

/** Options of {@linkcode CheckpointStore}. */
export interface StoreOptions {
  /** Which rounds pruning keeps (default {@linkcode DEFAULT_RETENTION}). */
  retention?: Partial<Retention>;
  /** File operations (default {@linkcode denoFs}). */
  fs?: StoreFs;
}

/**
 * The checkpoint store of one run directory. One writer per directory: each
 * keeper owns its own.
 *
 * @example Commit a round and load it back
 * ```ts
 * import { CheckpointStore } from "./store.ts";
 * import { buildLayout } from "../kernels/layout.ts";
 * import assert from "node:assert/strict";
 * const dir = await Deno.makeTempDir();
 * const config = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };
 * const n = buildLayout(config).totalLength;
 * const store = new CheckpointStore(dir);
 * const params = new Float32Array(n).map((_, i) => i / n);
 * await store.commit({ run: "r", round: 5, config, params, momentum: new Float32Array(n) });
 * const latest = await store.loadLatest();
 * assert.equal(latest?.state.round, 5);
 * assert.deepEqual(latest?.state.params, params);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class CheckpointStore {
  /** The run directory. */
  readonly dir: string;
  /** The retention policy in force. */
  readonly retention: Retention;
  #fs: StoreFs;
  #cleaned = false;

  /** Opens (lazily creates) the store under `dir` (runs/<name>). */
  constructor(dir: string, options: StoreOptions = {}) {
    this.dir = dir.replace(/\/+$/, "") || "/";
    const r = { ...DEFAULT_RETENTION, ...options.retention };
    if (!Number.isInteger(r.keepLast) || r.keepLast < 1) {
      throw new RangeError(
        `Invalid retention: keepLast must be an integer >= 1, got ${r.keepLast}`,
      );
    }
    if (!Number.isInteger(r.keepEvery) || r.keepEvery < 0) {
      throw new RangeError(
        `Invalid retention: keepEvery must be an integer >= 0, got ${r.keepEvery}`,
      );
    }
    this.retention = r;
    this.#fs = options.fs ?? denoFs;
  }

  /** The folder of committed rounds. */
  get roundsDir(): string {
    return `${this.dir}/rounds`;
  }

  /** The folder of one round. */
  roundDir(round: number): string {
    return `${this.roundsDir}/${round}`;
  }

  /** Committed rounds (folders named by a round number), ascending. */
  async rounds(): Promise<number[]> {
    const names = await this.#fs.readDir(this.roundsDir);
    return names.filter((n) => /^(0|[1-9]\d*)$/.test(n)).map(Number).sort((a, b) => a - b);
  }

  /** Removes temporary and trash folders left by a killed writer. */
  async cleanup(): Promise<string[]> {
    const names = await this.#fs.readDir(this.roundsDir);
    const stale = names.filter((n) => n.startsWith(".tmp-") || n.startsWith(".trash-"));
    for (const n of stale) await this.#fs.remove(`${this.roundsDir}/${n}`);
    for (const n of await this.#fs.readDir(this.dir)) {
      if (n.startsWith(".latest-")) await this.#fs.remove(`${this.dir}/${n}`);
    }
    this.#cleaned = true;
    return stale;
  }

  /**
   * Commits a round durably (see the module doc for the steps), moves
   * `latest` and prunes. Committing a round that is already on disk and
   * verifies does nothing and returns its manifest.
   *
   * @throws {CheckpointWriteError} when a file system step fails; the round is then not committed
   */
  async commit(state: RoundState | PreparedRound): Promise<Manifest> {
    const prepared = "files" in state && state.files instanceof Map
      ? state as PreparedRound
      : await prepareRound(state as RoundState);
    const round = prepared.round;
    const fs = this.#fs;
    const step = async <T>(what: string, path: string, fn: () => Promise<T>): Promise<T> => {
      try {
        return await fn();
      } catch (err) {
        const code = errCode(err);
        const hint = WRITE_HINT[code] ? `${WRITE_HINT[code]} (${code})` : code;
        throw new CheckpointWriteError(
          round,
          code,
          `Cannot write checkpoint round ${round}: ${what} ${path}: ${hint}: ${
            err instanceof Error ? err.message : err
          }`,
          { cause: err },
        );
      }
    };
    await step("create", this.roundsDir, () => fs.mkdir(this.roundsDir));
    if (!this.#cleaned) await step("clean", this.roundsDir, () => this.cleanup());
    const final = this.roundDir(round);
    if ((await this.rounds()).includes(round)) {
      try {
        const existing = await this.verify(round);
        if (existing.params_sha256 !== prepared.manifest.params_sha256) {
          throw new CheckpointWriteError(
            round,
            "EEXIST",
            `Cannot write checkpoint round ${round}: ${final} already holds a different θ ` +
              `(${existing.params_hash}, new ${prepared.manifest.params_hash})`,
          );
        }
        return existing;
      } catch (err) {
        if (!(err instanceof CorruptCheckpointError)) throw err;
        // A corrupt round under this name is replaced by the good one.
        const trash = `${this.roundsDir}/.trash-${round}-${crypto.randomUUID()}`;
        await step("move aside", final, () => fs.rename(final, trash));
        await step("remove", trash, () => fs.remove(trash));
      }
    }
    const tmp = `${this.roundsDir}/.tmp-${round}-${crypto.randomUUID()}`;
    try {
      await step("create", tmp, () => fs.mkdir(tmp));
      // The manifest goes last: a folder with a manifest has all its files.
      for (const name of [...ROUND_FILES, MANIFEST_FILE]) {
        const path = `${tmp}/${name}`;
        await step("write", path, () => fs.writeFile(path, prepared.files.get(name)!));
      }
      await step("sync", tmp, () => fs.syncDir(tmp));
      await step("rename", `${tmp} to ${final}`, () => fs.rename(tmp, final));
    } catch (err) {
      await fs.remove(tmp).catch(() => {});
      throw err;
    }
    await step("sync", this.roundsDir, () => fs.syncDir(this.roundsDir));
    await this.#pointLatest(round, step);
    await step("prune", this.roundsDir, () => this.prune());
    return prepared.manifest;
  }

  async #pointLatest(
    round: number,
    step: <T>(what: string, path: string, fn: () => Promise<T>) => Promise<T>,
  ): Promise<void> {
    const newest = (await this.rounds()).at(-1);
    if (newest !== undefined && newest > round) return;
    const link = `${this.dir}/latest`;
    const tmp = `${this.dir}/.latest-${crypto.randomUUID()}`;
    await step("link", tmp, () => this.#fs.symlink(`rounds/${round}`, tmp));
    await step("rename", `${tmp} to ${link}`, () => this.#fs.rename(tmp, link));
    await step("sync", this.dir, () => this.#fs.syncDir(this.dir));
  }

  /** Rounds that retention keeps among `rounds` (ascending). */
  kept(rounds: number[]): number[] {
    const { keepLast, keepEvery } = this.retention;
    const last = new Set(rounds.slice(-keepLast));
    return rounds.filter((r) => last.has(r) || (keepEvery > 0 && r % keepEvery === 0));
  }

  /** Removes the rounds retention does not keep; returns them. */
  async prune(): Promise<number[]> {
    const all = await this.rounds();
    const keep = new Set(this.kept(all));
    const removed: number[] = [];
    for (const r of all) {
      if (keep.has(r)) continue;
      const trash = `${this.roundsDir}/.trash-${r}-${crypto.randomUUID()}`;
      await this.#fs.rename(this.roundDir(r), trash);
      await this.#fs.remove(trash);
      removed.push(r);
    }
    if (removed.length > 0) await this.#fs.syncDir(this.roundsDir);
    return removed;
  }

  /** Reads a round's manifest (unverified files). */
  async readManifest(round: number): Promise<Manifest> {
    const path = `${this.roundDir(round)}/${MANIFEST_FILE}`;
    let bytes: Uint8Array;
    try {
      bytes = await this.#fs.readFile(path);
    } catch (err) {
      throw new CorruptCheckpointError(
        round,
        MANIFEST_FILE,
        `Checkpoint round ${round} is corrupt: ${path} cannot be read: ${
          err instanceof Error ? err.message : err
        }`,
      );
    }
    return parseManifest(bytes, round, path);
  }

  /** Reads a round's files (manifest included) and checks them against the manifest. */
  async readVerified(round: number): Promise<PreparedRound> {
    const manifest = await this.readManifest(round);
    const files = new Map<string, Uint8Array>();
    const dir = this.roundDir(round);
    for (const name of ROUND_FILES) {
      try {
        files.set(name, await this.#fs.readFile(`${dir}/${name}`));
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) {
          throw new CorruptCheckpointError(
            round,
            name,
            `Checkpoint round ${round} is corrupt: ${dir}/${name} cannot be read: ${
              err instanceof Error ? err.message : err
            }`,
          );
        }
      }
    }
    await verifyFiles(manifest, files, dir);
    files.set(MANIFEST_FILE, await this.#fs.readFile(`${dir}/${MANIFEST_FILE}`));
    return { round, manifest, files };
  }

  /**
   * Checks a round's files against its manifest.
   *
   * @throws {CorruptCheckpointError} naming what is wrong
   */
  async verify(round: number): Promise<Manifest> {
    return (await this.readVerified(round)).manifest;
  }

  /**
   * Loads and verifies one round.
   *
   * @throws {CorruptCheckpointError} naming what is wrong
   */
  async load(round: number, options: { expect?: GptConfig } = {}): Promise<LoadedRound> {
    const { manifest, files } = await this.readVerified(round);
    const dir = this.roundDir(round);
    const state = await decodeRound(manifest, files, { source: dir, expect: options.expect });
    return { state, manifest, dir };
  }

  /**
   * Loads the newest round that verifies, skipping (and naming) corrupt,
   * torn or incomplete ones. Undefined when no round verifies.
   */
  async loadLatest(
    options: { expect?: GptConfig; onSkip?: (skipped: SkippedRound) => void } = {},
  ): Promise<LatestRound | undefined> {
    const skipped: SkippedRound[] = [];
    for (const round of (await this.rounds()).reverse()) {
      try {
        return { ...await this.load(round, options), skipped };
      } catch (err) {
        if (!(err instanceof CorruptCheckpointError)) throw err;
        const s = { round, reason: err.message };
        skipped.push(s);
        options.onSkip?.(s);
      }
    }
    return undefined;
  }
}
