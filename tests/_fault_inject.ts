/**
 * The faults the suite and the chaos soak inject ({@linkcode FAULT_KINDS}),
 * a fault at a chosen point of a run ({@linkcode ScheduledFault}), and the
 * injection of one into a running {@linkcode FaultRun}
 * ({@linkcode injectFault}): crashes, hostile or broken contributions,
 * network phases, partitions and hostile peers.
 *
 * @module
 */
import { ActorSystem } from "../actors/runtime/system.ts";
import { ActorTransport } from "../transport/remote.ts";
import type { FaultRates } from "../transport/faults.ts";
import { type FaultRun, RUN } from "./_fault_run.ts";

type Timer = ReturnType<typeof setTimeout>;

/** Every fault kind the suite and the chaos soak inject. */
export const FAULT_KINDS = [
  // Crashes.
  "tracker_crash",
  "aggregator_crash",
  "trainer_crash",
  "worker_exit",
  "device_lost",
  // Hostile or broken contributions.
  "nan_update",
  "inf_update",
  "wrong_shape",
  "stale_round",
  "replay_old_round",
  "duplicate_send",
  "scaled_update",
  "sign_flip",
  "straggler",
  // Network (network runs only).
  "drop_frames",
  "delay_frames",
  "duplicate_frames",
  "reorder_frames",
  "corrupt_frames",
  "partition_node",
  "partition_tracker",
  "bandwidth_limit",
  "wrong_secret",
  "malformed_msgpack",
  "oversized_frame",
  "malformed_message",
] as const;

/** A fault kind. */
export type FaultKind = typeof FAULT_KINDS[number];

/** A fault at a chosen point of the run. */
export interface ScheduledFault {
  /** Injected once round `afterRound` closed (i.e. during round afterRound + 1). */
  afterRound: number;
  kind: FaultKind;
  /** Trainer index (trainer faults, partition_node). */
  target?: number;
  /** Wait this long after the round closed (e.g. to land mid aggregation), ms. */
  delayMs?: number;
  /** Network phases and partitions end when this round closed (default afterRound + 2). */
  untilRound?: number;
  /** Or end this long after the injection, ms (partitions: default 6000). */
  holdMs?: number;
}

/** What an injected fault led to, for the test's assertions. */
export interface FaultOutcome {
  fault: ScheduledFault;
  /** Wall time of the injection, s. */
  at: number;
  /** Short description of what happened (e.g. the close code a hostile peer got). */
  detail: string;
}

async function rawSocket(
  url: string,
  send: Uint8Array,
): Promise<{ code: number; reason: string }> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const closed = Promise.withResolvers<{ code: number; reason: string }>();
  const timer = setTimeout(() => ws.close(), 10_000);
  ws.onopen = () => ws.send(send);
  ws.onclose = (e) => closed.resolve({ code: e.code, reason: e.reason });
  ws.onerror = () => {};
  try {
    return await closed.promise;
  } finally {
    clearTimeout(timer);
  }
}

/** Rates of each network phase kind. */
const PHASE_RATES: Partial<Record<FaultKind, FaultRates>> = {
  drop_frames: { drop: 0.05 },
  delay_frames: { delay: 0.5, delayMs: [5, 120] },
  duplicate_frames: { duplicate: 0.3 },
  reorder_frames: { reorder: 0.3 },
  corrupt_frames: { corrupt: 0.05 },
};

/**
 * Injects one fault into a running fault run; resolves with what happened.
 * Network phases and partitions are undone when `untilRound` closed.
 */
