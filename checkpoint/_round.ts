/**
 * What a committed round is made of: its file names and format tags, the
 * state it holds ({@linkcode RoundState}), its manifest, the encoded form
 * ready to write or serve, and the errors raised when a round cannot be
 * written or does not verify. The store (store.ts) re-exports all of it.
 *
 * @module
 */
import type { GptConfig } from "../kernels/config.ts";

/** Format tag of manifest.json. */
export const MANIFEST_FORMAT = "decentra-checkpoint/1";
/** Format tag in state.safetensors' metadata. */
export const STATE_FORMAT = "decentra-state/1";
/** File names of a round, in the order they are written (the manifest last). */
export const ROUND_FILES = ["model.safetensors", "state.safetensors"] as const;
/** Name of a round's manifest. */
export const MANIFEST_FILE = "manifest.json";

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
