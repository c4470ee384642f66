/**
 * The faults a trainer can be told to inject (tests and the chaos suite,
 * tests/fault_roles_test.ts), and how a poisoned contribution is corrupted.
 * The trainer (actors/trainer.ts) decides when a fault fires; this module
 * says what each one is.
 *
 * @module
 */
import type { ContributionMsg } from "./run_protocol.ts";

/** Faults a trainer can be told to inject (tests and the chaos suite). */
export type TrainerFault =
  | { type: "crash"; reason: string }
  | { type: "poison"; kind: "nan" | "shape" | "stale" | "scale" }
  | { type: "poison"; kind: "inf" | "flip" | "replay" | "duplicate" }
  | {
    /**
     * Breaks the compute Worker at inner step `atStep` of the next round:
     * "device_lost" destroys its GPU device, "worker_exit" kills the Worker
     * with an uncaught error.
     */
    type: "worker_fault";
    kind: "device_lost" | "worker_exit" | "stall";
    atStep?: number;
    /** How long a "stall" holds the inner step (a straggler), ms. */
    ms?: number;
  };

/**
 * Corrupts a contribution in place the way a faulty or malicious trainer
 * would. "replay" and "duplicate" change no message (the trainer sends extra
 * ones), so they leave it as it is.
 *
 * @example
 * ```ts
 * import { injectPoison } from "./trainer_faults.ts";
 * const msg = {
 *   type: "contribution" as const, run: "r", round: 3, epoch: 1, trainer: "t0", shard: 0,
 *   tokens: 64, n: 2, q: new Int8Array([1, -2]), scales: new Float32Array([0.5]), loss: 2,
 * };
 * injectPoison(msg, { kind: "flip" });
 * console.log(msg.q); // Int8Array [-1, 2]
 * ```
 */
export function injectPoison(msg: ContributionMsg, fault: { kind: string }): void {
  switch (fault.kind) {
    case "nan":
      msg.scales[0] = NaN;
      break;
    case "shape":
      msg.q = msg.q.slice(0, msg.q.length - 1);
      msg.n = msg.q.length;
      msg.scales = msg.scales.slice(0, Math.ceil(msg.n / 256));
      break;
    case "stale":
      // A past round when there is one, else a future one: both are refused.
      msg.round = msg.round > 0 ? msg.round - 1 : msg.round + 1;
      break;
    case "scale":
      msg.scales = msg.scales.map((s) => s * 1000);
      break;
    case "inf":
      msg.scales[0] = Infinity;
      break;
    case "flip":
      msg.q = msg.q.map((q) => -q);
      break;
  }
}
