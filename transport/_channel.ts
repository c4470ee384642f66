/**
 * One authenticated connection to a peer node, on either side: handshake,
 * validation, rate limits, batching, chunking, backpressure, liveness and
 * ask correlation. Sockets are driven from outside (`attach`, `receive`,
 * `socketClosed`) so the same code serves accepted and dialled sockets.
 *
 * @module
 */
import {
  AUTH_FAILED_CODE,
  AUTH_TIMEOUT_CODE,
  prove,
  randomNonce,
  type Role,
  verifyProof,
} from "./auth.ts";
import {
  ALIGN,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_WHOLE_BYTES,
  digest128,
  extractAttachments,
  gather,
  layoutAttachments,
  Reassembler,
  restoreAttachments,
  rootDigest,
} from "./chunk.ts";
import { decode, encode } from "./codec.ts";
import {
  DATA_KINDS,
  type Envelope,
  type ErrorPayload,
  type Kind,
  type Limits,
  parseFrame,
  validateEnvelope,
  WIRE_VERSION,
} from "./envelope.ts";
import { nodeOf } from "../actors/runtime/_remote.ts";
import { AskTimeoutError } from "../actors/runtime/ref.ts";
import {
  AuthenticationError,
  ConnectionClosedError,
  type ErrorCode,
  FrameError,
  RemoteError,
} from "./errors.ts";
import type { FaultInjector } from "./faults.ts";

type Timer = ReturnType<typeof setTimeout>;

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
function wholeBytes(options: ConnectionOptions): number {
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
  /** HMAC key of the run secret. */
  key: CryptoKey;
  /** Which side of the handshake this channel plays. */
  role: Role;
  /** Resolved limits. */
  resolvedLimits: Limits;
  /** Client side: the server id to insist on. */
  expectedPeer?: string;
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

type State = "idle" | "handshake" | "verifying" | "open" | "closed";

interface PendingAsk {
  to: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer?: Timer;
  signal?: AbortSignal;
  onAbort?: () => void;
}

interface TransferItem {
  to: string;
  segments: Uint8Array[];
  total: number;
  head: number;
}
type OutItem = Uint8Array | TransferItem;

/** Room kept in front of chunk data for the envelope fields. */
const PREFIX_ROOM = 2048;
const PAYLOAD_KEY = new Uint8Array([0xa7, ...new TextEncoder().encode("payload")]);

const ARRAY32 = 0xdd;
const HEADER = 5;

class TokenBucket {
  #rate: number;
  #burst: number;
  #tokens: number;
  #last = performance.now();
  constructor(rate: number, burst: number) {
    this.#rate = rate;
    this.#burst = burst;
    this.#tokens = burst;
  }
  take(n: number): boolean {
    const now = performance.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) / 1000) * this.#rate);
    this.#last = now;
    if (this.#tokens < n) return false;
    this.#tokens -= n;
    return true;
  }
}

