/**
 * The checkpoint keepers' wire protocol and its client: how a round's state
 * reaches keepers ({@linkcode KeeperPieceMsg}), how keepers report durable
 * rounds ({@linkcode KeeperAckMsg}), and how a joiner or a restarted keeper
 * fetches a round from a keeper chosen automatically, in chunks, resuming at
 * the same offset after a broken connection (on the same keeper or on another
 * one holding the same bytes), and verifying every file against the
 * manifest's sha256 before use ({@linkcode fetchRound}).
 *
 * {@linkcode keeperStateSource} is the run's `StartStateSource` served by
 * keepers.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ActorContext } from "./runtime/behavior.ts";
import type { ActorSystem } from "./runtime/system.ts";
import { nodeOf } from "./runtime/_remote.ts";
import { peerHostname } from "../transport/remote.ts";
import type { StartStateSource } from "./trainer.ts";
import type { StateMsg, ViewMsg } from "./run_protocol.ts";
import { asFloat32 } from "./run_protocol.ts";
import type { GptConfig } from "../kernels/config.ts";
import {
  CorruptCheckpointError,
  decodeRound,
  firstNonFinite,
  type Manifest,
  MANIFEST_FILE,
  parseManifest,
  type PreparedRound,
  ROUND_FILES,
  sha256Hex,
} from "../checkpoint/store.ts";

/** Largest chunk a keeper serves (bytes); requests ask for at most this. */
export const MAX_CHUNK_BYTES = 4 << 20;
/**
 * Default chunk a fetch asks for: 4 MiB (fewer round trips; the transport cuts
 * it into its own frames).
 */
export const DEFAULT_CHUNK_BYTES = 4 << 20;

/** Raised when a keeper message is malformed; names the field. */
export class KeeperProtocolError extends Error {
  override name = "KeeperProtocolError";
}

/**
 * A piece of one round's state, sent to every keeper when a round closes (a
 * shard from each aggregator, or the whole vector with `start` 0). The keeper
 * assembles the pieces of a round until they cover `[0, total)`.
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
 * import { validateKeeperMessage } from "./keeper_transfer.ts";
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

/** Options of {@linkcode fetchRound}. */
export interface FetchOptions {
  /** Run id. */
  run: string;
  /** The round to fetch (default: the newest any keeper holds). */
  round?: number;
  /** Only the files a joiner needs for θ (model, plus state when θ has padding). Default false. */
  paramsOnly?: boolean;
  /** Bytes per chunk request (default 4 MiB). */
  chunkBytes?: number;
  /**
   * Chunk requests in flight at once (default 4): the keeper prepares the
   * next chunks while earlier ones are on the wire, so the link stays busy.
   */
  window?: number;
  /** Timeout of each request, ms (default 10 s). */
  timeoutMs?: number;
  /** Failed requests in a row tolerated before giving up (default 8). */
  retries?: number;
  /** Base backoff between retries, ms (default 50, doubling, at most 1 s). */
  backoffMs?: number;
  /**
   * Take the bytes from a keeper's direct endpoint when its manifest reply
   * names one (default true): a plain WebSocket stream served by the
   * keeper's low-priority thread. Chunk requests over the actor protocol
   * take over, at the offset reached, when it fails.
   */
  direct?: boolean;
  /** Aborts the fetch. */
  signal?: AbortSignal;
}

/** What {@linkcode fetchRound} got. */
export interface FetchedRound extends PreparedRound {
  /** Keepers the bytes came from, in order of use. */
  keepers: string[];
  /** Payload bytes received (re-fetched bytes counted again). */
  bytes: number;
  /** Of `bytes`, those taken from keepers' direct endpoints. */
  direct: number;
  /** Chunk requests that failed and were resumed. */
  resumed: number;
}

/** Raised when no keeper can serve a round. */
export class FetchError extends Error {
  override name = "FetchError";
}

interface Candidate {
  keeper: string;
  manifest: Manifest;
  direct?: DirectEndpoint;
}

