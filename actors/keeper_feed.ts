/**
 * The slot through which aggregators feed checkpoint keepers
 * ({@linkcode KeeperFeedSlot}): every saved shard state is also told to the
 * keepers as a piece of its round, so the aggregator never waits on a keeper
 * or a disk.
 *
 * @module
 */
import type { ActorSystem } from "./runtime/system.ts";
import type { AggregatorState } from "./aggregation.ts";
import { type KeeperSlot, MemoryKeeperSlot } from "./aggregator.ts";
import type { GptConfig } from "../kernels/config.ts";
import type { KeeperPieceMsg } from "./keeper_protocol.ts";
import { type Lease, type Lent, LET_GO } from "./_lease.ts";

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

  /**
   * Saves a shard's state and sends it to every keeper. With a lease, each
   * keeper in this process holds it until it let the piece go (its arrays are
   * the state's, not copies); one in another process spoils it (its frames
   * are sent from the arrays as they are, for as long as that takes).
   */
  save(state: AggregatorState, lease?: Lease): void {
    this.#memory.save(state, lease);
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
      const local = k.startsWith(`${o.system.node}/`);
      if (lease && !local) lease.spoil();
      const release = lease && local ? lease.hold() : undefined;
      const lent: Lent<KeeperPieceMsg> = release ? { ...piece, [LET_GO]: release } : piece;
      try {
        o.system.ref(k).tell(lent);
      } catch {
        release?.();
        this.dropped++;
      }
    }
  }

  /** The last saved state of a shard. */
  load(shard: number): AggregatorState | undefined {
    return this.#memory.load(shard);
  }
}