function asBytes(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * One connection to one peer. Created by {@linkcode TransportServer} and
 * {@linkcode TransportClient}; application code gets it as the `peer` of a
 * handler or from `server.peer(id)` / `client.channel`.
 */
export class Channel {
  #o: ChannelOptions;
  #limits: Limits;
  #socket: SocketLike | undefined;
  #state: State = "idle";
  #peerId = "";
  #nonce = randomNonce();
  #seq = 0;
  #askId = 0;
  #xid = 0;
  #pending = new Map<number, PendingAsk>();
  #seen = new Set<number>();
  #highestSeen = -1;
  #frames: TokenBucket;
  #bytes: TokenBucket;
  #rateLimited = 0;
  #lastRateError = -Infinity;
  #reassembler: Reassembler;
  #frameBuf: Uint8Array | undefined;
  #early: Uint8Array[] = [];
  #batch = new Uint8Array(64 << 10);
  #batchLen = HEADER;
  #batchCount = 0;
  #flushQueued = false;
  #out: OutItem[] = [];
  #outBytes = 0;
  #pumping = false;
  #drainWaiters: (() => void)[] = [];
  #timers = new Set<Timer>();
  #handshakeTimer: Timer | undefined;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #lastHeard = performance.now();
  #sentBytes = 0;
  #lastDrained = 0;
  #closeInfo: CloseInfo | undefined;
  #closed = Promise.withResolvers<CloseInfo>();
  #opened = Promise.withResolvers<void>();
  #stats: ChannelStats = { framesIn: 0, framesOut: 0, dropped: 0, duplicates: 0, rejected: 0 };

  /** Creates a channel; call {@linkcode Channel.attach} when its socket opens. */
  constructor(options: ChannelOptions) {
    this.#o = options;
    this.#limits = options.resolvedLimits;

    this.#frames = new TokenBucket(this.#limits.framesPerSecond, this.#limits.framesBurst);
    this.#bytes = new TokenBucket(this.#limits.bytesPerSecond, this.#limits.bytesBurst);
    this.#reassembler = new Reassembler({
      maxMessageBytes: this.#limits.maxMessageBytes,
      timeoutMs: this.#limits.reassemblyTimeoutMs,
      onExpired: (err) => this.#reject(err),
    });
    // Nobody may be waiting on these; keep a failed handshake from becoming an unhandled rejection.
    this.#opened.promise.catch(() => {});
  }

  /** This node's id. */
  get nodeId(): string {
    return this.#o.nodeId;
  }

  /** The authenticated peer's node id ("" before the handshake completes). */
  get peerId(): string {
    return this.#peerId;
  }

  /** The peer's address, for logs and second endpoints: the URL dialled, or `host:port`. */
  get remoteAddr(): string | undefined {
    return this.#o.remoteAddr;
  }

  /** Whether the handshake completed and the channel is not closed. */
  get isOpen(): boolean {
    return this.#state === "open";
  }

  /** Resolves when the peer is authenticated; rejects if the channel closes first. */
  get opened(): Promise<void> {
    return this.#opened.promise;
  }

  /** Resolves with the close code and reason once the socket has closed. */
  get closed(): Promise<CloseInfo> {
    return this.#closed.promise;
  }

  /** Close code and reason, once closed. */
  get closeInfo(): CloseInfo | undefined {
    return this.#closeInfo;
  }

  /** Counters: frames in and out, dropped (rate limit), duplicates, rejected. */
  get stats(): ChannelStats {
    return { ...this.#stats };
  }

  /** Bytes waiting to go out: batched, queued, and in the socket's buffer. */
  get backlog(): number {
    return this.#batchLen - HEADER + this.#outBytes + (this.#socket?.bufferedAmount ?? 0);
  }

  /** Starts the handshake on a socket that has just opened. */
  attach(socket: SocketLike): void {
    if (this.#state !== "idle") {
      throw new TypeError("Cannot attach a socket: channel already started");
    }
    this.#socket = socket;
    this.#state = "handshake";
    this.#lastHeard = performance.now();
    this.#handshakeTimer = setTimeout(() => {
      this.#handshakeTimer = undefined;
      this.#fail(AUTH_TIMEOUT_CODE, "Authentication timed out");
    }, this.#o.handshakeTimeoutMs ?? 10_000);
    if (this.#o.role === "server") {
      this.#sendNow({ kind: "challenge", to: "", payload: { nonce: this.#nonce } });
    }
  }

  // --- receiving --------------------------------------------------------------

  /**
   * Feeds one WebSocket message into the channel. The channel may keep views
   * of `data` (a message sent whole is delivered in place): do not reuse it.
   */
  receive(data: unknown): void {
    if (this.#state === "closed" || this.#state === "idle") return;
    if (!(data instanceof ArrayBuffer) && !(data instanceof Uint8Array)) {
      this.#reject(
        new FrameError("malformed", `Malformed frame: expected binary data, got ${typeof data}`),
      );
      return;
    }
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    const faults = this.#o.faults;
    if (faults && faults.on !== "send" && this.#peerId) {
      faults.transmit(this.#peerId, this.#o.nodeId, bytes, (b) => this.#receiveFrame(b));
    } else {
      this.#receiveFrame(bytes);
    }
  }

  #receiveFrame(bytes: Uint8Array): void {
    if (this.#state === "closed") return;
    this.#lastHeard = performance.now();
    this.#stats.framesIn++;
    if (!this.#frames.take(1) || !this.#bytes.take(bytes.byteLength)) {
      this.#stats.dropped++;
      this.#rateLimited++;
      const now = performance.now();
      if (now - this.#lastRateError > 1000) {
        this.#lastRateError = now;
        this.#reject(
          new FrameError(
            "rate_limited",
            `Rate limit exceeded: ${this.#rateLimited} frames dropped (limit ${this.#limits.framesPerSecond} frames/s)`,
          ),
        );
      }
      return;
    }
    if (this.#state === "verifying") {
      if (this.#o.role === "client") {
        // The server may speak as soon as it has sent its welcome; hold its frames.
        this.#early.push(bytes.slice());
        return;
      }
      this.#fail(
        AUTH_FAILED_CODE,
        "Authentication failed: frame sent before the handshake completed",
      );
      return;
    }
    const { envelopes, errors } = parseFrame(bytes, this.#limits);
    for (const err of errors) this.#reject(err);
    for (const env of envelopes) {
      if ((this.#state as State) === "closed") return;
      if (this.#state === "handshake") this.#handshake(env);
      else this.#handle(env);
    }
  }

  /** Reports a bad frame to the peer (or ends a handshake) and logs it. */
  #reject(err: FrameError, corr?: number): void {
    this.#stats.rejected++;
    const who = this.#peerId
      ? `peer "${this.#peerId}"`
      : `unauthenticated peer at ${this.#o.remoteAddr ?? "?"}`;
    this.#log("warn", `Dropped frame from ${who}: ${err.message}`);
    if (this.#state === "handshake" || this.#state === "verifying") {
      this.#fail(AUTH_FAILED_CODE, `Authentication failed: ${err.message}`.slice(0, 120));
      return;
    }
    if (this.#state !== "open") return;
    this.#sendNow({
      kind: "error",
      to: this.#peerId,
      corr,
      payload: { code: err.code, message: err.message } satisfies ErrorPayload,
    });
  }

  #handshake(env: Envelope): void {
    const role = this.#o.role;
    const expected: Kind = role === "server" ? "auth" : this.#peerId ? "welcome" : "challenge";
    if (env.kind !== expected) {
      this.#authFailed(env.from, `expected ${expected}, got ${env.kind}`);
      return;
    }
    if (env.run !== this.#o.run) {
      this.#authFailed(env.from, `run mismatch: "${env.run}"`);
      return;
    }
    if (expected === "challenge") {
      if (this.#o.expectedPeer && env.from !== this.#o.expectedPeer) {
        this.#authFailed(env.from, `expected server "${this.#o.expectedPeer}"`);
        return;
      }
      this.#peerId = env.from;
      this.#state = "verifying";
      const nonce = (env.payload as { nonce: Uint8Array }).nonce;
      prove(this.#o.key, { role: "client", nonce, peerId: this.#o.nodeId, run: this.#o.run }).then(
        (mac) => {
          if (this.#state !== "verifying") return;
          this.#state = "handshake";
          this.#sendNow({ kind: "auth", to: env.from, payload: { mac, nonce: this.#nonce } });
          this.#drainEarly();
        },
      );
      return;
    }
    this.#state = "verifying";
    const mac = (env.payload as { mac: Uint8Array }).mac;
    const input = role === "server"
      ? { role: "client" as const, nonce: this.#nonce, peerId: env.from, run: this.#o.run }
      : { role: "server" as const, nonce: this.#nonce, peerId: env.from, run: this.#o.run };
    verifyProof(this.#o.key, mac, input).then(async (ok) => {
      if (this.#state !== "verifying") return;
      if (!ok || (role === "client" && env.from !== this.#peerId)) {
        this.#authFailed(
          env.from,
          role === "server" ? "bad MAC" : "server did not prove the run secret",
        );
        return;
      }
      if (role === "server") {
        this.#peerId = env.from;
        const peerNonce = (env.payload as { nonce: Uint8Array }).nonce;
        const reply = await prove(this.#o.key, {
          role: "server",
          nonce: peerNonce,
          peerId: this.#o.nodeId,
          run: this.#o.run,
        });
        if (this.#state !== "verifying") return;
        this.#sendNow({ kind: "welcome", to: env.from, payload: { mac: reply } });
      }
      this.#becomeOpen();
    });
  }

  #drainEarly(): void {
    const early = this.#early;
    this.#early = [];
    for (const b of early) this.#receiveFrame(b);
  }

  #authFailed(peer: string, why: string): void {
    this.#log(
      "warn",
      `Authentication failed for peer "${peer}" at ${this.#o.remoteAddr ?? "?"}: ${why}`,
    );
    this.#fail(AUTH_FAILED_CODE, "Authentication failed");
  }

  #becomeOpen(): void {
    this.#state = "open";
    if (this.#handshakeTimer !== undefined) clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = undefined;
    const interval = this.#o.pingIntervalMs ?? 2000;
    const timeout = this.#o.pingTimeoutMs ?? 6000;
    if (interval > 0) {
      this.#pingTimer = setInterval(() => {
        // Bytes the peer's TCP stack has taken off our buffer also prove it alive: a peer busy
        // reading a large transfer answers pings late, but keeps draining the socket.
        const drained = this.#sentBytes - (this.#socket?.bufferedAmount ?? 0);
        if (drained > this.#lastDrained) {
          this.#lastDrained = drained;
          this.#lastHeard = performance.now();
        }
        if (performance.now() - this.#lastHeard > timeout) {
          this.#log("warn", `No frame from peer "${this.#peerId}" for ${timeout} ms: closing`);
          this.close(4408, "Ping timeout");
          return;
        }
        if (this.#o.role === "client") {
          this.#sendNow({ kind: "ping", to: this.#peerId, payload: Date.now() });
        }
      }, interval);
    }
    this.#o.onOpen?.(this);
    this.#opened.resolve();
    this.#drainEarly();
  }

  #handle(env: Envelope): void {
    if (env.run !== this.#o.run) {
      this.#reject(
        new FrameError("wrong_run", `Frame for run "${env.run}" on run "${this.#o.run}"`),
      );
      return;
    }
    if (nodeOf(env.from) !== this.#peerId) {
      this.#reject(
        new FrameError(
          "spoofed",
          `Frame claims to come from "${env.from}" on the connection of "${this.#peerId}"`,
        ),
      );
      return;
    }
    if (DATA_KINDS.has(env.kind) && env.kind !== "error" && nodeOf(env.to) !== this.#o.nodeId) {
      this.#reject(
        new FrameError(
          "unreachable",
          `Frame for "${env.to}" reached node "${this.#o.nodeId}": no routing between peers`,
        ),
        env.kind === "ask" ? env.id : undefined,
      );
      return;
    }
    if (!this.#fresh(env.seq)) {
      this.#stats.duplicates++;
      return;
    }
    switch (env.kind) {
      case "ping":
        this.#sendNow({ kind: "pong", to: this.#peerId, payload: env.payload });
        return;
      case "pong":
        return;
      case "chunk":
        this.#chunk(env);
        return;
      case "challenge":
      case "auth":
      case "welcome":
        this.#reject(new FrameError("invalid", `Unexpected ${env.kind} frame after the handshake`));
        return;
      default:
        this.#dispatch(env);
    }
  }

  /** Anti-replay window: true the first time a sequence number is seen. */
  #fresh(seq: number): boolean {
    if (seq > this.#highestSeen) {
      this.#highestSeen = seq;
      this.#seen.add(seq);
      if (this.#seen.size > 4096) {
        const floor = this.#highestSeen - 2048;
        for (const s of this.#seen) if (s < floor) this.#seen.delete(s);
      }
      return true;
    }
    if (seq < this.#highestSeen - 2048 || this.#seen.has(seq)) return false;
    this.#seen.add(seq);
    return true;
  }

  #chunk(env: Envelope): void {
    let inner: Envelope;
    try {
      const done = this.#reassembler.add(env.chunk!, env.payload as Uint8Array);
      if (!done) return;
      const { bytes, head } = done;
      const start = bytes.byteLength - head;
      let raw: Record<string, unknown>;
      try {
        raw = decode(bytes.subarray(start)) as Record<string, unknown>;
      } catch (err) {
        throw new FrameError("malformed", `Malformed chunked message: ${(err as Error).message}`);
      }
      if (raw !== null && typeof raw === "object" && "att" in raw) {
        raw.payload = restoreAttachments(raw.payload, raw.att, bytes, start);
        delete raw.att;
      }
      inner = validateEnvelope(raw, this.#limits);
      if (
        !DATA_KINDS.has(inner.kind) || inner.from !== env.from || inner.to !== env.to ||
        inner.run !== env.run
      ) {
        throw new FrameError(
          "invalid",
          `Chunked message ${env.chunk!.xid} does not match its chunk headers`,
        );
      }
    } catch (err) {
      this.#reject(err instanceof FrameError ? err : new FrameError("invalid", String(err)));
      return;
    }
    this.#dispatch(inner);
  }

  #dispatch(env: Envelope): void {
    if ((env.kind === "reply" || env.kind === "error") && env.corr !== undefined) {
      const pending = this.#pending.get(env.corr);
      if (pending) {
        this.#settle(env.corr, pending);
        if (env.kind === "reply") pending.resolve(env.payload);
        else {
          const p = env.payload as ErrorPayload;
          pending.reject(new RemoteError(p.code, `Ask to ${pending.to} failed: ${p.message}`));
        }
        return;
      }
    }
    if (this.#o.onEnvelope) {
      try {
        this.#o.onEnvelope(env, this);
      } catch (err) {
        this.#log(
          "error",
          `Handler failed on a ${env.kind} from "${env.from}": ${(err as Error).message}`,
        );
        if (env.kind === "ask") this.#answerError(env, "handler_failed", (err as Error).message);
      }
      return;
    }
    switch (env.kind) {
      case "tell":
      case "ask":
        break;
      case "error":
        this.#log(
          "warn",
          `Peer "${this.#peerId}" reported: ${(env.payload as ErrorPayload).message}`,
        );
        return;
      default:
        return; // a reply to an ask that already timed out
    }
    const handler = this.#o.onMessage;
    if (!handler) {
      if (env.kind === "ask") {
        this.#answerError(env, "no_handler", `No handler for messages on node "${this.#o.nodeId}"`);
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
        const r = handler(message, this);
        if (r instanceof Promise) {
          r.catch((err) => this.#log("error", `Tell handler failed: ${err?.message ?? err}`));
        }
      } catch (err) {
        this.#log("error", `Tell handler failed: ${(err as Error).message}`);
      }
      return;
    }
    new Promise((resolve) => resolve(handler(message, this))).then(
      (value) => {
        if (this.#state !== "open") return;
        try {
          this.post("reply", env.from, value, { corr: env.id });
        } catch (err) {
          this.#answerError(env, "handler_failed", `Cannot send reply: ${(err as Error).message}`);
        }
      },
      (err) =>
        this.#answerError(env, "handler_failed", err instanceof Error ? err.message : String(err)),
    );
  }

  #answerError(env: Envelope, code: ErrorCode, message: string): void {
    if (this.#state !== "open") return;
    this.post("error", env.from, { code, message } satisfies ErrorPayload, { corr: env.id });
  }

  // --- sending ----------------------------------------------------------------

  #envelope(
    kind: Kind,
    to: string,
    payload: unknown,
    extra?: { id?: number; corr?: number; from?: string },
  ): Envelope {
    const env: Envelope = {
      v: WIRE_VERSION,
      run: this.#o.run,
      from: extra?.from ?? this.#o.nodeId,
      to,
      kind,
      seq: this.#seq++,
      payload,
    };
    if (extra?.id !== undefined) env.id = extra.id;
    if (extra?.corr !== undefined) env.corr = extra.corr;
    return env;
  }

  /** Sends a control envelope at once, ahead of queued data (pings, handshake, errors). */
  #sendNow(partial: { kind: Kind; to: string; payload: unknown; corr?: number }): void {
    const env = this.#envelope(partial.kind, partial.to, partial.payload, { corr: partial.corr });
    this.#write(encode(env), partial.to);
  }

  #write(frame: Uint8Array, to: string): void {
    const socket = this.#socket;
    if (!socket || socket.readyState !== 1) return;
    this.#stats.framesOut++;
    const faults = this.#o.faults;
    if (faults && faults.on !== "receive" && this.#peerId) {
      // The fault layer may deliver later, so it gets its own copy.
      faults.transmit(this.#o.nodeId, this.#peerId || to, frame.slice(), (b) => {
        if (socket.readyState !== 1) return;
        this.#sentBytes += b.byteLength;
        socket.send(b);
      });
      return;
    }
    this.#sentBytes += frame.byteLength;
    socket.send(frame);
  }

  /**
   * Queues one data envelope (tell, ask, reply, error) for the peer. Small
   * envelopes are batched into one frame per event-loop turn; large ones go
   * out in chunks, in order. Throws {@linkcode ConnectionClosedError} when
   * the channel is not open and a `TypeError` when the payload cannot be
   * encoded.
   */
  post(
    kind: "tell" | "ask" | "reply" | "error",
    to: string,
    payload: unknown,
    extra?: { id?: number; corr?: number; from?: string },
  ): void {
    if (this.#state !== "open") {
      throw new ConnectionClosedError(
        `Cannot send to ${to}: connection to "${this.#peerId || "?"}" is ${
          this.#state === "closed" ? "closed" : "not open"
        }`,
      );
    }
    const env = this.#envelope(kind, to, payload, extra);
    const chunkBytes = this.#o.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    const extracted = extractAttachments(payload, this.#o.attachBytes ?? 16 << 10);
    let bytes: Uint8Array;
    try {
      if (extracted) {
        const { refs, end } = layoutAttachments(extracted.arrays);
        const head = encode({ ...env, payload: extracted.payload, att: refs }).slice();
        const segments: Uint8Array[] = [];
        let at = 0;
        extracted.arrays.forEach((a, i) => {
          if (refs[i][1] > at) segments.push(new Uint8Array(refs[i][1] - at));
          segments.push(asBytes(a));
          at = refs[i][1] + a.byteLength;
        });
        if (end > at) segments.push(new Uint8Array(end - at));
        segments.push(head);
        this.#flushBatch();
        this.#enqueue({ to, segments, total: end + head.byteLength, head: head.byteLength });
        return;
      }
      bytes = encode(env);
    } catch (err) {
      throw new TypeError(`Cannot encode ${kind} to ${to}: ${(err as Error).message}`);
    }
    if (bytes.byteLength > chunkBytes) {
      this.#flushBatch();
      const owned = bytes.slice();
      this.#enqueue({ to, segments: [owned], total: owned.byteLength, head: owned.byteLength });
      return;
    }
    this.#append(bytes);
  }

  #append(bytes: Uint8Array): void {
    const maxBatch = this.#o.maxBatchBytes ?? 256 << 10;
    if (this.#batchLen + bytes.byteLength > maxBatch && this.#batchCount > 0) this.#flushBatch();
    const need = this.#batchLen + bytes.byteLength;
    if (need > this.#batch.byteLength) {
      const grown = new Uint8Array(Math.max(need, this.#batch.byteLength * 2));
      grown.set(this.#batch.subarray(0, this.#batchLen));
      this.#batch = grown;
    }
    this.#batch.set(bytes, this.#batchLen);
    this.#batchLen += bytes.byteLength;
    this.#batchCount++;
    if (this.#batchCount >= this.#limits.maxBatch || this.#batchLen >= maxBatch) {
      this.#flushBatch();
    } else if (!this.#flushQueued) {
      this.#flushQueued = true;
      queueMicrotask(() => {
        this.#flushQueued = false;
        this.#flushBatch();
      });
    }
  }

  #flushBatch(): void {
    if (this.#batchCount === 0 || this.#state !== "open") return;
    const view = new DataView(this.#batch.buffer, this.#batch.byteOffset);
    this.#batch[0] = ARRAY32;
    view.setUint32(1, this.#batchCount);
    const frame = this.#batch.subarray(0, this.#batchLen);
    this.#batchLen = HEADER;
    this.#batchCount = 0;
    const socket = this.#socket!;
    const high = this.#o.highWaterBytes ?? 8 << 20;
    if (!this.#pumping && this.#out.length === 0 && socket.bufferedAmount < high) {
      this.#write(frame, this.#peerId); // Deno copies on send, so the batch buffer is reused
    } else {
      this.#enqueue(frame.slice());
    }
  }

  #enqueue(item: OutItem): void {
    this.#out.push(item);
    this.#outBytes += item instanceof Uint8Array ? item.byteLength : item.total;
    if (!this.#pumping) {
      this.#pumping = true;
      this.#pump().catch((err) => {
        this.#log("error", `Send queue failed: ${err instanceof Error ? err.message : err}`);
        this.close(1011, "Send queue failed");
      });
    }
  }

  async #pump(): Promise<void> {
    try {
      while (this.#out.length > 0 && this.#state === "open") {
        const item = this.#out.shift()!;
        if (item instanceof Uint8Array) {
          await this.#waitBelowHighWater();
          this.#outBytes -= item.byteLength;
          this.#write(item, this.#peerId);
          continue;
        }
        await this.#sendTransfer(item);
      }
    } finally {
      // Cleared in the same turn as the last emptiness check: an item queued from a microtask
      // after the loop (an ask's reply, say) must start a new pump, not join one that has ended.
      this.#pumping = false;
      this.#notifyDrain();
    }
  }

  /** Sends one transfer as chunk frames, building each frame in one reused buffer. */
  async #sendTransfer(item: TransferItem): Promise<void> {
    const whole = item.total <= wholeBytes(this.#o);
    const chunkBytes = whole ? Math.max(1, item.total) : this.#o.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if ((this.#frameBuf?.byteLength ?? 0) < PREFIX_ROOM + chunkBytes) {
      this.#frameBuf = new Uint8Array(PREFIX_ROOM + chunkBytes);
    }
    const frame = this.#frameBuf!;
    const xid = this.#xid++;
    const count = Math.max(1, Math.ceil(item.total / chunkBytes));
    const digests: Uint8Array[] = [];
    for (let index = 0; index < count; index++) {
      await this.#waitBelowHighWater();
      if (this.#state !== "open") return;
      const offset = index * chunkBytes;
      const length = Math.min(chunkBytes, item.total - offset);
      const data = frame.subarray(PREFIX_ROOM, PREFIX_ROOM + length);
      gather(item.segments, offset, data);
      const digest = digest128(data);
      digests.push(digest);
      const env = this.#envelope("chunk", item.to, undefined) as Partial<Envelope> & {
        pad?: string;
      };
      delete env.payload;
      env.chunk = { xid, index, count, total: item.total, offset, head: item.head, digest };
      if (index === count - 1) env.chunk.root = rootDigest(digests);
      // The envelope fields are packed as a map and "payload" (bin 32) is spliced in after them,
      // so the chunk bytes are copied once, into this buffer. A padding field puts the chunk
      // bytes at an aligned offset of the frame, so that the receiver can keep a one-chunk
      // transfer where it landed and view its typed arrays in place.
      env.pad = "";
      let fields = encode(env);
      const misaligned = (fields.byteLength + PAYLOAD_KEY.byteLength + 5) % ALIGN;
      if (misaligned !== 0) {
        env.pad = " ".repeat(ALIGN - misaligned);
        fields = encode(env);
      }
      const start = PREFIX_ROOM - 5 - PAYLOAD_KEY.byteLength - fields.byteLength;
      if (start < 0) throw new RangeError("Cannot send chunk: envelope fields too long");
      frame.set(fields, start);
      if (frame[start] === 0xde) {
        const n = ((frame[start + 1] << 8) | frame[start + 2]) + 1;
        frame[start + 1] = n >> 8;
        frame[start + 2] = n & 0xff;
      } else if ((frame[start] & 0xf0) === 0x80 && frame[start] !== 0x8f) {
        frame[start]++;
      } else {
        throw new TypeError(
          `Cannot send chunk: unexpected map header 0x${frame[start].toString(16)}`,
        );
      }
      frame.set(PAYLOAD_KEY, PREFIX_ROOM - 5 - PAYLOAD_KEY.byteLength);
      frame[PREFIX_ROOM - 5] = 0xc6;
      new DataView(frame.buffer).setUint32(PREFIX_ROOM - 4, length);
      this.#write(frame.subarray(start, PREFIX_ROOM + length), this.#peerId);
      this.#outBytes -= length;
    }
  }

  async #waitBelowHighWater(): Promise<void> {
    const high = this.#o.highWaterBytes ?? 8 << 20;
    const low = this.#o.lowWaterBytes ?? 2 << 20;
    const socket = this.#socket!;
    if (socket.bufferedAmount < high) return;
    while (this.#state === "open" && socket.bufferedAmount > low) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.#timers.delete(timer);
          resolve();
        }, 1);
        this.#timers.add(timer);
      });
    }
  }

  #notifyDrain(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * Resolves once everything queued has been handed to the socket and its
   * buffer is below the low-water mark: await it to pace a producer.
   * Rejects with {@linkcode ConnectionClosedError} if the channel closes.
   */
  async drain(): Promise<void> {
    this.#flushBatch();
    while (this.#state === "open" && (this.#pumping || this.#out.length > 0)) {
      await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    }
    await this.#waitBelowLow();
    if (this.#state !== "open") {
      throw new ConnectionClosedError(`Cannot drain: connection to "${this.#peerId}" closed`);
    }
  }

  async #waitBelowLow(): Promise<void> {
    const low = this.#o.lowWaterBytes ?? 2 << 20;
    while (this.#state === "open" && (this.#socket?.bufferedAmount ?? 0) > low) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.#timers.delete(timer);
          resolve();
        }, 1);
        this.#timers.add(timer);
      });
    }
  }

  /**
   * Sends a one-way message to `to` (an address on the peer's node).
   *
   * @example
   * ```ts ignore
   * peer.tell("b/inbox", { hello: "world" });
   * ```
   */
  tell(to: string, payload: unknown): void {
    this.post("tell", to, payload);
  }

  /**
   * Sends a request to `to` and resolves with the peer handler's answer.
   * Rejects with {@linkcode RemoteError} when the peer answered with an
   * error, {@linkcode AskTimeoutError} after the timeout, and
   * {@linkcode ConnectionClosedError} when the connection drops first.
   */
  ask<R = unknown>(to: string, payload: unknown, options: AskOptions = {}): Promise<R> {
    const id = this.#askId++;
    const { promise, resolve, reject } = Promise.withResolvers<R>();
    const pending: PendingAsk = { to, resolve: resolve as (v: unknown) => void, reject };
    const timeoutMs = options.timeoutMs ?? this.#o.askTimeoutMs ?? 30_000;
    if (Number.isFinite(timeoutMs)) {
      pending.timer = setTimeout(() => {
        this.#settle(id, pending);
        reject(new AskTimeoutError(to, timeoutMs));
      }, timeoutMs);
    }
    if (options.signal) {
      if (options.signal.aborted) return Promise.reject(options.signal.reason);
      pending.signal = options.signal;
      pending.onAbort = () => {
        this.#settle(id, pending);
        reject(options.signal!.reason);
      };
      options.signal.addEventListener("abort", pending.onAbort, { once: true });
    }
    this.#pending.set(id, pending);
    try {
      this.post("ask", to, payload, { id });
    } catch (err) {
      this.#settle(id, pending);
      return Promise.reject(err);
    }
    return promise;
  }

  #settle(id: number, pending: PendingAsk): void {
    this.#pending.delete(id);
    if (pending.timer !== undefined) clearTimeout(pending.timer);
    if (pending.onAbort) pending.signal!.removeEventListener("abort", pending.onAbort);
  }

  // --- closing ----------------------------------------------------------------

  #fail(code: number, reason: string): void {
    this.close(code, reason);
  }

  /** Closes the connection; pending asks fail with {@linkcode ConnectionClosedError}. */
  close(code = 1000, reason = "closing"): void {
    if (this.#state === "closed") return;
    try {
      this.#socket?.close(code, reason);
    } catch {
      // Already closing.
    }
    this.#finish({ code, reason });
  }

  /** Tells the channel its socket has closed (or failed). */
  socketClosed(code: number, reason: string): void {
    this.#finish({ code, reason });
    this.#closed.resolve(this.#closeInfo!);
  }

  #finish(info: CloseInfo): void {
    if (this.#state === "closed") return;
    const wasOpen = this.#state === "open";
    this.#state = "closed";
    this.#closeInfo = info;
    if (this.#handshakeTimer !== undefined) clearTimeout(this.#handshakeTimer);
    if (this.#pingTimer !== undefined) clearInterval(this.#pingTimer);
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    this.#reassembler.close();
    this.#out = [];
    this.#outBytes = 0;
    this.#notifyDrain();
    const detail = `${info.code}${info.reason ? ` ${info.reason}` : ""}`;
    const pending = [...this.#pending.entries()];
    for (const [id, p] of pending) {
      this.#settle(id, p);
      p.reject(
        new ConnectionClosedError(
          `Ask to ${p.to} failed: connection to "${this.#peerId}" closed (${detail})`,
        ),
      );
    }
    if (info.code === AUTH_FAILED_CODE) {
      this.#opened.reject(
        new AuthenticationError(`Authentication failed: connection closed (${detail})`),
      );
    } else {
      this.#opened.reject(
        new ConnectionClosedError(`Connection closed before the handshake completed (${detail})`),
      );
    }
    if (wasOpen) this.#o.onClose?.(this, info);
  }

  #log(level: "debug" | "info" | "warn" | "error", message: string): void {
    (this.#o.log ?? consoleLogger)(level, `[${this.#o.nodeId}] ${message}`);
  }
}
