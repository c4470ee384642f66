/**
 * The commit coordinator of checkpoint keepers: each keeper tells it which
 * round it holds durably (`keeper_ack`, repeated, so that a restarted
 * coordinator rebuilds from the keepers), and it reports a round committed
 * once `minReplicas` keepers hold the same θ, telling every keeper.
 *
 * @module
 */
import type { ActorContext, Behavior } from "./runtime/behavior.ts";
import {
  type KeeperAckMsg,
  type KeeperCommittedMsg,
  parseKeeperMessage,
} from "./keeper_protocol.ts";

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
      const parsed = parseKeeperMessage(raw, options.run);
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
