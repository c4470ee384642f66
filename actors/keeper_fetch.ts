/**
 * Fetching a round from keepers, for a joiner or a restarted keeper: every
 * keeper is asked for the round's manifest ({@linkcode listCandidates}),
 * then the files come from a keeper chosen automatically
 * ({@linkcode fetchRound}): from its direct endpoint when it names one
 * (keeper_direct.ts), else or for the rest in chunk requests over the actor
 * protocol, resuming at the same offset after a broken connection (on the
 * same keeper or another one holding the same bytes), every file verified
 * against the manifest's sha256 before use.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ActorSystem } from "./runtime/system.ts";
import {
  CorruptCheckpointError,
  type Manifest,
  MANIFEST_FILE,
  parseManifest,
  type PreparedRound,
  ROUND_FILES,
  sha256Hex,
} from "../checkpoint/store.ts";
import {
  type DirectEndpoint,
  type KeeperMissingReply,
  MAX_CHUNK_BYTES,
} from "./keeper_protocol.ts";
import { directFetch, directOf, directUrl } from "./keeper_direct.ts";

/**
 * Default chunk a fetch asks for: 4 MiB (fewer round trips; the transport cuts
 * it into its own frames).
 */
export const DEFAULT_CHUNK_BYTES = 4 << 20;

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
