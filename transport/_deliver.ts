/**
 * Delivery of a checked data envelope to the application: the raw handler
 * (`onEnvelope`) when there is one, else request/response mode, where a tell
 * goes to `onMessage` and an ask's answer (or its failure) goes back to the
 * peer as a reply (or an error). Kept apart from the channel, which only
 * decides whether an envelope may be delivered; this module decides what the
 * application sees and how its failures reach the peer.
 *
 * @module
 */
import type { Envelope, ErrorPayload } from "./envelope.ts";
import type { ErrorCode } from "./errors.ts";
import type { Channel } from "./_channel.ts";
import type { ChannelOptions, IncomingMessage, LogLevel } from "./_channel_options.ts";

/** What delivery needs: the channel to answer through, its handlers, and its log. */
export interface DeliveryContext {
  /** The channel the envelope arrived on. */
  peer: Channel;
  /** The channel's options, with the handlers. */
  options: ChannelOptions;
  /** The channel's log. */
  log: (level: LogLevel, message: string) => void;
}

/**
 * Hands a data envelope (tell, ask, reply, error) that answers none of the
 * channel's own asks to the application handlers.
 */
export function deliver(env: Envelope, ctx: DeliveryContext): void {
  if (ctx.options.onEnvelope) {
    try {
      ctx.options.onEnvelope(env, ctx.peer);
    } catch (err) {
      ctx.log(
        "error",
        `Handler failed on a ${env.kind} from "${env.from}": ${(err as Error).message}`,
      );
      if (env.kind === "ask") answerError(ctx.peer, env, "handler_failed", (err as Error).message);
    }
    return;
  }
  switch (env.kind) {
    case "tell":
    case "ask":
      break;
    case "error":
      ctx.log(
        "warn",
        `Peer "${ctx.peer.peerId}" reported: ${(env.payload as ErrorPayload).message}`,
      );
      return;
    default:
      return; // a reply to an ask that already timed out
  }
  const handler = ctx.options.onMessage;
  if (!handler) {
    if (env.kind === "ask") {
      answerError(
        ctx.peer,
        env,
        "no_handler",
        `No handler for messages on node "${ctx.options.nodeId}"`,
      );
    }
    return;
  }
  const message: IncomingMessage = {
    kind: env.kind,
    from: env.from,
    to: env.to,
    payload: env.payload,
  };
  if (env.kind === "tell") {
    try {
      const r = handler(message, ctx.peer);
      if (r instanceof Promise) {
        r.catch((err) => ctx.log("error", `Tell handler failed: ${err?.message ?? err}`));
      }
    } catch (err) {
      ctx.log("error", `Tell handler failed: ${(err as Error).message}`);
    }
    return;
  }
  new Promise((resolve) => resolve(handler(message, ctx.peer))).then(
    (value) => {
      if (!ctx.peer.isOpen) return;
      try {
        ctx.peer.post("reply", env.from, value, { corr: env.id });
      } catch (err) {
        answerError(
          ctx.peer,
          env,
          "handler_failed",
          `Cannot send reply: ${(err as Error).message}`,
        );
      }
    },
    (err) =>
      answerError(
        ctx.peer,
        env,
        "handler_failed",
        err instanceof Error ? err.message : String(err),
      ),
  );
}

/** Answers an ask with an error, if the channel is still open. */
function answerError(peer: Channel, env: Envelope, code: ErrorCode, message: string): void {
  if (!peer.isOpen) return;
  peer.post("error", env.from, { code, message } satisfies ErrorPayload, { corr: env.id });
}
