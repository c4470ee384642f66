/**
 * The checkpoint keeper actor ({@linkcode keeperBehavior}).
 *
 * A keeper takes each round's state off the training path: aggregators
 * `tell` it the pieces (keeper_feed.ts) and go on; the keeper gathers a
 * round's pieces (keeper_assembly.ts) and, once its writer is ready for it,
 * assembles, encodes, hashes and writes it in its own async flow with a
 * bounded queue (a newer complete round supersedes an older one still
 * waiting, which is then never copied), inline or on a writer thread
 * (keeper_threads.ts).
 * While a round is being written the keeper keeps answering: it serves
 * manifests and chunks of any round it holds (keeper_serving.ts), from
 * memory (prepared, not yet durable) or from disk (verified on first use).
 *
 * Replication: each keeper tells the commit coordinator (keeper_commit.ts)
 * which round it holds durably (`keeper_ack`, repeated every `ackIntervalMs`
 * so that a restarted coordinator rebuilds from the keepers); the
 * coordinator reports a round committed once `minReplicas` keepers hold the
 * same θ (default 2 when there are two or more keepers, else 1). A keeper
 * that cannot write reports `keeper_failed` and the run goes on with the
 * others. A restarted keeper loads its newest verified round and catches up
 * from its peers (fetching the newest round they hold, verified against the
 * manifest, keeper_fetch.ts).
 *
 * @module
 */
import type { ActorContext, Behavior } from "./runtime/behavior.ts";
import type { GptConfig } from "../kernels/config.ts";
import { checkDuty, DEFAULT_DUTY } from "../checkpoint/_background.ts";
import {
  CheckpointStore,
  CheckpointWriteError,
  type Manifest,
  type PreparedRound,
  prepareRound,
  type Retention,
  type StoreFs,
} from "../checkpoint/store.ts";
import {
  type KeeperAckMsg,
  type KeeperCommittedMsg,
  type KeeperFailedMsg,
  type KeeperPieceMsg,
  parseKeeperMessage,
} from "./keeper_protocol.ts";
import { fetchRound, listCandidates } from "./keeper_fetch.ts";
import { type CompleteRound, PieceAssembler } from "./keeper_assembly.ts";
import { RoundServer } from "./keeper_serving.ts";
import { WriterThread } from "./keeper_threads.ts";
import type { PreparedShare } from "./keeper_share.ts";
import { type Lent, LET_GO, letGo } from "./_lease.ts";

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
    /** The keeper of this process that encoded the bytes written (`KeeperOptions.share`). */
    encoded_by?: string;
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
  /**
   * Shared by the keepers of one process (keeper_share.ts): a round the
   * aggregators lent to all of them is encoded once, by the first to take it,
   * and the others write and serve the same bytes (in shared memory). Used
   * with a writer thread.
   */
  share?: PreparedShare;
  /** Receives the keeper's reports. */
  onEvent?: (e: KeeperEvent) => void;
}