export async function injectFault(run: FaultRun, f: ScheduledFault): Promise<FaultOutcome> {
  const at = Math.round(run.monitor.wallS * 1000) / 1000;
  const trainer = run.trainerPaths[(f.target ?? 0) % run.trainerPaths.length];
  const until = f.untilRound ?? f.afterRound + 2;
  /** Undoes a network fault when its round closed or its hold time passed. */
  const undo = (holdMs: number | undefined, fn: () => void) => {
    if (holdMs !== undefined) run.later(holdMs, fn);
    else run.monitor.roundEmitted(until).then(fn);
  };
  const upTo = (holdMs: number | undefined) =>
    holdMs !== undefined ? `for ${holdMs} ms` : `until round ${until}`;
  const out = (detail: string): FaultOutcome => {
    run.log(`fault ${f.kind} after round ${f.afterRound}: ${detail}`);
    return { fault: f, at, detail };
  };
  const poison = (kind: string) => {
    run.tell(trainer, { type: "poison", kind });
    return out(`${trainer} poisons its next contribution (${kind})`);
  };
  const needNet = () => {
    if (!run.faults || !run.hostListener) {
      throw new RangeError(`Fault ${f.kind} needs a network run`);
    }
    return run.faults;
  };
  switch (f.kind) {
    case "tracker_crash":
      run.tell(run.trackerPath, { type: "crash", reason: "injected" });
      return out("tracker threw");
    case "aggregator_crash":
      run.tell(run.aggregatorPaths[0], { type: "crash", reason: "injected" });
      return out("aggregator threw");
    case "trainer_crash":
      run.tell(trainer, { type: "crash", reason: "injected" });
      return out(`${trainer} threw`);
    case "worker_exit":
    case "device_lost":
      run.tell(trainer, {
        type: "worker_fault",
        kind: f.kind,
        atStep: 1,
      });
      return out(`${trainer}: ${f.kind} at inner step 1 of its next round`);
    case "straggler":
      run.tell(trainer, { type: "worker_fault", kind: "stall", atStep: 1, ms: 4000 });
      return out(`${trainer} stalls 4 s in its next inner phase`);
    case "nan_update":
      return poison("nan");
    case "inf_update":
      return poison("inf");
    case "wrong_shape":
      return poison("shape");
    case "stale_round":
      return poison("stale");
    case "replay_old_round":
      return poison("replay");
    case "duplicate_send":
      return poison("duplicate");
    case "scaled_update":
      return poison("scale");
    case "sign_flip":
      return poison("flip");
    case "drop_frames":
    case "delay_frames":
    case "duplicate_frames":
    case "reorder_frames":
    case "corrupt_frames": {
      const faults = needNet();
      faults.setRates(PHASE_RATES[f.kind]);
      undo(f.holdMs, () => faults.setRates(undefined));
      return out(`${JSON.stringify(PHASE_RATES[f.kind])} on every link ${upTo(f.holdMs)}`);
    }
    case "bandwidth_limit": {
      const faults = needNet();
      faults.setBandwidth(2_000_000);
      undo(f.holdMs, () => faults.setBandwidth(0));
      return out(`every link limited to 2 Mbit/s ${upTo(f.holdMs)}`);
    }
    case "partition_node":
    case "partition_tracker": {
      const faults = needNet();
      const nodes = run.trainerNodes;
      const cut = nodes[(f.target ?? 0) % nodes.length];
      if (f.kind === "partition_node") faults.partition([cut], ["host", "trk", ...nodes]);
      else faults.partition(["trk"], nodes);
      const hold = f.holdMs ?? 6000;
      undo(hold, () => faults.heal());
      return out(
        f.kind === "partition_node"
          ? `${cut} cut off from every node ${upTo(hold)}`
          : `tracker cut off from every trainer ${upTo(hold)}`,
      );
    }
    case "wrong_secret": {
      needNet();
      const system = new ActorSystem({ node: "intruder" });
      const t = new ActorTransport(system, { run: RUN, secret: "not-the-secret", log: () => {} });
      let detail: string;
      let timer: Timer | undefined;
      try {
        await Promise.race([
          t.connect(run.hostListener!.url, { expectedPeer: "host", maxAttempts: 1 }).ready(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error("no answer within 15 s")), 15_000);
          }),
        ]);
        detail = "ACCEPTED";
      } catch (err) {
        detail = `refused: ${err instanceof Error ? err.message : err}`;
      } finally {
        clearTimeout(timer);
        await t.close();
        await system.shutdown();
      }
      return out(detail);
    }
    case "malformed_msgpack": {
      needNet();
      // 0xc1 is never used by msgpack.
      const r = await rawSocket(run.hostListener!.url, new Uint8Array([0xc1, 0xc1, 0xff, 0x00]));
      return out(`raw peer closed with ${r.code} ${r.reason}`);
    }
    case "oversized_frame": {
      needNet();
      const r = await rawSocket(run.hostListener!.url, new Uint8Array((16 << 20) + 1));
      return out(`raw peer closed with ${r.code} ${r.reason}`);
    }
    case "malformed_message": {
      // An authenticated node sends protocol garbage to the tracker and aggregator.
      const node = run.trainerNodes[0];
      const system = run.system(node);
      const bad = [
        { type: "contribution", run: RUN, trainer: `${node}/node/trainer`, round: "x", q: 7 },
        { type: "join", run: RUN },
        { type: "no-such-type" },
        "garbage",
      ];
      const answers: string[] = [];
      for (const target of [run.aggregatorPaths[0], run.trackerPath]) {
        for (const m of bad) {
          try {
            const r = await system.ref(target).ask<{ error?: string }>(m, { timeoutMs: 5000 });
            answers.push(r?.error ? "error" : "ok");
          } catch (err) {
            answers.push(`failed: ${err instanceof Error ? err.name : err}`);
          }
        }
      }
      return out(`answers ${answers.join(", ")}`);
    }
  }
}
