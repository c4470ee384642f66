/**
 * How a keeper serves the rounds it holds to joiners and to restarted peers
 * while it keeps writing: manifests and chunks come from memory (the newest
 * prepared rounds, not necessarily durable yet) or from disk (a round read
 * back and verified on first use, then kept), and with a serving thread
 * (keeper_threads.ts) manifest replies also name its direct endpoint.
 *
 * @module
 */
import { type CheckpointStore, MANIFEST_FILE, type PreparedRound } from "../checkpoint/store.ts";
import {
  type KeeperChunkReply,
  type KeeperChunkRequest,
  type KeeperManifestReply,
  type KeeperMissingReply,
  MAX_CHUNK_BYTES,
} from "./keeper_protocol.ts";
import { type ServeAt, ServeThread } from "./keeper_threads.ts";

/** File names a keeper serves, for callers listing them. */
export const SERVED_FILES: readonly string[] = [
  "model.safetensors",
  "state.safetensors",
  MANIFEST_FILE,
];

/** Options of {@linkcode RoundServer}. */
export interface RoundServerOptions {
  /** Run id. */
  run: string;
  /** The keeper's actor path, named in replies. */
  id: string;
  /** The keeper's store (its run directory). */
  store: CheckpointStore;
  /** Hears of a durable round that could not be read back or did not verify. */
  onSkipped(round: number, reason: string): void;
}

/**
 * The rounds a keeper serves, and its answers to `keeper_manifest` and
 * `keeper_chunk` requests.
 *
 * @example
 * ```ts ignore
 * const server = new RoundServer({ run, id, store, onSkipped: (round, reason) => {} });
 * server.remember(await prepareRound(state));
 * const reply = await server.manifest(state.round);
 * ```
 */
export class RoundServer {
  #options: RoundServerOptions;
  /** Prepared rounds kept in memory for serving (newest two). */
  #prepared = new Map<number, PreparedRound>();
  /** A durable round read back and verified, for serving. */
  #served: PreparedRound | undefined;
  /** A read of a durable round in progress (concurrent requests share it). */
  #loading: { round: number; p: Promise<PreparedRound> } | undefined;
  #thread: ServeThread | undefined;

  /** A server of the rounds in `options.store`, with none in memory yet. */
  constructor(options: RoundServerOptions) {
    this.#options = options;
  }

  /** Also serves rounds from a low-priority thread (see `KeeperOptions.serve` in keeper.ts). */
  startThread(serve: ServeAt, duty: number, onFailed: (error: string) => void): void {
    this.#thread = new ServeThread(serve, duty, onFailed);
  }

  /** Whether a serving thread runs (it then wants rounds' bytes in shared memory). */
  get threaded(): boolean {
    return this.#thread !== undefined;
  }

  /** Keeps a prepared round in memory for serving (the newest two are kept). */
  remember(p: PreparedRound): void {
    const prepared = this.#prepared;
    prepared.set(p.round, p);
    for (const r of [...prepared.keys()].sort((a, b) => a - b).slice(0, -2)) prepared.delete(r);
    this.#keepServed();
  }

  /** Hands a prepared round (files in shared memory) to the serving thread, if any. */
  hold(p: PreparedRound): void {
    this.#thread?.hold(p);
  }

  /** Lets the serving thread drop the rounds this keeper no longer serves. */
  #keepServed(): void {
    this.#thread?.keep([...this.#prepared.keys(), ...(this.#served ? [this.#served.round] : [])]);
  }

  /** A round's bytes to serve: prepared in memory, or read back from disk and verified. */
  async #source(round: number): Promise<PreparedRound | undefined> {
    const { store } = this.#options;
    const p = this.#prepared.get(round);
    if (p) return p;
    if (this.#served?.round === round) return this.#served;
    if (!(await store.rounds()).includes(round)) return undefined;
    try {
      // With a serving thread, that thread reads and verifies the round, and then serves it.
      if (this.#loading?.round !== round) {
        const p = this.#thread
          ? this.#thread.load(store.dir, round).catch(() => store.readVerified(round))
          : store.readVerified(round);
        this.#loading = { round, p };
        p.catch(() => {}).finally(() => {
          if (this.#loading?.p === p) this.#loading = undefined;
        });
      }
      const loaded = await this.#loading.p;
      if (this.#prepared.has(round)) return this.#prepared.get(round);
      this.#served = loaded;
      this.#keepServed();
      return this.#served;
    } catch (err) {
      this.#options.onSkipped(round, String(err));
      return undefined;
    }
  }

  /** The newest round this keeper can serve, -1 when none. */
  async newest(): Promise<number> {
    const disk = (await this.#options.store.rounds()).at(-1) ?? -1;
    return Math.max(disk, ...this.#prepared.keys());
  }

  /** The answer to a `keeper_manifest` request for `round` (default: the newest). */
  async manifest(requested?: number): Promise<KeeperManifestReply | KeeperMissingReply> {
    const { run, id } = this.#options;
    const round = requested ?? await this.newest();
    const p = round >= 0 ? await this.#source(round) : undefined;
    if (!p) {
      return { type: "keeper_missing", run, keeper: id, round, newest: await this.newest() };
    }
    const direct = this.#thread?.endpoint(round);
    return {
      type: "keeper_manifest",
      run,
      keeper: id,
      manifest: p.manifest,
      ...(direct ? { direct } : {}),
    };
  }

  /** The answer to a `keeper_chunk` request: the chunk, or an error naming what is missing. */
  async chunk(
    msg: KeeperChunkRequest,
  ): Promise<KeeperChunkReply | { type: "error"; error: string }> {
    const p = await this.#source(msg.round);
    const file = p?.files.get(msg.file);
    if (!p || !file) {
      return {
        type: "error",
        error: `Keeper ${this.#options.id} does not hold ${msg.file} of round ${msg.round}`,
      };
    }
    if (msg.offset > file.length) {
      return {
        type: "error",
        error: `Offset ${msg.offset} is past the end of ${msg.file} (${file.length} bytes)`,
      };
    }
    return {
      type: "keeper_chunk",
      run: this.#options.run,
      round: msg.round,
      file: msg.file,
      offset: msg.offset,
      size: file.length,
      // A view, not a copy: served files are never changed, and the transport copies once.
      bytes: file.subarray(msg.offset, msg.offset + Math.min(msg.length, MAX_CHUNK_BYTES)),
    };
  }

  /** Stops the serving thread, if any. */
  async close(): Promise<void> {
    await this.#thread?.close();
  }
}