function directOf(x: unknown): DirectEndpoint | undefined {
  const d = x as Record<string, unknown> | undefined;
  if (typeof d !== "object" || d === null) return undefined;
  const { port, ticket, host } = d;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) return;
  if (typeof ticket !== "string" || ticket.length === 0 || ticket.length > 128) return;
  if (host !== undefined && (typeof host !== "string" || host.length === 0 || host.length > 256)) {
    return;
  }
  return { port, ticket, ...(host ? { host: host as string } : {}) };
}

/** Where to dial a keeper's direct endpoint, or undefined when it cannot be reached so. */
function directUrl(system: ActorSystem, c: Candidate): string | undefined {
  if (!c.direct) return undefined;
  const node = nodeOf(c.keeper);
  // A keeper in this process is served in memory, without any socket.
  if (node === system.node) return undefined;
  const host = c.direct.host ?? peerHostname(system, node);
  return host ? `ws://${host}:${c.direct.port}/` : undefined;
}

/**
 * Takes bytes `[offset, end)` of a round's file from a keeper's direct
 * endpoint into `buf`, feeding each part to `onPart` in order; resolves with
 * the bytes taken, also when the stream broke (`error` then says why).
 */
async function directFetch(
  url: string,
  req: { ticket: string; round: number; file: string; offset: number; end: number },
  buf: Uint8Array,
  options: { timeoutMs: number; signal?: AbortSignal; onPart(part: Uint8Array): void },
): Promise<{ got: number; error?: string }> {
  let got = 0;
  let ws: WebSocket;
  try {
    ws = new WebSocket(url);
  } catch (err) {
    return { got, error: `cannot dial ${url}: ${err instanceof Error ? err.message : err}` };
  }
  ws.binaryType = "arraybuffer";
  const done = Promise.withResolvers<string | undefined>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const idle = () => {
    clearTimeout(timer);
    timer = setTimeout(
      () => done.resolve(`no data from ${url} for ${options.timeoutMs} ms`),
      options.timeoutMs,
    );
  };
  const onAbort = () => done.resolve("aborted");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const want = req.end - req.offset;
  let started = false;
  idle();
  ws.onopen = () => {
    idle();
    ws.send(JSON.stringify({
      ticket: req.ticket,
      round: req.round,
      file: req.file,
      offset: req.offset,
      length: want,
    }));
  };
  ws.onerror = () => done.resolve(`cannot reach ${url}`);
  ws.onclose = (ev) => done.resolve(`${url} closed the stream (${ev.code} ${ev.reason})`.trim());
  ws.onmessage = (ev) => {
    idle();
    if (typeof ev.data === "string") {
      let head: Record<string, unknown>;
      try {
        head = JSON.parse(ev.data);
      } catch {
        return done.resolve(`${url} sent a malformed header`);
      }
      if (typeof head.error === "string") return done.resolve(`${url}: ${head.error}`);
      if (
        started || head.offset !== req.offset || head.length !== want ||
        head.size !== buf.length
      ) {
        return done.resolve(`${url} sent an unexpected header ${ev.data.slice(0, 200)}`);
      }
      started = true;
      return;
    }
    const part = new Uint8Array(ev.data as ArrayBuffer);
    if (!started || got + part.length > want) {
      return done.resolve(`${url} sent bytes past the range asked for`);
    }
    buf.set(part, req.offset + got);
    options.onPart(part);
    got += part.length;
    if (got === want) done.resolve(undefined);
  };
  const error = await done.promise;
  clearTimeout(timer);
  options.signal?.removeEventListener("abort", onAbort);
  ws.onmessage =
    ws.onclose =
    ws.onerror =
    ws.onopen =
      null;
  try {
    ws.close();
  } catch { /* closed already */ }
  return error === undefined ? { got } : { got, error };
}

