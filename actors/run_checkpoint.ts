/**
 * The checkpoint side of a run: the host's {@linkcode CheckpointSlot} that
 * feeds each round's state to the keepers once its data cursors are known,
 * where trainers take their start state ({@linkcode runStateSource}), the
 * keepers' lines in the run's log and `<dir>/latest`.
 *
 * @module
 */
import { type KeeperSlot, MemoryKeeperSlot } from "./aggregator.ts";
import type { Lease } from "./_lease.ts";
import { aggregatorStateSource, type StartStateSource } from "./start_state.ts";
import type { AggregatorState } from "./aggregation.ts";
import type { KeeperEvent } from "./keeper.ts";
import type { CommitEvent } from "./keeper_commit.ts";
import type { KeeperFeedSlot } from "./keeper_feed.ts";
import { keeperStateSource, type SourceEvent } from "./keeper_source.ts";
import type { RunMonitor } from "./monitor.ts";
import type { Retention } from "../checkpoint/store.ts";

/** Checkpoint keepers of a host. */
export interface CheckpointOptions {
  /** The run directory (runs/<name>); keeper i writes `<dir>/keeper-<i>`. */
  dir: string;
  /** Keepers on this host (default 2). */
  keepers?: number;
  /** Keepers that must hold a round before it is committed (default 2 with ≥ 2 keepers). */
  minReplicas?: number;
  /** Retention of each keeper's store (default: last 3 and every 10th). */
  retention?: Partial<Retention>;
  /** Each keeper's CPU budget while trainers keep the cores busy (`KeeperOptions.backgroundDuty`). */
  backgroundDuty?: number;
  /**
   * How long a round's state waits for the trainers' data cursors before it
   * goes to the keepers without them, ms (default 5000). The aggregators
   * never wait: the slot holds the state meanwhile.
   */
  cursorWaitMs?: number;
  /**
   * Keepers also serve joiners from a low-priority thread listening on this
   * host name (see `KeeperOptions.serve` in actors/keeper.ts). Set by a
   * networked host to the name its transport listens on.
   */
  serve?: { hostname: string };
}

/**
 * The host's {@linkcode KeeperSlot}: keeps each shard's state in memory (for
 * aggregator restarts) and sends it to the checkpoint keepers once the data
 * cursors of the round are known (the trainers' reports of the round before),
 * or after `waitMs`. `save` returns at once; nothing on the aggregator's path
 * waits on a keeper or a disk.
 */
export class CheckpointSlot implements KeeperSlot {
  #memory = new MemoryKeeperSlot();
  #feed: KeeperFeedSlot;
  #monitor: RunMonitor;
  #waitMs: number;
  /** The states waiting for their cursors, and the hold on each one's lease. */
  #timers = new Map<ReturnType<typeof setTimeout>, (() => void) | undefined>();
  #closed = false;

  /** Creates the slot. */
  constructor(feed: KeeperFeedSlot, monitor: RunMonitor, options: { waitMs?: number } = {}) {
    this.#feed = feed;
    this.#monitor = monitor;
    this.#waitMs = options.waitMs ?? 5000;
  }

