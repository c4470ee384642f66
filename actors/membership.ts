/**
 * The membership tracker's logic as a pure state machine with an injectable
 * clock: joins and leaves, heartbeats and eviction, views with epochs, the
 * shard map, and admission of joiners at the next round boundary.
 *
 * Nobody waits for a joiner: before the run starts, joiners become members at
 * once; afterwards they are "pending" until the round that is open closes,
 * and the view of the next round includes them. A trainer that stops sending
 * heartbeats for `evictAfterMs` is evicted, and a new view (same round, next
 * epoch) tells the aggregators to stop waiting for it.
 *
 * The tracker keeps nothing that its members do not also hold. After a
 * restart (a new incarnation, empty state) it answers heartbeats with
 * `known: false`; members re-announce with their last view and data shard, and
 * the tracker adopts the newest view it is shown, so the run goes on with the
 * same round, trainers and shard map.
 *
 * @module
 */
import {
  DEFAULT_BLOCK,
  type HeartbeatAckMsg,
  type HeartbeatMsg,
  type JoinMsg,
  type JoinReplyMsg,
  type Role,
  type RoundClosedMsg,
  type RunNews,
  type Shard,
  shardMap,
  type ViewMsg,
} from "./run_protocol.ts";

/** Defaults from PRIME/INTELLECT-1: heartbeat every 2 s, evict after 6 s of silence. */
export const HEARTBEAT_MS = 2000;
/** See {@linkcode HEARTBEAT_MS}. */
export const EVICT_AFTER_MS = 6000;

/** Options of a {@linkcode Membership}. */
export interface MembershipOptions {
  /** Run id. */
  run: string;
  /** Length of the flat parameter vector. */
  params: number;
  /** Quantization block; shard starts are multiples of it (default 256). */
  block?: number;
  /** Number of shards (default: one per aggregator present at start). */
  shardCount?: number;
  /** Silence after which a member is evicted (default 6000 ms). */
  evictAfterMs?: number;
  /**
   * How often the tracker calls {@linkcode Membership.tick}, ms (default
   * 1000). A gap between two ticks of more than twice this is a stall of the
   * tracker itself, not counted against the members (see `tick`).
   */
  tickMs?: number;
  /** The clock, in ms (default `Date.now`). */
  now?: () => number;
  /** Incarnation of this tracker; a restarted tracker has a higher one (default 0). */
  incarnation?: number;
  /** Rounds of the run, announced in every view (default 0: no bound). */
  rounds?: number;
  /** The round the run opens at (default 0; a resumed run opens at its checkpoint's round). */
  startRound?: number;
  /**
   * A resumed run's data shards, dealt to the trainers that join before the
   * run opens: a trainer named in `byTrainer` (the host's own trainers, which
   * come back under the same ids) takes its own shard back, and the other
   * trainers take the `saved` shards no one holds or is owed, lowest first.
   * Beyond them, and once the run is open, a trainer takes the lowest shard
   * that no trainer holds and no saved cursor names, so that no trainer
   * starts a saved shard over from its first step.
   */
  resumedShards?: { byTrainer?: Readonly<Record<string, number>>; saved: readonly number[] };
}

/** What the tracker knows of a member. */
export interface MemberInfo {
  node: string;
  roles: Role[];
  /** "member": in the view; "pending": admitted at the next boundary. */
  status: "member" | "pending";
  dataShard: number;
  /** Clock time of the last sign of life. */
  lastSeen: number;
  address?: string;
}

/** The result of a state change that may produce a new view. */
export interface Change {
  /** The new view, when membership or the round changed (to publish). */
  view?: ViewMsg;
  /** Nodes evicted by this change. */
  evicted: string[];
  /** A tick only: how long the tracker itself stalled before it (not counted as silence), ms. */
  stalledMs?: number;
}

function sorted(xs: Iterable<string>): string[] {
  return [...xs].sort();
}

/**
 * The membership tracker state machine.
 *
 * @example Two trainers, start, a joiner admitted at the boundary
 * ```ts
 * import { Membership } from "./membership.ts";
 * let t = 0;
 * const m = new Membership({ run: "r", params: 1000, now: () => t });
 * m.join({ type: "join", run: "r", node: "agg", roles: ["aggregator"] });
 * m.join({ type: "join", run: "r", node: "t0", roles: ["trainer"] });
 * m.start();
 * console.log(m.join({ type: "join", run: "r", node: "t1", roles: ["trainer"] }).reply.status);
 * // "pending"
 * console.log(m.roundClosed({ type: "round_closed", run: "r", round: 0, node: "agg" }).view?.trainers);
 * // ["t0", "t1"]
 * ```
 */