/** Asks every keeper for the manifest of `round` (or its newest); answers in arrival order. */
export async function listCandidates(
  system: ActorSystem,
  keepers: readonly string[],
  options: { run: string; round?: number; timeoutMs?: number },
): Promise<{ candidates: Candidate[]; missing: KeeperMissingReply[]; errors: string[] }> {
  const candidates: Candidate[] = [];
  const missing: KeeperMissingReply[] = [];
  const errors: string[] = [];
  await Promise.all(keepers.map(async (keeper) => {
    try {
      const reply = await system.ref(keeper).ask<Record<string, unknown>>(
        {
          type: "keeper_manifest",
          run: options.run,
          ...(options.round === undefined ? {} : { round: options.round }),
        },
        { timeoutMs: options.timeoutMs ?? 5000 },
      );
      if (reply?.type === "keeper_manifest" && typeof reply.manifest === "object") {
        const m = reply.manifest as Manifest;
        const round = options.round ?? m.round;
        const bytes = new TextEncoder().encode(JSON.stringify(m));
        const direct = directOf(reply.direct);
        candidates.push({
          keeper,
          manifest: parseManifest(bytes, round, `${keeper} manifest`),
          ...(direct ? { direct } : {}),
        });
      } else if (reply?.type === "keeper_missing") {
        missing.push(reply as unknown as KeeperMissingReply);
      } else errors.push(`${keeper}: ${JSON.stringify(reply).slice(0, 200)}`);
    } catch (err) {
      errors.push(`${keeper}: ${err instanceof Error ? err.message : err}`);
    }
  }));
  if (options.round === undefined && candidates.length > 0) {
    const newest = Math.max(...candidates.map((c) => c.manifest.round));
    return { candidates: candidates.filter((c) => c.manifest.round === newest), missing, errors };
  }
  return { candidates, missing, errors };
}

/**
 * Fetches a round's files from keepers and verifies them against the
 * manifest. The keeper that answers first serves; when a chunk request fails
 * (timeout, broken connection, keeper gone) the fetch resumes at the same
 * offset, from the same keeper or from another one whose manifest names the
 * same bytes. A file whose sha256 differs is dropped and fetched again from
 * another keeper.
 *
 * @throws {FetchError} when no keeper holds the round or all attempts failed
 */
