/**
 * The checkpoint keeper actor, the commit coordinator, and the slot through
 * which aggregators feed keepers.
 *
 * A keeper takes each round's state off the training path: aggregators
 * `tell` it the pieces ({@linkcode KeeperFeedSlot}) and go on; the keeper
 * assembles a round, then encodes, hashes and writes it in its own async flow
 * with a bounded queue (a newer complete round supersedes an older one still
 * waiting). While a round is being written the keeper keeps answering: it
 * serves manifests and chunks of any round it holds, from memory (prepared,
 * not yet durable) or from disk (verified on first use).
 *
 * Replication: each keeper tells the commit coordinator which round it holds
 * durably (`keeper_ack`, repeated every `ackIntervalMs` so that a restarted
 * coordinator rebuilds from the keepers); the coordinator reports a round
 * committed once `minReplicas` keepers hold the same θ (default 2 when there
 * are two or more keepers, else 1). A keeper that cannot write reports
 * `keeper_failed` and the run goes on with the others. A restarted keeper
 * loads its newest verified round and catches up from its peers (fetching
 * the newest round they hold, verified against the manifest).
 *
 * @module
 */
import type { ActorContext, Behavior } from "./runtime/behavior.ts";
import type { ActorSystem } from "./runtime/system.ts";
import type { AggregatorState } from "./aggregation.ts";
import { type KeeperSlot, MemoryKeeperSlot } from "./aggregator.ts";
import type { GptConfig } from "../kernels/config.ts";
import { checkDuty, DEFAULT_DUTY } from "../checkpoint/_background.ts";
import {
  CheckpointStore,
  CheckpointWriteError,
  type Manifest,
  MANIFEST_FILE,
  type PreparedRound,
  prepareRound,
  type Retention,
  type RoundState,
  type StoreFs,
} from "../checkpoint/store.ts";
import {
  type DirectEndpoint,
  fetchRound,
  type KeeperAckMsg,
  type KeeperChunkReply,
  type KeeperCommittedMsg,
  type KeeperFailedMsg,
  type KeeperManifestReply,
  type KeeperMessage,
  type KeeperMissingReply,
  type KeeperPieceMsg,
  listCandidates,
  MAX_CHUNK_BYTES,
  validateKeeperMessage,
  type ValidateOptions,
} from "./keeper_transfer.ts";

/** What a keeper reports. */
export type KeeperEvent =
  | {
    type: "written";
    keeper: string;
    round: number;
    params_hash: string;
    ms: number;
    /** Of `ms`, the writer's pauses for its CPU budget (trainers kept the cores busy). */
    yielded_ms?: number;
  }
  | { type: "write_failed"; keeper: string; round: number; code: string; error: string }
  | { type: "superseded"; keeper: string; round: number; by: number }
  | { type: "recovered"; keeper: string; round: number }
  | { type: "skipped"; keeper: string; round: number; reason: string }
  | { type: "caught_up"; keeper: string; round: number; from: string[] }
  | { type: "refused"; keeper: string; error: string }
  | { type: "direct_failed"; keeper: string; error: string };

/** Options of {@linkcode keeperBehavior}. */
export interface KeeperOptions {
  /** Run id. */
  run: string;
  /** This keeper's actor path (peers and the coordinator know it by that). */
  id: string;
  /** The run directory this keeper owns (runs/<name> on its node). */
  dir: string;
  /** The model shape, unless pieces carry it. */
  config?: GptConfig;
  /** Run settings stored with every round (JSON data). */
  settings?: Record<string, unknown>;
  /** The commit coordinator's actor path. */
  coordinator?: string;
  /** The other keepers' paths, for catch-up after a restart. */
  peers?: readonly string[] | (() => readonly string[]);
  /** Retention of the store (default: last 3 and every 10th). */
  retention?: Partial<Retention>;
  /** File operations (tests inject failing ones). */
  fs?: StoreFs;
  /** Complete rounds waiting to be written; older ones are superseded (default 2). */
  maxPending?: number;
  /** How often the newest durable round is re-acked to the coordinator, ms (default 2000). */
  ackIntervalMs?: number;
  /**
   * Where rounds are encoded, hashed and written: "inline" on the keeper's
   * event loop (default; required with a custom `fs`), or "worker": a
   * writer thread at the lowest CPU priority (checkpoint/_write_worker.ts),
   * so that trainers computing on the same CPU keep their speed.
   */
  writer?: "inline" | "worker";
  /**
   * Also serve joiners' fetches of the rounds this keeper wrote from a
   * low-priority thread with its own WebSocket listener on `hostname` (port
   * `port`, default any free one), so that a join costs the host's event loop
   * and trainers next to nothing. Manifest replies name the port and a
   * random ticket; a joiner dials the host name it reaches this node by
   * (`advertise` instead, when set). Needs `writer: "worker"`; without it,
   * or when the direct path fails, fetches use the actor protocol.
   */
  serve?: { hostname: string; port?: number; advertise?: string };
  /**
   * Share of one core the writer and serving threads may use while other
   * work keeps most of the machine's cores busy, in (0, 1] (default 0.05; 1:
   * no limit). On an idle machine they run flat out. See _background.ts.
   */
  backgroundDuty?: number;
  /** Receives the keeper's reports. */
  onEvent?: (e: KeeperEvent) => void;
}