export class Membership {
  #run: string;
  #params: number;
  #block: number;
  #shardCount?: number;
  #evictAfter: number;
  #tickMs: number;
  #lastTick?: number;
  #now: () => number;
  #incarnation: number;
  #members = new Map<string, MemberInfo>();
  #view: ViewMsg;
  #started = false;
  #rounds: number;
  #resumed?: MembershipOptions["resumedShards"];
  #news?: RunNews;

  constructor(options: MembershipOptions) {
    this.#resumed = options.resumedShards;
    this.#run = options.run;
    this.#params = options.params;
    this.#block = options.block ?? DEFAULT_BLOCK;
    this.#shardCount = options.shardCount;
    this.#evictAfter = options.evictAfterMs ?? EVICT_AFTER_MS;
    this.#tickMs = options.tickMs ?? 1000;
    this.#now = options.now ?? Date.now;
    this.#incarnation = options.incarnation ?? 0;
    this.#rounds = options.rounds ?? 0;
    const startRound = options.startRound ?? 0;
    if (!Number.isSafeInteger(startRound) || startRound < 0) {
      throw new RangeError(`Invalid start round: ${startRound} (expected an integer >= 0)`);
    }
    this.#view = {
      type: "view",
      run: this.#run,
      epoch: 0,
      round: startRound,
      trainers: [],
      aggregators: [],
      shards: [{ index: 0, start: 0, length: this.#params, aggregator: "none" }],
      params: this.#params,
      block: this.#block,
      dataShards: [],
      started: false,
      rounds: this.#rounds,
    };
  }

  /** The current view. */
  get view(): ViewMsg {
    return this.#view;
  }

  /** True once the first round is open (joiners then wait for a boundary). */
  get started(): boolean {
    return this.#started;
  }

  /** This tracker's incarnation. */
  get incarnation(): number {
    return this.#incarnation;
  }

  /** All known members and joiners, sorted by id. */
  members(): MemberInfo[] {
    return sorted(this.#members.keys()).map((k) => ({ ...this.#members.get(k)! }));
  }

  #freeDataShard(node?: string): number {
    const used = new Set(
      [...this.#members.values()].filter((m) => m.roles.includes("trainer")).map((m) =>
        m.dataShard
      ),
    );
    const saved = this.#resumed?.saved ?? [];
    if (!this.#started && this.#resumed) {
      const owed = Object.entries(this.#resumed.byTrainer ?? {});
      const own = owed.find(([n]) => n === node)?.[1];
      if (own !== undefined && !used.has(own)) return own;
      const others = new Set(owed.filter(([n]) => n !== node).map(([, d]) => d));
      const next = saved.find((d) => !used.has(d) && !others.has(d));
      if (next !== undefined) return next;
    }
    let d = 0;
    while (used.has(d) || saved.includes(d)) d++;
    return d;
  }

  #shards(aggregators: string[]): Shard[] {
    if (aggregators.length === 0) return this.#view.shards;
    return shardMap(this.#params, { aggregators, count: this.#shardCount, block: this.#block });
  }

  /** Rebuilds the view from the members, bumping the epoch if anything changed. */
  #publish(round: number, reshard: boolean): ViewMsg | undefined {
    const live = [...this.#members.values()].filter((m) => m.status === "member");
    const trainers = sorted(live.filter((m) => m.roles.includes("trainer")).map((m) => m.node));
    const aggregators = sorted(
      live.filter((m) => m.roles.includes("aggregator")).map((m) => m.node),
    );
    const shards = reshard ? this.#shards(aggregators) : this.#view.shards;
    const dataShards = trainers.map((t) => this.#members.get(t)!.dataShard);
    const old = this.#view;
    const same = old.round === round && old.started === this.#started &&
      JSON.stringify([old.trainers, old.aggregators, old.shards, old.dataShards]) ===
        JSON.stringify([trainers, aggregators, shards, dataShards]);
    if (same) return undefined;
    this.#view = {
      type: "view",
      run: this.#run,
      epoch: old.epoch + 1,
      round,
      trainers,
      aggregators,
      shards,
      params: this.#params,
      block: this.#block,
      dataShards,
      started: this.#started,
      rounds: this.#rounds,
    };
    return this.#view;
  }

  /** Adopts a member's view when it is newer than ours (rebuild after a restart). */
  #adopt(view: ViewMsg | undefined): void {
    if (!view || view.run !== this.#run || view.epoch <= this.#view.epoch) return;
    if (view.params !== this.#params) return;
    const now = this.#now();
    this.#view = view;
    this.#started = true;
    view.trainers.forEach((t, i) => {
      const m = this.#members.get(t);
      if (m) {
        m.status = "member";
        m.dataShard = view.dataShards[i];
      } else {
        this.#members.set(t, {
          node: t,
          roles: ["trainer"],
          status: "member",
          dataShard: view.dataShards[i],
          lastSeen: now,
        });
      }
    });
    for (const a of view.aggregators) {
      const m = this.#members.get(a);
      if (m) m.status = "member";
      else {
        this.#members.set(a, {
          node: a,
          roles: ["aggregator"],
          status: "member",
          dataShard: this.#freeDataShard(),
          lastSeen: now,
        });
      }
    }
  }

  /**
   * A node joins or re-announces. Before {@linkcode start} it becomes a member
   * at once; afterwards a new trainer is pending until the next boundary. A
   * node that re-announces with a view newer than the tracker's (the tracker
   * restarted) makes the tracker adopt that view.
   */
  join(msg: JoinMsg): Change & { reply: JoinReplyMsg } {
    if (msg.run !== this.#run) {
      throw new RangeError(`Cannot join run "${this.#run}": message is for run "${msg.run}"`);
    }
    this.#adopt(msg.view);
    const now = this.#now();
    let m = this.#members.get(msg.node);
    let view: ViewMsg | undefined;
    if (m) {
      m.lastSeen = now;
      m.roles = [...msg.roles];
      if (msg.address) m.address = msg.address;
    } else {
      const inView = this.#view.trainers.includes(msg.node) ||
        this.#view.aggregators.includes(msg.node);
      const wanted = msg.dataShard;
      const taken = wanted !== undefined &&
        [...this.#members.values()].some((o) =>
          o.dataShard === wanted && o.roles.includes("trainer")
        );
      m = {
        node: msg.node,
        roles: [...msg.roles],
        status: !this.#started || inView ? "member" : "pending",
        dataShard: wanted !== undefined && !taken ? wanted : this.#freeDataShard(msg.node),
        lastSeen: now,
        address: msg.address,
      };
      this.#members.set(msg.node, m);
      // An aggregator arriving after the start does not take shards from the running ones.
      if (this.#started && !inView && !msg.roles.includes("trainer")) m.status = "member";
      // No boundary comes while no trainer is in the view: admit at once.
      if (this.#admitIfNoTrainer()) m.status = "member";
      if (m.status === "member") {
        view = this.#publish(this.#view.round, !this.#started);
      }
    }
    const reply: JoinReplyMsg = {
      type: "join_reply",
      run: this.#run,
      node: msg.node,
      status: m.status,
      dataShard: m.dataShard,
      view: this.#view,
      incarnation: this.#incarnation,
    };
    return view ? { reply, view, evicted: [] } : { reply, evicted: [] };
  }

  /**
   * When the run has started and no trainer is a member, no round can close,
   * so pending trainers would wait for a boundary that never comes: they are
   * admitted now. Returns whether any was.
   */
  #admitIfNoTrainer(): boolean {
    if (!this.#started) return false;
    const all = [...this.#members.values()].filter((m) => m.roles.includes("trainer"));
    if (all.some((m) => m.status === "member")) return false;
    for (const m of all) m.status = "member";
    return all.length > 0;
  }

  /** Opens round 0 (or the adopted round): from now on joiners wait for a boundary. */
  start(): ViewMsg {
    if (!this.#started) {
      this.#started = true;
      this.#publish(this.#view.round, true);
    }
    return this.#view;
  }

  /** A node leaves on purpose; a new view is returned if it was in the view. */
  leave(node: string): Change {
    if (!this.#members.delete(node)) return { evicted: [] };
    const view = this.#publish(this.#view.round, !this.#started);
    return view ? { view, evicted: [] } : { evicted: [] };
  }

  /** The run's newest evaluation, passed on in heartbeat acks; an older one than it holds is ignored. */
  set news(news: RunNews) {
    if (!this.#news || news.round >= this.#news.round) this.#news = news;
  }

  /**
   * A heartbeat. Unknown nodes are told so (they re-announce with a join);
   * a node whose epoch is behind gets the current view in the answer, and
   * one that has not heard of the run's newest evaluation gets that.
   */
  heartbeat(msg: HeartbeatMsg): HeartbeatAckMsg {
    const m = this.#members.get(msg.node);
    if (m) m.lastSeen = this.#now();
    const ack: HeartbeatAckMsg = {
      type: "heartbeat_ack",
      run: this.#run,
      known: m !== undefined,
      incarnation: this.#incarnation,
      epoch: this.#view.epoch,
    };
    if (m && msg.epoch !== this.#view.epoch) ack.view = this.#view;
    if (m && this.#news && (msg.news ?? -1) < this.#news.round) ack.news = this.#news;
    return ack;
  }

  /**
   * Evicts members silent for longer than `evictAfterMs`; a new view if the
   * view changed.
   *
   * Silence is counted only while the tracker was listening. When the gap
   * since the last tick is more than twice `tickMs`, the tracker's own
   * process stalled (a long synchronous task of an actor beside it, such as
   * an aggregator copying a large θ; a GC pause; a suspended machine), and
   * the heartbeats sent meanwhile still wait in its mailbox and sockets,
   * behind this tick: the stall (the gap less one tick) is added to every
   * member's last sign of life, as Cassandra's failure detector ignores a
   * local pause, instead of evicting everyone at once.
   */
  tick(): Change {
    const now = this.#now();
    const last = this.#lastTick;
    this.#lastTick = now;
    const gap = last === undefined ? 0 : now - last;
    const stalledMs = gap > 2 * this.#tickMs ? gap - this.#tickMs : 0;
    if (stalledMs > 0) {
      for (const m of this.#members.values()) m.lastSeen = Math.min(now, m.lastSeen + stalledMs);
    }
    const stall = stalledMs > 0 ? { stalledMs } : {};
    const evicted: string[] = [];
    for (const [node, m] of this.#members) {
      if (now - m.lastSeen > this.#evictAfter) {
        this.#members.delete(node);
        evicted.push(node);
      }
    }
    if (evicted.length === 0) return { evicted, ...stall };
    this.#admitIfNoTrainer();
    const view = this.#publish(this.#view.round, !this.#started);
    return { ...(view ? { view } : {}), evicted: evicted.sort(), ...stall };
  }

  /**
   * An aggregator reports that `round` closed. The first report of a round
   * moves the view to round + 1 and admits the pending joiners; later reports
   * of the same round get the same view back.
   */
  roundClosed(msg: RoundClosedMsg): Change {
    this.#adopt(msg.view);
    const agg = this.#members.get(msg.node);
    if (agg) agg.lastSeen = this.#now();
    // A counted contribution is a sign of life as good as a heartbeat.
    for (const t of msg.contributors ?? []) {
      const m = this.#members.get(t);
      if (m) m.lastSeen = this.#now();
    }
    if (msg.round + 1 <= this.#view.round) return { view: this.#view, evicted: [] };
    this.#started = true;
    for (const m of this.#members.values()) m.status = "member";
    const view = this.#publish(msg.round + 1, false);
    return { view: view ?? this.#view, evicted: [] };
  }

  /** A JSON-friendly summary for `GET /status`. */
  status(): {
    run: string;
    incarnation: number;
    round: number;
    epoch: number;
    view: ViewMsg;
    members: { node: string; roles: Role[]; status: string; dataShard: number; silentMs: number }[];
  } {
    const now = this.#now();
    return {
      run: this.#run,
      incarnation: this.#incarnation,
      round: this.#view.round,
      epoch: this.#view.epoch,
      view: this.#view,
      members: this.members().map((m) => ({
        node: m.node,
        roles: m.roles,
        status: m.status,
        dataShard: m.dataShard,
        silentMs: now - m.lastSeen,
      })),
    };
  }
}