type Control =
  | { type: "_tick" }
  | { type: "_written"; manifest: Manifest; ms: number; yieldedMs?: number; encodedBy?: string }
  | { type: "_write_failed"; round: number; code: string; error: string }
  | { type: "keeper_status" }
  | { type: "crash"; reason: string };

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
  const emit = (e: KeeperEvent) => options.onEvent?.(e);
  const server = new RoundServer({
    run,
    id,
    store,
    onSkipped: (round, reason) => emit({ type: "skipped", keeper: id, round, reason }),
  });
  const maxPending = Math.max(1, options.maxPending ?? 2);
  const assembler = new PieceAssembler(options);
  const pending: CompleteRound[] = [];
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

  /**
   * Writes a complete round and keeps it to serve: the bytes another keeper
   * of this process encoded from the same pieces when there are some (the
   * pieces then go back at once), else encoded here from whole vectors,
   * copied only now (a round superseded meanwhile never is).
   */
  const writeRound = async (
    c: CompleteRound,
  ): Promise<{ manifest: Manifest; yieldedMs?: number; encodedBy?: string }> => {
    if (!writer) {
      const p = await prepareRound(assembler.assemble(c));
      server.remember(p);
      return { manifest: await store.commit(p) };
    }
    // Files in shared memory: for the serving thread, and for the other keepers of the share.
    const shared = server.threaded || options.share !== undefined;
    const claim = options.share?.claim(c.round, c.pieces.map((p) => p.params), id);
    if (claim && !claim.own) {
      // A failed encoding elsewhere leaves this keeper to encode its own.
      const prepared = await claim.prepared.catch(() => undefined);
      if (prepared) {
        c.release();
        const w = await writer.commit(options.dir, options.retention, prepared);
        server.remember(prepared);
        server.hold(prepared);
        return { manifest: w.manifest, yieldedMs: w.yieldedMs, encodedBy: claim.owner };
      }
    }
    const own = claim?.own ? claim : undefined;
    let published = false;
    const publish = own &&
      ((p: PreparedRound) => {
        published = true;
        own.publish(p);
      });
    try {
      const state = assembler.assemble(c);
      const w = await writer.write(options.dir, options.retention, state, shared, publish);
      server.remember(w.prepared);
      server.hold(w.prepared);
      assembler.recycle(w.spare);
      return { manifest: w.manifest, yieldedMs: w.yieldedMs };
    } finally {
      if (own && !published) own.fail(new Error(`Keeper ${id} did not encode round ${c.round}`));
    }
  };

  const kick = (ctx: ActorContext) => {
    if (flow) return;
    flow = (async () => {
      while (pending.length > 0 && !stopping) {
        const c = pending.shift()!;
        writing = c.round;
        const t0 = performance.now();
        try {
          const { manifest, yieldedMs, encodedBy } = await writeRound(c);
          const ms = performance.now() - t0;
          ctx.self.tell({ type: "_written", manifest, ms, yieldedMs, encodedBy });
        } catch (err) {
          const code = err instanceof CheckpointWriteError ? err.code : "EINVAL";
          ctx.self.tell({
            type: "_write_failed",
            round: c.round,
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

  const enqueue = (ctx: ActorContext, round: CompleteRound) => {
    newestTaken = Math.max(newestTaken, round.round);
    pending.push(round);
    pending.sort((a, b) => a.round - b.round);
    while (pending.length > maxPending) {
      const old = pending.shift()!;
      old.release();
      emit({ type: "superseded", keeper: id, round: old.round, by: pending.at(-1)!.round });
    }
    kick(ctx);
  };

  const takePiece = (ctx: ActorContext, m: KeeperPieceMsg) => {
    if (m.round <= newestTaken) return letGo(m); // done already (or stale)
    const got = assembler.take(m);
    if (got === undefined) return;
    if ("error" in got) emit({ type: "refused", keeper: id, error: got.error });
    else enqueue(ctx, got.complete);
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
      server.remember(got);
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
        server.startThread(options.serve, duty, (error) => {
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
      // Rounds that will not be written: their pieces go back to the aggregators.
      for (const c of pending.splice(0)) c.release();
      // Let a write in progress finish (bounded by the actor's shutdown timeout).
      await flow;
      writer?.close();
      await server.close();
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
            ...(ctl.encodedBy !== undefined ? { encoded_by: ctl.encodedBy } : {}),
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
            assembling: assembler.rounds(),
            rounds: await store.rounds(),
            failures: [...failures],
          };
        case "crash":
          throw new Error(`Keeper crashed on purpose: ${ctl.reason}`);
      }
      // With a writer thread, that thread checks that a round's floats are finite.
      const parsed = parseKeeperMessage(raw, run, { checkFinite: !writer });
      if ("error" in parsed) {
        letGo(raw);
        emit({ type: "refused", keeper: id, error: parsed.error });
        return { type: "error", error: parsed.error };
      }
      if (parsed.msg.type === "keeper_piece") {
        // The checked message is a new object: it takes over the lent piece's let-go (the
        // same object delivered twice must not let the arrays go while the first is kept).
        const lent = (raw as Lent<object>)[LET_GO];
        delete (raw as Lent<object>)[LET_GO];
        if (lent) (parsed.msg as Lent<KeeperPieceMsg>)[LET_GO] = lent;
      }
      const msg = parsed.msg;
      switch (msg.type) {
        case "keeper_piece":
          takePiece(ctx, msg);
          return;
        case "keeper_committed":
          if (!committed || msg.round > committed.round) committed = msg;
          return;
        case "keeper_manifest":
          return await server.manifest(msg.round);
        case "keeper_chunk":
          return await server.chunk(msg);
        default: {
          const error = `Keeper cannot handle a "${msg.type}" message`;
          emit({ type: "refused", keeper: id, error });
          return { type: "error", error };
        }
      }
    },
  };
}
