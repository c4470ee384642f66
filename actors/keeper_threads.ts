/**
 * A keeper's two low-priority threads, as the keeper sees them: the writer
 * ({@linkcode WriterThread}, around checkpoint/_write_worker.ts) that
 * encodes, hashes and commits rounds off the keeper's event loop, and the
 * server ({@linkcode ServeThread}, around checkpoint/_serve_worker.ts) that
 * streams rounds' bytes to joiners over its own WebSocket listener. See
 * `KeeperOptions.writer` and `KeeperOptions.serve` in keeper.ts.
 *
 * @module
 */
import {
  CheckpointWriteError,
  type Manifest,
  MANIFEST_FILE,
  type PreparedRound,
  type Retention,
  type RoundState,
} from "../checkpoint/store.ts";
import type { DirectEndpoint } from "./keeper_protocol.ts";

/** A round written by a keeper's writer thread. */
export interface Written {
  manifest: Manifest;
  prepared: PreparedRound;
  /** The state's params and momentum arrays, handed back for reuse. */
  spare: Float32Array[];
  /** Of the write, the pauses its CPU budget took, ms. */
  yieldedMs: number;
}

/** A round as a thread posts it (`manifest`, and `files` by name) for the keeper. */
function preparedFrom(m: Record<string, unknown>): PreparedRound {
  const manifest = m.manifest as Manifest;
  const files = new Map(Object.entries(m.files as Record<string, Uint8Array>));
  return { round: manifest.round, manifest, files };
}

/** A writer thread (see `KeeperOptions.writer` in keeper.ts). */
export class WriterThread {
  #worker?: Worker;
  #duty: number;
  #next = 0;
  #pending = new Map<
    number,
    {
      resolve(w: Written): void;
      reject(e: Error): void;
      round: number;
      onPrepared?: (p: PreparedRound) => void;
    }
  >();

  /** A writer within `duty` of one core while the machine is busy; its Worker starts on first use. */
  constructor(duty: number) {
    this.#duty = duty;
  }

