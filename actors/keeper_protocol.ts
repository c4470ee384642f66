/**
 * The checkpoint keepers' wire protocol: how a round's state reaches keepers
 * ({@linkcode KeeperPieceMsg}), how keepers report durable rounds to the
 * commit coordinator ({@linkcode KeeperAckMsg}, {@linkcode KeeperFailedMsg},
 * {@linkcode KeeperCommittedMsg}), how a round's manifest and chunks are
 * asked for and served, and the check of every message from the wire
 * ({@linkcode validateKeeperMessage}).
 *
 * @module
 */
import { asFloat32 } from "./run_protocol_validate.ts";
import type { GptConfig } from "../kernels/config.ts";
import { firstNonFinite, type Manifest, MANIFEST_FILE, ROUND_FILES } from "../checkpoint/store.ts";

/** Largest chunk a keeper serves (bytes); requests ask for at most this. */
export const MAX_CHUNK_BYTES = 4 << 20;

/** Raised when a keeper message is malformed; names the field. */
export class KeeperProtocolError extends Error {
  override name = "KeeperProtocolError";
}

/**
 * A piece of one round's state, sent to every keeper when a round closes (a
 * shard from each aggregator, or the whole vector with `start` 0). The keeper
 * gathers the pieces of a round until they cover `[0, total)`, keeping their
 * arrays as they are until it writes the round: a sender in the same process
 * hands them over and must not write them again.
 */
export interface KeeperPieceMsg {
  type: "keeper_piece";
  run: string;
  /** θ is the start of this round. */
  round: number;
  /** First element of the piece in the flat vector. */
  start: number;
  /** Length of the whole flat vector. */
  total: number;
  /** θ_round of the piece. */
  params: Float32Array;
  /** Outer momentum of the piece. */
  momentum: Float32Array;
  /** Error-feedback residual of the piece, if any. */
  residual?: Float32Array;
  /** The view of the round (JSON data). */
  view?: unknown;
  /** Data cursors by trainer id (merged across pieces). */
  cursors?: Record<string, unknown>;
  /** The model shape (else the keeper's own). */
  config?: GptConfig;
  /** Run settings (JSON data). */
  settings?: Record<string, unknown>;
}

/** Asks a keeper for the manifest of `round` (or its newest round). */
export interface KeeperManifestRequest {
  type: "keeper_manifest";
  run: string;
  round?: number;
}

/**
 * Where a keeper's serving thread takes direct requests for a round's bytes
 * (see `KeeperOptions.serve` in keeper.ts and checkpoint/_serve_worker.ts).
 */
export interface DirectEndpoint {
  /** Port of the serving thread's WebSocket listener. */
  port: number;
  /** Ticket every request must carry. */
  ticket: string;
  /** Host name to dial, when the keeper names one (else: the one its node is reached by). */
  host?: string;
}

/** A keeper's answer: the manifest of a round it can serve. */
export interface KeeperManifestReply {
  type: "keeper_manifest";
  run: string;
  keeper: string;
  manifest: Manifest;
  /** The keeper's direct endpoint for this round, when it has one. */
  direct?: DirectEndpoint;
}

/** A keeper's answer when it lacks the round. */
export interface KeeperMissingReply {
  type: "keeper_missing";
  run: string;
  keeper: string;
  round: number;
  /** Its newest servable round, -1 when none. */
  newest: number;
}

/** Asks a keeper for `length` bytes of a round's file from `offset`. */
export interface KeeperChunkRequest {
  type: "keeper_chunk";
  run: string;
  round: number;
  file: string;
  offset: number;
  length: number;
}

/** A chunk of a round's file. */
export interface KeeperChunkReply {
  type: "keeper_chunk";
  run: string;
  round: number;
  file: string;
  offset: number;
  /** The whole file's size. */
  size: number;
  bytes: Uint8Array;
}

/** A keeper tells the commit coordinator that it holds `round` durably. */
export interface KeeperAckMsg {
  type: "keeper_ack";
  run: string;
  round: number;
  keeper: string;
  /** The manifest's params_hash. */
  params_hash: string;
}

/** A keeper tells the commit coordinator that it could not write `round`. */
export interface KeeperFailedMsg {
  type: "keeper_failed";
  run: string;
  round: number;
  keeper: string;
  /** OS error code (ENOSPC, EACCES, EROFS, ...). */
  code: string;
  error: string;
}

/** The coordinator tells keepers that `round` is committed (held by enough keepers). */
export interface KeeperCommittedMsg {
  type: "keeper_committed";
  run: string;
  round: number;
  params_hash: string;
  holders: string[];
}

/** Any keeper protocol message. */
export type KeeperMessage =
  | KeeperPieceMsg
  | KeeperManifestRequest
  | KeeperChunkRequest
  | KeeperAckMsg
  | KeeperFailedMsg
  | KeeperCommittedMsg;

function fail(type: string, field: string, what: string): never {
  throw new KeeperProtocolError(`Invalid ${type} message: ${field} ${what}`);
}