/** A round written by a keeper's writer thread. */
interface Written {
  manifest: Manifest;
  prepared: PreparedRound;
  /** The state's params and momentum arrays, handed back for reuse. */
  spare: Float32Array[];
  /** Of the write, the pauses its CPU budget took, ms. */
  yieldedMs: number;
}

/** A writer thread (see {@linkcode KeeperOptions.writer}). */
class WriterThread {
  #worker?: Worker;
  #duty: number;
  #next = 0;
  #pending = new Map<
    number,
    { resolve(w: Written): void; reject(e: Error): void; round: number }
  >();

  constructor(duty: number) {
    this.#duty = duty;
  }

  write(
    dir: string,
    retention: Partial<Retention> | undefined,
    state: RoundState,
    shared = false,
  ): Promise<Written> {
    if (!this.#worker) {
      const w = new Worker(new URL("../checkpoint/_write_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (ev: MessageEvent<Record<string, unknown>>) => {
        const r = ev.data;
        const p = this.#pending.get(r.id as number);
        if (!p) return;
        this.#pending.delete(r.id as number);
        if (r.ok) {
          const manifest = r.manifest as Manifest;
          const files = new Map(Object.entries(r.files as Record<string, Uint8Array>));
          const spare = (r.spare ?? []) as Float32Array[];
          const yieldedMs = (r.yieldedMs as number) ?? 0;
          p.resolve({
            manifest,
            prepared: { round: manifest.round, manifest, files },
            spare,
            yieldedMs,
          });
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
      this.#pending.set(id, { resolve, reject, round: state.round })
    );
    // The arrays are the keeper's own copies (assembled from pieces): hand them over.
    const buffers = new Set<ArrayBuffer>();
    for (const x of [state.params, state.momentum, state.residual]) {
      if (x && x.byteOffset === 0 && x.byteLength === x.buffer.byteLength) {
        buffers.add(x.buffer as ArrayBuffer);
      }
    }
    this.#worker.postMessage({ id, dir, retention, state, shared, duty: this.#duty }, {
      transfer: [...buffers],
    });
    return done;
  }

  close(): void {
    for (const p of this.#pending.values()) p.reject(new Error("Checkpoint writer stopped"));
    this.#pending.clear();
    this.#worker?.terminate();
    this.#worker = undefined;
  }
}

/** A keeper's serving thread (see {@linkcode KeeperOptions.serve}). */
class ServeThread {
  #worker: Worker;
  #endpoint?: DirectEndpoint;
  #closed = Promise.withResolvers<void>();
  #next = 0;
  #loads = new Map<number, { resolve(p: PreparedRound): void; reject(e: Error): void }>();
  /** Rounds the thread holds. */
  readonly rounds = new Set<number>();

  constructor(
    serve: NonNullable<KeeperOptions["serve"]>,
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
        const manifest = m.manifest as Manifest;
        const files = new Map(Object.entries(m.files as Record<string, Uint8Array>));
        p.resolve({ round: manifest.round, manifest, files });
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
   * verify it (see {@linkcode CheckpointStore.readVerified}); it then holds it.
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

interface Assembly {
  total: number;
  params: Float32Array;
  momentum: Float32Array;
  residual?: Float32Array;
  pieces: Map<number, number>;
  covered: number;
  view?: unknown;
  cursors: Record<string, unknown>;
  config?: GptConfig;
  settings?: Record<string, unknown>;
}

type Control =
  | { type: "_tick" }
  | { type: "_written"; manifest: Manifest; ms: number; yieldedMs?: number }
  | { type: "_write_failed"; round: number; code: string; error: string }
  | { type: "keeper_status" }
  | { type: "crash"; reason: string };

function parse(
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

/** Rounds of assembly kept at once; older incomplete ones are dropped. */
const MAX_ASSEMBLING = 3;

function viewEpoch(v: unknown): number {
  const e = (v as { epoch?: unknown })?.epoch;
  return typeof e === "number" ? e : -1;
}

/**
 * The keeper's behavior; a fresh one per (re)start, so nothing is assumed to
 * survive in memory: a restart recovers from disk and from peers.
 *
 * @example
 * ```ts ignore
 * await system.spawn(keeperBehavior({ run: "r", id: "host/keepers/0", dir: "runs/r",
 *   config, coordinator: "host/keepers/commit" }), { name: "keepers/0" });
 * ```
 */
export function keeperBehavior(options: KeeperOptions): Behavior {
  const { run, id } = options;
  const store = new CheckpointStore(options.dir, { retention: options.retention, fs: options.fs });
  const duty = checkDuty(
    options.backgroundDuty ?? DEFAULT_DUTY,
    "Invalid keeper options: backgroundDuty",
  );
  const writer = options.writer === "worker" && !options.fs ? new WriterThread(duty) : undefined;
  let serving: ServeThread | undefined;
  const maxPending = Math.max(1, options.maxPending ?? 2);
  const emit = (e: KeeperEvent) => options.onEvent?.(e);
  const assembling = new Map<number, Assembly>();
  const pending: RoundState[] = [];
  /** Prepared rounds kept in memory for serving (newest two). */
  const prepared = new Map<number, PreparedRound>();
  /** A durable round read back and verified, for serving. */
  let served: PreparedRound | undefined;
  /** A read of a durable round in progress (concurrent requests share it). */
  let loading: { round: number; p: Promise<PreparedRound> } | undefined;
  let durable: Manifest | undefined;
  let committed: KeeperCommittedMsg | undefined;
  /** The newest round taken (complete) in any form: pieces of older rounds are stale. */
  let newestTaken = -1;
  let flow: Promise<void> | undefined;
  /** The round being written, -1 when none. */
  let writing = -1;
  let stopping = false;
  const failures: { round: number; code: string; error: string }[] = [];

  const peers = () =>
    (typeof options.peers === "function" ? options.peers() : options.peers ?? []).filter((p) =>
      p !== id
    );

  const ack = (ctx: ActorContext) => {
    if (!options.coordinator || !durable) return;
    const msg: KeeperAckMsg = {
      type: "keeper_ack",
      run,
      round: durable.round,
      keeper: id,
      params_hash: durable.params_hash,
    };
    try {
      ctx.system.ref(options.coordinator).tell(msg);
    } catch { /* the next tick tries again */ }
  };

  /** Lets the serving thread drop the rounds this keeper no longer serves. */
  const keepServed = () => {
    serving?.keep([...prepared.keys(), ...(served ? [served.round] : [])]);
  };

  const remember = (p: PreparedRound) => {
    prepared.set(p.round, p);
    for (const r of [...prepared.keys()].sort((a, b) => a - b).slice(0, -2)) prepared.delete(r);
    keepServed();
  };

  const kick = (ctx: ActorContext) => {
    if (flow) return;
    flow = (async () => {
      while (pending.length > 0 && !stopping) {
        const state = pending.shift()!;
        writing = state.round;
        const t0 = performance.now();
        try {
          let manifest: Manifest;
          let yieldedMs: number | undefined;
          if (writer) {
            const w = await writer.write(options.dir, options.retention, state, !!serving);
            remember(w.prepared);
            serving?.hold(w.prepared);
            for (const x of w.spare) if (spare.length < 4) spare.push(x);
            manifest = w.manifest;
            yieldedMs = w.yieldedMs;
          } else {
            const p = await prepareRound(state);
            remember(p);
            manifest = await store.commit(p);
          }
          ctx.self.tell({ type: "_written", manifest, ms: performance.now() - t0, yieldedMs });
        } catch (err) {
          const code = err instanceof CheckpointWriteError ? err.code : "EINVAL";
          ctx.self.tell({
            type: "_write_failed",
            round: state.round,
            code,
            error: err instanceof Error ? err.message : String(err),
          });
        }
      }
    })().finally(() => {
      flow = undefined;
      writing = -1;
      if (pending.length > 0 && !stopping) kick(ctx);
    });
  };

  const enqueue = (ctx: ActorContext, state: RoundState) => {
    newestTaken = Math.max(newestTaken, state.round);
    pending.push(state);
    pending.sort((a, b) => a.round - b.round);
    while (pending.length > maxPending) {
      const old = pending.shift()!;
      emit({ type: "superseded", keeper: id, round: old.round, by: pending.at(-1)!.round });
    }
    kick(ctx);
  };

  /**
   * Arrays the writer thread handed back. A round is written only once its
   * pieces cover every element, so a reused array needs no clearing.
   */
  const spare: Float32Array[] = [];
  const reuse = (n: number): Float32Array => {
    const at = spare.findIndex((x) => x.length === n);
    return at >= 0 ? spare.splice(at, 1)[0] : new Float32Array(n);
  };

  const takePiece = (ctx: ActorContext, m: KeeperPieceMsg) => {
    if (m.round <= newestTaken) return; // done already (or stale)
    let a = assembling.get(m.round);
    if (!a) {
      a = {
        total: m.total,
        params: reuse(m.total),
        momentum: reuse(m.total),
        pieces: new Map(),
        covered: 0,
        cursors: {},
      };
      assembling.set(m.round, a);
      for (const r of [...assembling.keys()].sort((x, y) => x - y).slice(0, -MAX_ASSEMBLING)) {
        assembling.delete(r);
      }
    }
    if (a.total !== m.total) {
      emit({
        type: "refused",
        keeper: id,
        error: `piece of round ${m.round} says ${m.total} parameters, earlier pieces ${a.total}`,
      });
      return;
    }
    const n = m.params.length;
    const prev = a.pieces.get(m.start);
    if (prev === undefined) {
      for (const [s, len] of a.pieces) {
        if (m.start < s + len && s < m.start + n) {
          emit({
            type: "refused",
            keeper: id,
            error: `piece [${m.start}, ${m.start + n}) of round ${m.round} overlaps [${s}, ${
              s + len
            })`,
          });
          return;
        }
      }
      a.pieces.set(m.start, n);
      a.covered += n;
    } else if (prev !== n) {
      emit({
        type: "refused",
        keeper: id,
        error: `piece at ${m.start} of round ${m.round} has ${n} floats, earlier ${prev}`,
      });
      return;
    }
    a.params.set(m.params, m.start);
    a.momentum.set(m.momentum, m.start);
    if (m.residual) {
      a.residual ??= new Float32Array(m.total);
      a.residual.set(m.residual, m.start);
    }
    if (m.view !== undefined && viewEpoch(m.view) >= viewEpoch(a.view)) a.view = m.view;
    Object.assign(a.cursors, m.cursors ?? {});
    a.config ??= m.config;
    a.settings ??= m.settings;
    if (a.covered < a.total) return;
    assembling.delete(m.round);
    for (const r of assembling.keys()) if (r < m.round) assembling.delete(r);
    const config = a.config ?? options.config;
    if (!config) {
      emit({ type: "refused", keeper: id, error: `round ${m.round} has no model config` });
      return;
    }
    enqueue(ctx, {
      run,
      round: m.round,
      config,
      params: a.params,
      momentum: a.momentum,
      ...(a.residual ? { residual: a.residual } : {}),
      view: a.view,
      cursors: a.cursors,
      settings: a.settings ?? options.settings ?? {},
    });
  };

  /** A round's bytes to serve: prepared in memory, or read back from disk and verified. */
  const source = async (round: number): Promise<PreparedRound | undefined> => {
    const p = prepared.get(round);
    if (p) return p;
    if (served?.round === round) return served;
    if (!(await store.rounds()).includes(round)) return undefined;
    try {
      // With a serving thread, that thread reads and verifies the round, and then serves it.
      if (loading?.round !== round) {
        const p = serving
          ? serving.load(options.dir, round).catch(() => store.readVerified(round))
          : store.readVerified(round);
        loading = { round, p };
        p.catch(() => {}).finally(() => {
          if (loading?.p === p) loading = undefined;
        });
      }
      const loaded = await loading.p;
      if (prepared.has(round)) return prepared.get(round);
      served = loaded;
      keepServed();
      return served;
    } catch (err) {
      emit({ type: "skipped", keeper: id, round, reason: String(err) });
      return undefined;
    }
  };

  const newestServable = async (): Promise<number> => {
    const disk = (await store.rounds()).at(-1) ?? -1;
    return Math.max(disk, ...prepared.keys());
  };

  const recover = async (ctx: ActorContext) => {
    try {
      await store.cleanup().catch(() => {});
      const latest = await store.loadLatest({
        onSkip: (s) => emit({ type: "skipped", keeper: id, round: s.round, reason: s.reason }),
      });
      if (latest) {
        durable = latest.manifest;
        newestTaken = Math.max(newestTaken, latest.manifest.round);
        emit({ type: "recovered", keeper: id, round: latest.manifest.round });
        ack(ctx);
      }
      const others = peers();
      if (others.length === 0 || stopping) return;
      const { candidates } = await listCandidates(ctx.system, others, { run, timeoutMs: 3000 });
      const best = candidates[0]?.manifest.round;
      if (best === undefined || (durable && best <= durable.round) || stopping) return;
      const got = await fetchRound(ctx.system, others, { run, round: best });
      if (stopping) return;
      remember(got);
      const manifest = await store.commit(got);
      newestTaken = Math.max(newestTaken, manifest.round);
      emit({ type: "caught_up", keeper: id, round: manifest.round, from: got.keepers });
      ctx.self.tell({ type: "_written", manifest, ms: 0 });
    } catch (err) {
      const code = err instanceof CheckpointWriteError ? err.code : "EIO";
      ctx.self.tell({ type: "_write_failed", round: -1, code, error: String(err) });
    }
  };

  return {
    started(ctx) {
      if (options.serve && writer) {
        serving = new ServeThread(options.serve, duty, (error) => {
          emit({ type: "direct_failed", keeper: id, error });
        });
      }
      ctx.timers.interval(options.ackIntervalMs ?? 2000, { type: "_tick" }, { key: "tick" });
      // Recovery runs beside the mailbox: pieces and requests are served meanwhile.
      flow = recover(ctx).finally(() => {
        flow = undefined;
        if (pending.length > 0 && !stopping) kick(ctx);
      });
    },
    async stopped() {
      stopping = true;
      // Let a write in progress finish (bounded by the actor's shutdown timeout).
      await flow;
      writer?.close();
      await serving?.close();
    },
    async receive(raw: unknown, ctx) {
      // Anything else falls through to the wire protocol below.
      const ctl = raw as Control | { type: "" };
      switch (ctl?.type) {
        case "_tick":
          ack(ctx);
          return;
        case "_written":
          if (!durable || ctl.manifest.round >= durable.round) durable = ctl.manifest;
          emit({
            type: "written",
            keeper: id,
            round: ctl.manifest.round,
            params_hash: ctl.manifest.params_hash,
            ms: ctl.ms,
            ...(ctl.yieldedMs !== undefined ? { yielded_ms: ctl.yieldedMs } : {}),
          });
          ack(ctx);
          return;
        case "_write_failed": {
          failures.push({ round: ctl.round, code: ctl.code, error: ctl.error });
          if (failures.length > 16) failures.shift();
          emit({
            type: "write_failed",
            keeper: id,
            round: ctl.round,
            code: ctl.code,
            error: ctl.error,
          });
          if (options.coordinator && ctl.round >= 0) {
            const msg: KeeperFailedMsg = {
              type: "keeper_failed",
              run,
              round: ctl.round,
              keeper: id,
              code: ctl.code,
              error: ctl.error,
            };
            try {
              ctx.system.ref(options.coordinator).tell(msg);
            } catch { /* reported by the event already */ }
          }
          return;
        }
        case "keeper_status":
          return {
            type: "keeper_status",
            keeper: id,
            durable: durable?.round ?? -1,
            params_hash: durable?.params_hash,
            committed: committed?.round ?? -1,
            pending: pending.map((s) => s.round),
            writing,
            assembling: [...assembling.keys()],
            rounds: await store.rounds(),
            failures: [...failures],
          };
        case "crash":
          throw new Error(`Keeper crashed on purpose: ${ctl.reason}`);
      }
      // With a writer thread, that thread checks that a round's floats are finite.
      const parsed = parse(raw, run, { checkFinite: !writer });
      if ("error" in parsed) {
        emit({ type: "refused", keeper: id, error: parsed.error });
        return { type: "error", error: parsed.error };
      }
      const msg = parsed.msg;
      switch (msg.type) {
        case "keeper_piece":
          takePiece(ctx, msg);
          return;
        case "keeper_committed":
          if (!committed || msg.round > committed.round) committed = msg;
          return;
        case "keeper_manifest": {
          const round = msg.round ?? await newestServable();
          const p = round >= 0 ? await source(round) : undefined;
          if (!p) {
            const reply: KeeperMissingReply = {
              type: "keeper_missing",
              run,
              keeper: id,
              round,
              newest: await newestServable(),
            };
            return reply;
          }
          const direct = serving?.endpoint(round);
          const reply: KeeperManifestReply = {
            type: "keeper_manifest",
            run,
            keeper: id,
            manifest: p.manifest,
            ...(direct ? { direct } : {}),
          };
          return reply;
        }
        case "keeper_chunk": {
          const p = await source(msg.round);
          const file = p?.files.get(msg.file);
          if (!p || !file) {
            return {
              type: "error",
              error: `Keeper ${id} does not hold ${msg.file} of round ${msg.round}`,
            };
          }
          if (msg.offset > file.length) {
            return {
              type: "error",
              error: `Offset ${msg.offset} is past the end of ${msg.file} (${file.length} bytes)`,
            };
          }
          const reply: KeeperChunkReply = {
            type: "keeper_chunk",
            run,
            round: msg.round,
            file: msg.file,
            offset: msg.offset,
            size: file.length,
            // A view, not a copy: served files are never changed, and the transport copies once.
            bytes: file.subarray(msg.offset, msg.offset + Math.min(msg.length, MAX_CHUNK_BYTES)),
          };
          return reply;
        }
        default: {
          const error = `Keeper cannot handle a "${msg.type}" message`;
          emit({ type: "refused", keeper: id, error });
          return { type: "error", error };
        }
      }
    },
  };
}

/** What the commit coordinator reports. */
export type CommitEvent =
  | { type: "committed"; round: number; params_hash: string; holders: string[] }
  | { type: "write_failed"; keeper: string; round: number; code: string; error: string }
  | { type: "conflict"; round: number; hashes: Record<string, string> };

/** Options of {@linkcode commitCoordinatorBehavior}. */
export interface CoordinatorOptions {
  /** Run id. */
  run: string;
  /** The keepers' paths (or a function giving the current ones). */
  keepers: readonly string[] | (() => readonly string[]);
  /** Keepers that must hold a round before it is committed (default 2 with ≥ 2 keepers, else 1). */
  minReplicas?: number;
  /** Receives commits and failures. */
  onEvent?: (e: CommitEvent) => void;
}

/** The default replica count for `keepers` keepers. */
export function defaultMinReplicas(keepers: number): number {
  return keepers >= 2 ? 2 : 1;
}

/**
 * The commit coordinator: counts keepers' acks per round and reports a round
 * committed once `minReplicas` keepers hold the same θ. Its state is rebuilt
 * from the keepers' periodic acks after a restart. Ask it
 * `{ type: "commit_status" }` for the newest committed round.
 *
 * @example
 * ```ts ignore
 * await system.spawn(commitCoordinatorBehavior({ run: "r", keepers: ["a/k", "b/k"],
 *   onEvent: (e) => console.log(e) }), { name: "keepers/commit" });
 * ```
 */
export function commitCoordinatorBehavior(options: CoordinatorOptions): Behavior {
  const keepers = () => typeof options.keepers === "function" ? options.keepers() : options.keepers;
  const acks = new Map<number, Map<string, string>>();
  let committed: KeeperCommittedMsg | undefined;
  const emit = (e: CommitEvent) => options.onEvent?.(e);
  return {
    receive(raw: unknown, ctx) {
      if ((raw as { type?: string })?.type === "commit_status") {
        return committed ?? { type: "keeper_committed", run: options.run, round: -1, holders: [] };
      }
      const parsed = parse(raw, options.run);
      if ("error" in parsed) return { type: "error", error: parsed.error };
      const msg = parsed.msg;
      if (msg.type === "keeper_failed") {
        emit({
          type: "write_failed",
          keeper: msg.keeper,
          round: msg.round,
          code: msg.code,
          error: msg.error,
        });
        return;
      }
      if (msg.type !== "keeper_ack") {
        return { type: "error", error: `Coordinator cannot handle a "${msg.type}" message` };
      }
      return take(ctx, msg);
    },
  };
  function take(ctx: ActorContext, msg: KeeperAckMsg): void {
    let m = acks.get(msg.round);
    if (!m) acks.set(msg.round, m = new Map());
    m.set(msg.keeper, msg.params_hash);
    const hashes = new Set(m.values());
    if (hashes.size > 1) {
      emit({ type: "conflict", round: msg.round, hashes: Object.fromEntries(m) });
    }
    const holders = [...m].filter(([, h]) => h === msg.params_hash).map(([k]) => k).sort();
    const need = options.minReplicas ?? defaultMinReplicas(keepers().length);
    if (holders.length < need || (committed && msg.round <= committed.round)) return;
    committed = {
      type: "keeper_committed",
      run: options.run,
      round: msg.round,
      params_hash: msg.params_hash,
      holders,
    };
    emit({ type: "committed", round: msg.round, params_hash: msg.params_hash, holders });
    for (const k of new Set([...keepers(), ...holders])) {
      try {
        ctx.system.ref(k).tell(committed);
      } catch { /* keepers learn it from the next commit */ }
    }
    for (const r of acks.keys()) if (r < msg.round) acks.delete(r);
  }
}

/** Options of {@linkcode KeeperFeedSlot}. */
export interface FeedSlotOptions {
  /** The system the aggregators run on. */
  system: ActorSystem;
  /** Run id. */
  run: string;
  /** Keeper paths (or a function giving the current ones). */
  keepers: readonly string[] | (() => readonly string[]);
  /** The model shape, sent with every piece. */
  config?: GptConfig;
  /** Length of the flat vector (default: from the state's view). */
  total?: number;
  /** Data cursors by trainer id at the start of a round, if known. */
  cursors?: (round: number) => Record<string, unknown> | undefined;
  /** Run settings sent with every piece. */
  settings?: Record<string, unknown>;
}

/**
 * A {@linkcode KeeperSlot} for aggregators that also sends every saved shard
 * state to the keepers as a {@linkcode KeeperPieceMsg}: a `tell`, so the
 * aggregator never waits on a keeper or a disk.
 *
 * @example
 * ```ts ignore
 * const slot = new KeeperFeedSlot({ system, run, keepers: ["host/keepers/0"], config });
 * aggregatorBehavior({ ..., slot });
 * ```
 */
export class KeeperFeedSlot implements KeeperSlot {
  #memory = new MemoryKeeperSlot();
  #options: FeedSlotOptions;
  /** Pieces that could not be sent (bad path, no connection). */
  dropped = 0;

  /** Creates the slot. */
  constructor(options: FeedSlotOptions) {
    this.#options = options;
  }

  /** Saves a shard's state and sends it to every keeper. */
  save(state: AggregatorState): void {
    this.#memory.save(state);
    const o = this.#options;
    const total = o.total ?? state.view?.params;
    if (total === undefined) {
      this.dropped++;
      return;
    }
    const cursors = o.cursors?.(state.round);
    const piece: KeeperPieceMsg = {
      type: "keeper_piece",
      run: o.run,
      round: state.round,
      start: state.shard.start,
      total,
      params: state.theta,
      momentum: state.momentum,
      residual: state.residual,
      ...(state.view ? { view: state.view } : {}),
      ...(cursors ? { cursors } : {}),
      ...(o.config ? { config: o.config } : {}),
      ...(o.settings ? { settings: o.settings } : {}),
    };
    const keepers = typeof o.keepers === "function" ? o.keepers() : o.keepers;
    for (const k of keepers) {
      try {
        o.system.ref(k).tell(piece);
      } catch {
        this.dropped++;
      }
    }
  }

  /** The last saved state of a shard. */
  load(shard: number): AggregatorState | undefined {
    return this.#memory.load(shard);
  }
}

/** File names a keeper serves, for callers listing them. */
export const SERVED_FILES: readonly string[] = [
  "model.safetensors",
  "state.safetensors",
  MANIFEST_FILE,
];