  /**
   * Has the thread commit `state` under `dir` (its arrays are transferred,
   * so the caller gives them up); `shared` puts the files' bytes in shared
   * memory, for a serving thread. With `shared`, `onPrepared` hears of the
   * encoded round (its files in shared memory) before it is written.
   */
  write(
    dir: string,
    retention: Partial<Retention> | undefined,
    state: RoundState,
    shared = false,
    onPrepared?: (p: PreparedRound) => void,
  ): Promise<Written> {
    // The arrays are the keeper's own copies (assembled from pieces): hand them over.
    const buffers = new Set<ArrayBuffer>();
    for (const x of [state.params, state.momentum, state.residual]) {
      if (x && x.byteOffset === 0 && x.byteLength === x.buffer.byteLength) {
        buffers.add(x.buffer as ArrayBuffer);
      }
    }
    const announce = shared && onPrepared !== undefined;
    return this.#post(
      { dir, retention, state, shared, announce },
      state.round,
      [...buffers],
      onPrepared,
    );
  }

  /**
   * Has the thread write `prepared`, a round another keeper's writer encoded
   * (its files in shared memory, so nothing is copied), under `dir`.
   */
  commit(
    dir: string,
    retention: Partial<Retention> | undefined,
    prepared: PreparedRound,
  ): Promise<Written> {
    const files = Object.fromEntries(prepared.files);
    return this.#post(
      { dir, retention, prepared: { manifest: prepared.manifest, files } },
      prepared.round,
      [],
    );
  }

  #post(
    request: Record<string, unknown>,
    round: number,
    transfer: ArrayBuffer[],
    onPrepared?: (p: PreparedRound) => void,
  ): Promise<Written> {
    if (!this.#worker) {
      const w = new Worker(new URL("../checkpoint/_write_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (ev: MessageEvent<Record<string, unknown>>) => {
        const r = ev.data;
        const p = this.#pending.get(r.id as number);
        if (!p) return;
        if (r.op === "prepared") {
          p.onPrepared?.(preparedFrom(r));
          return;
        }
        this.#pending.delete(r.id as number);
        if (r.ok) {
          const prepared = preparedFrom(r);
          const spare = (r.spare ?? []) as Float32Array[];
          const yieldedMs = (r.yieldedMs as number) ?? 0;
          p.resolve({ manifest: prepared.manifest, prepared, spare, yieldedMs });
        } else if (r.write) {
          p.reject(new CheckpointWriteError(p.round, String(r.code), String(r.error)));
        } else p.reject(new Error(String(r.error)));
      };
      w.onerror = (ev: ErrorEvent) => {
        ev.preventDefault();
        for (const p of this.#pending.values()) {
          p.reject(new Error(`Checkpoint writer thread failed: ${ev.message}`));
        }
        this.#pending.clear();
        this.#worker?.terminate();
        this.#worker = undefined;
      };
      this.#worker = w;
    }
    const id = ++this.#next;
    const done = new Promise<Written>((resolve, reject) =>
      this.#pending.set(id, { resolve, reject, round, onPrepared })
    );
    this.#worker.postMessage({ id, ...request, duty: this.#duty }, { transfer });
    return done;
  }

  /** Stops the thread; writes in flight are rejected. */
  close(): void {
    for (const p of this.#pending.values()) p.reject(new Error("Checkpoint writer stopped"));
    this.#pending.clear();
    this.#worker?.terminate();
    this.#worker = undefined;
  }
}

/** Where a keeper's serving thread listens (see `KeeperOptions.serve` in keeper.ts). */
export interface ServeAt {
  hostname: string;
  port?: number;
  advertise?: string;
}

/** A keeper's serving thread (see `KeeperOptions.serve` in keeper.ts). */
export class ServeThread {
  #worker: Worker;
  #endpoint?: DirectEndpoint;
  #closed = Promise.withResolvers<void>();
  #next = 0;
  #loads = new Map<number, { resolve(p: PreparedRound): void; reject(e: Error): void }>();
  /** Rounds the thread holds. */
  readonly rounds = new Set<number>();

  /** Starts the thread's listener; `onFailed` hears why it failed, when it does. */
  constructor(
    serve: ServeAt,
    duty: number,
    onFailed: (error: string) => void,
  ) {
    const ticket = Array.from(
      crypto.getRandomValues(new Uint8Array(16)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    const wildcard = ["0.0.0.0", "::", "[::]", ""].includes(serve.hostname);
    const host = serve.advertise ?? (wildcard ? undefined : serve.hostname);
    this.#worker = new Worker(new URL("../checkpoint/_serve_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker.onmessage = (ev: MessageEvent<Record<string, unknown>>) => {
      const m = ev.data;
      if (m.op === "listening") {
        this.#endpoint = { port: m.port as number, ticket, ...(host ? { host } : {}) };
      } else if (m.op === "failed") onFailed(String(m.error));
      else if (m.op === "closed") this.#closed.resolve();
      else if (m.op === "loaded") {
        const p = this.#loads.get(m.id as number);
        this.#loads.delete(m.id as number);
        if (!p) return;
        if (!m.ok) return p.reject(new Error(String(m.error)));
        p.resolve(preparedFrom(m));
      }
    };
    this.#worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.#endpoint = undefined;
      onFailed(ev.message);
      this.#fail(new Error(`Checkpoint serving thread failed: ${ev.message}`));
      this.#closed.resolve();
    };
    this.#worker.postMessage({
      op: "start",
      hostname: serve.hostname,
      port: serve.port ?? 0,
      ticket,
      duty,
    });
  }

  /** The endpoint for `round`, when the thread listens and holds it. */
  endpoint(round: number): DirectEndpoint | undefined {
    return this.rounds.has(round) ? this.#endpoint : undefined;
  }

  /** Hands a prepared round (files in shared memory) to the thread. */
  hold(p: PreparedRound): void {
    const files: Record<string, Uint8Array> = {};
    for (const [name, bytes] of p.files) {
      if (name !== MANIFEST_FILE && bytes.buffer instanceof SharedArrayBuffer) files[name] = bytes;
    }
    if (Object.keys(files).length === 0) return;
    this.#worker.postMessage({ op: "round", round: p.round, files });
    this.rounds.add(p.round);
  }

  /**
   * Has the thread read a committed round from disk into shared memory and
   * verify it (see `CheckpointStore.readVerified`); it then holds it.
   */
  load(dir: string, round: number): Promise<PreparedRound> {
    const id = ++this.#next;
    const done = new Promise<PreparedRound>((resolve, reject) =>
      this.#loads.set(id, { resolve, reject })
    );
    this.#worker.postMessage({ op: "load", id, dir, round });
    return done.then((p) => {
      this.rounds.add(round);
      return p;
    });
  }

  /** Drops every round but `keep`. */
  keep(keep: readonly number[]): void {
    const before = this.rounds.size;
    for (const r of this.rounds) if (!keep.includes(r)) this.rounds.delete(r);
    if (this.rounds.size !== before) {
      this.#worker.postMessage({ op: "keep", rounds: [...this.rounds] });
    }
  }

  #fail(err: Error): void {
    for (const p of this.#loads.values()) p.reject(err);
    this.#loads.clear();
  }

  /** Stops the listener and the thread (waiting at most 2 s for a clean close). */
  async close(): Promise<void> {
    this.#endpoint = undefined;
    this.#fail(new Error("Checkpoint serving thread stopped"));
    this.#worker.postMessage({ op: "close" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#closed.promise,
      new Promise((r) => timer = setTimeout(r, 2000)),
    ]);
    clearTimeout(timer);
    this.#worker.terminate();
  }
}