  /** Saves a shard's state now and sends it to the keepers when its cursors are in. */
  save(state: AggregatorState, lease?: Lease): void {
    this.#memory.save(state, lease);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const send = () => {
      if (timer === undefined) return; // sent already
      clearTimeout(timer);
      const release = this.#timers.get(timer);
      this.#timers.delete(timer);
      timer = undefined;
      if (!this.#closed) this.#feed.save(state, lease);
      release?.();
    };
    timer = setTimeout(send, this.#waitMs);
    this.#timers.set(timer, lease?.hold());
    this.#monitor.roundEmitted(state.round - 1).then(send);
  }

  /** The last saved state of a shard. */
  load(shard: number): AggregatorState | undefined {
    return this.#memory.load(shard);
  }

  /** Puts a state in memory only (a resumed round, before the aggregators start). */
  prefill(state: AggregatorState): void {
    this.#memory.save(state);
  }

  /** Sends a state to the keepers now (a resumed round, once the keepers run). */
  announce(state: AggregatorState): void {
    if (!this.#closed) this.#feed.save(state);
  }

  /** Drops what is still waiting (the run is shutting down). */
  close(): void {
    this.#closed = true;
    for (const [t, release] of this.#timers) {
      clearTimeout(t);
      release?.();
    }
    this.#timers.clear();
  }
}

/**
 * The start-state source of a host's trainers: the opening round of a fresh
 * run comes from the aggregators (they hold the seed θ_0; no keeper can hold
 * it before), every later round (a joiner, a restarted trainer, a resumed
 * run) from the checkpoint keepers, falling back to the aggregators when no
 * keeper holds it.
 */
export function runStateSource(options: {
  keepers: readonly string[] | (() => readonly string[]);
  /** The round the run opened at when it was fresh (no resume), else undefined. */
  freshRound?: number;
  onEvent?: (e: SourceEvent) => void;
}): StartStateSource {
  const fromKeepers = keeperStateSource({
    keepers: options.keepers,
    fallback: aggregatorStateSource,
    onEvent: options.onEvent,
  });
  return {
    startState(ctx, view, req) {
      return view.round === options.freshRound
        ? aggregatorStateSource.startState(ctx, view, req)
        : fromKeepers.startState(ctx, view, req);
    },
  };
}

/** Describes where a trainer's start state came from, for the run's log. */
export function sourceLine(e: SourceEvent): string {
  return e.type === "fetched"
    ? `start state of round ${e.round} fetched from ${e.keepers.join(", ")}: ${e.bytes} B in ${
      Math.round(e.ms)
    } ms`
    : `start state of round ${e.round} from the aggregators: ${e.reason}`;
}

/** A remote keeper that has not said hello for this long is left out of the run's keepers. */
export const REMOTE_KEEPER_TTL_MS = 10_000;

/** How long a keeper's write took, and how much of it yielded the CPU to trainers. */
export function writeTime(e: Extract<KeeperEvent, { type: "written" }>): string {
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  return e.yielded_ms
    ? `in ${s(e.ms)}, ${s(e.yielded_ms)} of it yielding to trainers`
    : `in ${s(e.ms)}`;
}

/** Describes a keeper or commit event for the run's log; undefined for routine ones. */
export function keeperLine(
  e: KeeperEvent | CommitEvent,
): { text: string; warn: boolean } | undefined {
  switch (e.type) {
    case "write_failed":
      return {
        text: `keeper ${e.keeper} could not write round ${e.round} (${e.code}): ${e.error}`,
        warn: true,
      };
    case "recovered":
      return { text: `keeper ${e.keeper} recovered round ${e.round} from disk`, warn: false };
    case "caught_up":
      return {
        text: `keeper ${e.keeper} caught up to round ${e.round} from ${e.from.join(", ")}`,
        warn: false,
      };
    case "skipped":
      return { text: `keeper ${e.keeper} skipped round ${e.round}: ${e.reason}`, warn: true };
    case "refused":
      return { text: `keeper ${e.keeper} refused a message: ${e.error}`, warn: true };
    case "direct_failed":
      return {
        text: `keeper ${e.keeper} serves joiners over the actor protocol only: ${e.error}`,
        warn: true,
      };
    case "conflict":
      return {
        text: `keepers disagree on round ${e.round}: ${JSON.stringify(e.hashes)}`,
        warn: true,
      };
    default:
      return undefined;
  }
}

/** Points `<dir>/latest` at a committed round of one keeper's store (atomic rename). */
export async function pointLatest(dir: string, target: string): Promise<void> {
  const tmp = `${dir}/.latest-${crypto.randomUUID()}`;
  await Deno.symlink(target, tmp);
  try {
    await Deno.rename(tmp, `${dir}/latest`);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}