export async function fetchRound(
  system: ActorSystem,
  keepers: readonly string[],
  options: FetchOptions,
): Promise<FetchedRound> {
  const { candidates, errors } = await listCandidates(system, keepers, options);
  if (candidates.length === 0) {
    throw new FetchError(
      `Cannot fetch checkpoint round ${options.round ?? "(newest)"}: no keeper holds it` +
        (errors.length ? ` (${errors.join("; ")})` : ""),
    );
  }
  const manifest = candidates[0].manifest;
  const same = candidates.filter((c) => c.manifest.params_sha256 === manifest.params_sha256);
  const chunk = Math.min(MAX_CHUNK_BYTES, options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
  const retries = options.retries ?? 8;
  const backoff = options.backoffMs ?? 50;
  const used: string[] = [];
  let bytes = 0;
  let direct = 0;
  let resumed = 0;
  let failures = 0;
  let pick = 0;
  const files = new Map<string, Uint8Array>();
  const names = options.paramsOnly && !manifest.params_padding
    ? ["model.safetensors"]
    : [...ROUND_FILES];
  for (const name of names) {
    const want = manifest.files[name];
    const bad = new Set<string>();
    let mismatch: CorruptCheckpointError | undefined;
    for (;;) {
      const sources = same.filter((c) =>
        c.manifest.files[name].sha256 === want.sha256 && !bad.has(c.keeper)
      );
      if (sources.length === 0 && mismatch) throw mismatch;
      if (sources.length === 0) {
        throw new FetchError(
          `Cannot fetch checkpoint round ${manifest.round}: no keeper serves ${name} matching the manifest`,
        );
      }
      const buf = new Uint8Array(want.size);
      let keeper = sources[pick % sources.length].keeper;
      if (used.at(-1) !== keeper) used.push(keeper);
      // Chunks are taken in order by `window` lanes; a failed chunk is asked
      // again at the same offset (on the next keeper), so no byte comes twice.
      let next = 0;
      let fatal: unknown;
      // The sha256 runs along the transfer over the prefix that has arrived, instead of over
      // the whole file once the last byte is in.
      const hash = createHash("sha256");
      let hashed = 0;
      const arrived = new Map<number, number>();
      const advance = (offset: number, length: number) => {
        arrived.set(offset, length);
        for (let n = arrived.get(hashed); n !== undefined; n = arrived.get(hashed)) {
          arrived.delete(hashed);
          hash.update(buf.subarray(hashed, hashed + n));
          hashed += n;
        }
      };
      const lane = async () => {
        while (next < want.size && fatal === undefined) {
          const offset = next;
          const length = Math.min(chunk, want.size - offset);
          next += length;
          for (;;) {
            if (fatal !== undefined) return;
            options.signal?.throwIfAborted();
            const from = keeper;
            try {
              const raw = await system.ref(from).ask<Record<string, unknown>>({
                type: "keeper_chunk",
                run: options.run,
                round: manifest.round,
                file: name,
                offset,
                length,
              }, { timeoutMs: options.timeoutMs ?? 10_000, signal: options.signal });
              const part = raw?.bytes;
              if (
                raw?.type !== "keeper_chunk" || raw.offset !== offset ||
                !(part instanceof Uint8Array) || part.length !== length
              ) {
                throw new FetchError(`${from} sent a bad chunk of ${name} at ${offset}`);
              }
              buf.set(part, offset);
              advance(offset, length);
              bytes += part.length;
              failures = 0;
              break;
            } catch (err) {
              if (options.signal?.aborted) throw err;
              if (++failures > retries) {
                fatal ??= new FetchError(
                  `Cannot fetch checkpoint round ${manifest.round}: ${name} at byte ${offset} ` +
                    `failed ${failures} times in a row, last from ${from}: ${
                      err instanceof Error ? err.message : err
                    }`,
                );
                return;
              }
              resumed++;
              // Same bytes everywhere (same sha256): go on at this offset, on the next keeper.
              if (keeper === from) {
                pick++;
                keeper = sources[pick % sources.length].keeper;
                if (used.at(-1) !== keeper) used.push(keeper);
              }
              await new Promise((r) =>
                setTimeout(r, Math.min(1000, backoff * 2 ** (Math.max(1, failures) - 1)))
              );
            }
          }
        }
      };
      // The direct path first: one plain stream from the keeper's serving thread, hashed as it
      // arrives. Whatever it could not bring is asked for over the actor protocol below.
      for (let tries = 0; options.direct !== false && next < want.size && tries < 2; tries++) {
        const c = sources.find((x) => x.keeper === keeper) ?? sources[0];
        const url = directUrl(system, c);
        if (!url) break;
        if (used.at(-1) !== c.keeper) used.push(c.keeper);
        options.signal?.throwIfAborted();
        const r = await directFetch(
          url,
          {
            ticket: c.direct!.ticket,
            round: manifest.round,
            file: name,
            offset: next,
            end: want.size,
          },
          buf,
          {
            timeoutMs: options.timeoutMs ?? 10_000,
            signal: options.signal,
            onPart: (part) => hash.update(part),
          },
        );
        next += r.got;
        hashed = next;
        bytes += r.got;
        direct += r.got;
        if (r.error === undefined) break;
        options.signal?.throwIfAborted();
        resumed++;
        if (++failures > retries) {
          throw new FetchError(
            `Cannot fetch checkpoint round ${manifest.round}: ${name} at byte ${next} ` +
              `failed ${failures} times in a row, last from ${c.keeper}: ${r.error}`,
          );
        }
        if (r.got > 0) failures = 0;
        pick++;
        keeper = sources[pick % sources.length].keeper;
      }
      const lanes = Math.max(1, Math.min(16, options.window ?? 4));
      await Promise.all(Array.from({ length: lanes }, lane));
      if (fatal !== undefined) throw fatal;
      const got = hashed === want.size ? hash.digest("hex") : await sha256Hex(buf);
      if (got === want.sha256) {
        files.set(name, buf);
        break;
      }
      // Bytes that do not match the manifest are never used: drop that keeper for this file.
      bad.add(keeper);
      mismatch = new CorruptCheckpointError(
        manifest.round,
        name,
        `Checkpoint round ${manifest.round} from ${keeper} is corrupt: ${name} sha256 ${
          got.slice(0, 16)
        }… does not match the manifest's ${want.sha256.slice(0, 16)}…`,
      );
      if (++failures > retries) throw mismatch;
    }
  }
  files.set(MANIFEST_FILE, new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n"));
  return { round: manifest.round, manifest, files, keepers: used, bytes, direct, resumed };
}

/** What a {@linkcode keeperStateSource} reports. */
export type SourceEvent =
  | {
    type: "fetched";
    round: number;
    keepers: string[];
    bytes: number;
    resumed: number;
    ms: number;
  }
  | { type: "fallback"; round: number; reason: string };

/** Options of {@linkcode keeperStateSource}. */
export interface KeeperSourceOptions {
  /** Keeper actor paths (or a function giving the current ones). */
  keepers: readonly string[] | (() => readonly string[]);
  /**
   * Where to get θ when no keeper holds the round (round 0 of a new run, or
   * keepers lagging past `waitMs`), typically the aggregators' source.
   */
  fallback?: StartStateSource;
  /** How long to wait for a keeper to get the round in flight, ms (default 5000). */
  waitMs?: number;
  /** Chunk size and retries of the fetch. */
  fetch?: Pick<FetchOptions, "chunkBytes" | "window" | "retries" | "timeoutMs" | "backoffMs">;
  /** Reports fetches and fallbacks. */
  onEvent?: (e: SourceEvent) => void;
}

/**
 * The run's start-state source served by checkpoint keepers: θ of the view's
 * round, fetched once per round (all shards share one fetch), verified
 * against the manifest bit for bit, then cut into the requested shard.
 *
 * @example
 * ```ts ignore
 * trainerBehavior({ ..., stateSource: keeperStateSource({ keepers: ["host/keepers/0"],
 *   fallback: aggregatorStateSource }) });
 * ```
 */
export function keeperStateSource(options: KeeperSourceOptions): StartStateSource {
  const cache = new Map<string, Promise<Float32Array | undefined>>();
  const keepers = () => typeof options.keepers === "function" ? options.keepers() : options.keepers;
  const waitMs = options.waitMs ?? 5000;

  const fetchTheta = async (
    ctx: ActorContext,
    view: ViewMsg,
  ): Promise<Float32Array | undefined> => {
    const deadline = performance.now() + waitMs;
    for (;;) {
      const list = keepers();
      const { candidates, missing } = await listCandidates(ctx.system, list, {
        run: view.run,
        round: view.round,
        timeoutMs: 3000,
      });
      if (candidates.length > 0) break;
      // Wait only while the round is in flight (a keeper holds the one before).
      const inFlight = missing.some((m) => m.newest === view.round - 1);
      if (!inFlight || performance.now() > deadline) {
        options.onEvent?.({
          type: "fallback",
          round: view.round,
          reason: `no keeper of ${list.length} holds round ${view.round}`,
        });
        return undefined;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const t0 = performance.now();
    const got = await fetchRound(ctx.system, keepers(), {
      run: view.run,
      round: view.round,
      paramsOnly: true,
      ...options.fetch,
    });
    const state = await decodeRound(got.manifest, got.files, { source: got.keepers.join(",") });
    options.onEvent?.({
      type: "fetched",
      round: got.round,
      keepers: got.keepers,
      bytes: got.bytes,
      resumed: got.resumed,
      ms: performance.now() - t0,
    });
    return state.params;
  };

  return {
    async startState(ctx, view, req): Promise<StateMsg> {
      const key = `${view.run}/${view.round}`;
      let p = cache.get(key);
      if (!p) {
        p = fetchTheta(ctx, view);
        cache.set(key, p);
        p.catch(() => cache.delete(key));
        for (const k of cache.keys()) if (cache.size > 2 && k !== key) cache.delete(k);
      }
      const theta = await p;
      if (!theta) {
        if (!options.fallback) {
          throw new FetchError(
            `Cannot fetch start state of round ${view.round}: no keeper holds it`,
          );
        }
        return options.fallback.startState(ctx, view, req);
      }
      if (theta.length !== view.params) {
        throw new FetchError(
          `Cannot use checkpoint round ${view.round}: it holds ${theta.length} parameters, the view ${view.params}`,
        );
      }
      const s = view.shards[req.shard];
      if (!s) throw new RangeError(`Cannot serve start state: no shard ${req.shard} in the view`);
      return {
        type: "state",
        run: view.run,
        round: view.round,
        shard: req.shard,
        theta: theta.slice(s.start, s.start + s.length),
      };
    },
  };
}
