/**
 * The checks on an envelope that arrives on an open channel
 * (`_channel.ts`), before anything acts on it: it belongs to this run, it
 * comes from the node authenticated on this connection (no spoofed
 * sender), and a data envelope is addressed to this node (there is no
 * routing between peers). Also the size limit on a frame sent during the
 * handshake. The channel decides what a refusal does (an error frame, or
 * the end of a handshake); these functions only say what was wrong.
 *
 * @module
 */
import { DATA_KINDS, type Envelope, type Limits } from "./envelope.ts";
import { FrameError } from "./errors.ts";
import { nodeOf } from "../actors/runtime/_remote.ts";

/** Who the channel is: its run, its node, and the peer it authenticated. */
export interface ArrivalSide {
  run: string;
  nodeId: string;
  peerId: string;
}

/** Why an arriving envelope is refused, and the ask it answers (if any). */
export interface Refusal {
  error: FrameError;
  corr?: number;
}

/**
 * Checks an envelope that arrived after the handshake: its run, its sender
 * and its destination. Returns undefined when it may be handled.
 *
 * @example
 * ```ts ignore
 * const refused = arrivalRefusal(env, { run: "r", nodeId: "a", peerId: "b" });
 * if (refused) reject(refused.error, refused.corr);
 * ```
 */
export function arrivalRefusal(env: Envelope, side: ArrivalSide): Refusal | undefined {
  if (env.run !== side.run) {
    return {
      error: new FrameError("wrong_run", `Frame for run "${env.run}" on run "${side.run}"`),
    };
  }
  if (nodeOf(env.from) !== side.peerId) {
    return {
      error: new FrameError(
        "spoofed",
        `Frame claims to come from "${env.from}" on the connection of "${side.peerId}"`,
      ),
    };
  }
  if (DATA_KINDS.has(env.kind) && env.kind !== "error" && nodeOf(env.to) !== side.nodeId) {
    return {
      error: new FrameError(
        "unreachable",
        `Frame for "${env.to}" reached node "${side.nodeId}": no routing between peers`,
      ),
      corr: env.kind === "ask" ? env.id : undefined,
    };
  }
  return undefined;
}

/** Refuses a handshake frame over the limit (undefined when it fits). */
export function handshakeFrameRefusal(bytes: number, limits: Limits): FrameError | undefined {
  if (bytes <= limits.maxHandshakeFrameBytes) return undefined;
  return new FrameError(
    "too_large",
    `Handshake frame of ${bytes} bytes exceeds the limit of ${limits.maxHandshakeFrameBytes}`,
  );
}
