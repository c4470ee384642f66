/**
 * The vocabulary of a channel, with no behaviour of its own: the tunables
 * shared by server and client connections and their check, the socket a
 * channel drives, the handler and close types, the counters, and the logger.
 * Kept apart from the channel so that the server, the client and the
 * channel's own parts (send queue, asks, handshake) import the types without
 * importing one another.
 *
 * @module
 */
import type { Role } from "./auth.ts";
import { ALIGN, DEFAULT_CHUNK_BYTES, DEFAULT_WHOLE_BYTES } from "./chunk.ts";
import type { Envelope, Limits } from "./envelope.ts";
import type { FaultInjector } from "./faults.ts";
import type { NodeIdentity } from "./identity.ts";
import type { Channel } from "./_channel.ts";

/** Log levels of a {@linkcode Logger}. */
export type LogLevel = "debug" | "info" | "warn" | "error";
/** Where the transport writes its log lines. */
export type Logger = (level: LogLevel, message: string) => void;

/** Default logger: warnings and errors to the console, the rest dropped. */
export const consoleLogger: Logger = (level, message) => {
  if (level === "warn") console.warn(`transport: ${message}`);
  else if (level === "error") console.error(`transport: ${message}`);
};

/** The socket operations a channel needs (a Deno `WebSocket` has them). */
export interface SocketLike {
  /** Queues bytes to send. */
  send(data: Uint8Array): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /** Bytes queued but not yet written. */
  readonly bufferedAmount: number;
  /** `WebSocket.OPEN` (1) while usable. */
  readonly readyState: number;
}

/** Largest transfer sent whole, as one chunk frame. */
/** Largest transfer sent whole, as one chunk frame. */
export function wholeBytes(options: ConnectionOptions): number {
  return options.wholeBytes ??
    Math.min(DEFAULT_WHOLE_BYTES, 4 * (options.chunkBytes ?? DEFAULT_CHUNK_BYTES));
}

/**
 * Checks connection tunables, throwing a `RangeError` that names the bad one.
 */
export function checkConnectionOptions(options: ConnectionOptions): void {
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < ALIGN || chunkBytes % ALIGN !== 0) {
    throw new RangeError(
      `Invalid chunk size: ${chunkBytes} (must be a positive multiple of ${ALIGN})`,
    );
  }
  if (chunkBytes > 32 << 20) {
    throw new RangeError(
      `Invalid chunk size: ${chunkBytes} (at most 32 MiB, far below the 64 MiB frame limit)`,
    );
  }
  const whole = wholeBytes(options);
  if (!Number.isSafeInteger(whole) || whole < 0 || whole > 15 << 20) {
    throw new RangeError(`Invalid wholeBytes: ${whole} (must be an integer in [0, 15 MiB])`);
  }
  for (const key of ["highWaterBytes", "lowWaterBytes", "maxBatchBytes", "attachBytes"] as const) {
    const v = options[key];
    if (v !== undefined && !(v > 0)) {
      throw new RangeError(`Invalid ${key}: ${v} (must be positive)`);
    }
  }
}

/** A tell or ask delivered to a message handler. */
export interface IncomingMessage {
  /** "tell" or "ask". */
  kind: "tell" | "ask";
  /** Sender address (its node part is the authenticated peer). */
  from: string;
  /** Receiver address (its node part is this node). */
  to: string;
  /** The message. */
  payload: unknown;
}

/**
 * Handles messages in request/response mode: the return value (or the
 * resolved promise) of an ask is sent back as the reply; a throw becomes an
 * error reply.
 */
export type MessageHandler = (message: IncomingMessage, peer: Channel) => unknown;

/** How a connection ended. */
export interface CloseInfo {
  /** WebSocket close code (1006 when the connection just dropped). */
  code: number;
  /** Close reason. */
  reason: string;
}

/** Tunables shared by server and client connections. */
export interface ConnectionOptions {
  /** Incoming-frame limits. */
  limits?: Partial<Limits>;
  /** Bytes per chunk for large messages (a multiple of 16). Default 2 MiB. */
  chunkBytes?: number;
  /**
   * Large messages of up to this many bytes (attachments and head) travel
   * whole, as one chunk frame that the receiver keeps in place; larger ones
   * are cut into `chunkBytes` chunks. At most 15 MiB (under the default
   * 16 MiB frame limit); 0 always cuts. Default: four chunks, at most
   * 4 MiB + 64 KiB (a 4 MiB typed array and its envelope).
   */
  wholeBytes?: number;
  /**
   * Typed arrays of at least this many bytes travel as raw attachments in a
   * chunked transfer instead of inside the msgpack body. Default 16 KiB.
   */
  attachBytes?: number;
  /** Pause sending while the socket holds more than this many bytes. Default 8 MiB. */
  highWaterBytes?: number;
  /** Resume sending once the socket holds fewer than this. Default 2 MiB. */
  lowWaterBytes?: number;
  /** Largest batch of small envelopes in one frame, in bytes. Default 256 KiB. */
  maxBatchBytes?: number;
  /** Time allowed for the handshake, in ms. Default 10,000. */
  handshakeTimeoutMs?: number;
  /** Client ping interval, in ms (0 disables). Default 2,000. */
  pingIntervalMs?: number;
  /** Close when nothing arrives for this long, in ms. Default 6,000. */
  pingTimeoutMs?: number;
  /** Default ask timeout, in ms. Default 30,000. */
  askTimeoutMs?: number;
  /** Fault layer for tests. */
  faults?: FaultInjector;
  /** Log sink. Default {@linkcode consoleLogger}. */
  log?: Logger;
}

/** Everything a channel needs; assembled by the server and the client. */
export interface ChannelOptions extends ConnectionOptions {
  /** This node's id. */
  nodeId: string;
  /** Run id. */
  run: string;
  /** HMAC key of the run secret, when the run has one. */
  key?: CryptoKey;
  /** This node's key pair: it signs the handshake, and a server asks peers for theirs. */
  identity?: NodeIdentity;
  /** Server side: the key fingerprints admitted (an allow-list); every key when absent. */
  allow?: ReadonlySet<string>;
  /** Which side of the handshake this channel plays. */
  role: Role;
  /** Resolved limits. */
  resolvedLimits: Limits;
  /** Client side: the server id to insist on. */
  expectedPeer?: string;
  /** Client side: the server's key fingerprint (or a prefix of it) to insist on. */
  expectedKey?: string;
  /** Request/response mode handler. */
  onMessage?: MessageHandler;
  /**
   * Raw mode handler: receives every validated data envelope (tell, ask,
   * reply, error) except replies to this channel's own asks. Takes priority
   * over `onMessage`.
   */
  onEnvelope?: (envelope: Envelope, peer: Channel) => void;
  /** Called once the peer has proven the run secret. */
  onOpen?: (peer: Channel) => void;
  /** Called once when the channel closes. */
  onClose?: (peer: Channel, info: CloseInfo) => void;
  /** Remote address, for logs. */
  remoteAddr?: string;
}

/** Options of {@linkcode Channel.ask}. */
export interface AskOptions {
  /** Reply timeout in ms. Default: the connection's `askTimeoutMs`. */
  timeoutMs?: number;
  /** Aborting rejects the ask with the signal's reason. */
  signal?: AbortSignal;
}

/** Counters of one channel. */
export interface ChannelStats {
  /** Frames received. */
  framesIn: number;
  /** Frames sent. */
  framesOut: number;
  /** Frames dropped by the rate limit. */
  dropped: number;
  /** Envelopes dropped as replays of a sequence number already seen. */
  duplicates: number;
  /** Frames or envelopes rejected as invalid. */
  rejected: number;
}