function nat(m: Record<string, unknown>, type: string, field: string, max = 2 ** 31): number {
  const v = m[field];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max) {
    fail(type, field, `must be an integer in [0, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
}

function str(m: Record<string, unknown>, type: string, field: string): string {
  const v = m[field];
  if (typeof v !== "string" || v.length === 0 || v.length > 256) {
    fail(type, field, "must be a non-empty string");
  }
  return v;
}

function floats(
  m: Record<string, unknown>,
  type: string,
  field: string,
  n: number,
  finite: boolean,
): Float32Array {
  const v = asFloat32(m[field]);
  if (!v || v.length !== n) {
    fail(type, field, `must be ${n} float32 values, got ${v ? v.length : typeof m[field]}`);
  }
  const at = finite ? firstNonFinite(v) : -1;
  if (at >= 0) fail(type, field, `holds a non-finite value at ${at}`);
  return v;
}

/** Options of {@linkcode validateKeeperMessage}. */
export interface ValidateOptions {
  /**
   * Check that every float of a piece is finite (default true). A keeper with
   * a writer thread leaves this scan to that thread (`prepareRound` refuses a
   * round holding a non-finite value), off the event loop the trainers share.
   */
  checkFinite?: boolean;
}

/**
 * Checks a keeper protocol message from the wire and normalizes its tensors.
 *
 * @throws {KeeperProtocolError} naming the bad field
 *
 * @example
 * ```ts
 * import { validateKeeperMessage } from "./keeper_protocol.ts";
 * import { throws } from "node:assert/strict";
 * throws(() => validateKeeperMessage({ type: "keeper_chunk", run: "r", file: "model.safetensors", round: -1 }), /round/);
 * ```
 */
export function validateKeeperMessage(x: unknown, options: ValidateOptions = {}): KeeperMessage {
  const finite = options.checkFinite ?? true;
  if (typeof x !== "object" || x === null || Array.isArray(x)) {
    throw new KeeperProtocolError("Invalid keeper message: not an object");
  }
  const m = x as Record<string, unknown>;
  const type = m.type;
  if (typeof type !== "string") throw new KeeperProtocolError("Invalid keeper message: no type");
  const run = str(m, type, "run");
  switch (type) {
    case "keeper_piece": {
      const round = nat(m, type, "round");
      const total = nat(m, type, "total", 1 << 28);
      const start = nat(m, type, "start", total);
      const params = asFloat32(m.params);
      if (!params || params.length === 0 || start + params.length > total) {
        fail(type, "params", `must be float32 values within [${start}, ${total})`);
      }
      const n = params.length;
      const out: KeeperPieceMsg = {
        type,
        run,
        round,
        start,
        total,
        params: floats(m, type, "params", n, finite),
        momentum: floats(m, type, "momentum", n, finite),
      };
      if (m.residual !== undefined) out.residual = floats(m, type, "residual", n, finite);
      for (const key of ["cursors", "settings"] as const) {
        const v = m[key];
        if (v === undefined) continue;
        if (typeof v !== "object" || v === null || Array.isArray(v)) {
          fail(type, key, "must be an object");
        }
        out[key] = v as Record<string, unknown>;
      }
      if (m.view !== undefined) out.view = m.view;
      if (m.config !== undefined) {
        if (typeof m.config !== "object" || m.config === null) {
          fail(type, "config", "must be an object");
        }
        out.config = m.config as GptConfig;
      }
      return out;
    }
    case "keeper_manifest": {
      if (m.round === undefined) return { type, run };
      return { type, run, round: nat(m, type, "round") };
    }
    case "keeper_chunk": {
      const file = str(m, type, "file");
      if (!(ROUND_FILES as readonly string[]).includes(file) && file !== MANIFEST_FILE) {
        fail(type, "file", `must be one of ${ROUND_FILES.join(", ")}, got ${JSON.stringify(file)}`);
      }
      return {
        type,
        run,
        round: nat(m, type, "round"),
        file,
        offset: nat(m, type, "offset", Number.MAX_SAFE_INTEGER),
        length: Math.min(MAX_CHUNK_BYTES, Math.max(1, nat(m, type, "length", 2 ** 31))),
      };
    }
    case "keeper_ack":
      return {
        type,
        run,
        round: nat(m, type, "round"),
        keeper: str(m, type, "keeper"),
        params_hash: str(m, type, "params_hash"),
      };
    case "keeper_failed":
      return {
        type,
        run,
        round: nat(m, type, "round"),
        keeper: str(m, type, "keeper"),
        code: str(m, type, "code"),
        error: String(m.error ?? ""),
      };
    case "keeper_committed": {
      const holders = m.holders;
      if (!Array.isArray(holders) || !holders.every((h) => typeof h === "string")) {
        fail(type, "holders", "must be an array of strings");
      }
      return {
        type,
        run,
        round: nat(m, type, "round"),
        params_hash: str(m, type, "params_hash"),
        holders: holders as string[],
      };
    }
    default:
      throw new KeeperProtocolError(`Invalid keeper message: unknown type ${JSON.stringify(type)}`);
  }
}

/**
 * {@linkcode validateKeeperMessage} for one run: the message, or a one-line
 * error naming what was wrong (a bad field, or another run's id).
 */
export function parseKeeperMessage(
  raw: unknown,
  run: string,
  options?: ValidateOptions,
): { msg: KeeperMessage } | { error: string } {
  try {
    const msg = validateKeeperMessage(raw, options);
    if (msg.run !== run) {
      return { error: `Invalid keeper message: run ${msg.run}, expected ${run}` };
    }
    return { msg };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}
