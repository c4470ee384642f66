/**
 * One authenticated connection to a peer node, on either side: its states
 * (handshake, verifying, open, closed), the run-secret handshake, the
 * handling of every arriving envelope and the sending of envelopes. Sockets
 * are driven from outside (`attach`, `receive`, `socketClosed`) so the same
 * code serves accepted and dialled sockets.
 *
 * The channel's parts live beside it: the send queue with batching,
 * chunking and backpressure (`_send_queue.ts`), the chunk-frame layout
 * (`_chunk_frames.ts`), the checks on an arriving envelope's run, sender
 * and route (`_arrival.ts`), ask correlation (`_asks.ts`), delivery to the
 * application handlers (`_deliver.ts`), the rate limit (`_rate_limit.ts`),
 * the anti-replay window (`_replay_window.ts`) and the ping timer
 * (`_liveness.ts`); the options and types are in `_channel_options.ts`.
 *
 * @module
 */
import { AUTH_FAILED_CODE, AUTH_TIMEOUT_CODE, NOT_ADMITTED_CODE, randomNonce } from "./auth.ts";
import { Reassembler } from "./chunk.ts";
import { encode } from "./codec.ts";
import {
  type Envelope,
  type ErrorPayload,
  type Kind,
  type Limits,
  parseFrame,
  WIRE_VERSION,
} from "./envelope.ts";
import { AuthenticationError, ConnectionClosedError, FrameError } from "./errors.ts";
import { arrivalRefusal, handshakeFrameRefusal } from "./_arrival.ts";
import { PendingAsks } from "./_asks.ts";
import {
  type AskOptions,
  type ChannelOptions,
  type ChannelStats,
  type CloseInfo,
  consoleLogger,
  type SocketLike,
} from "./_channel_options.ts";
import { type ChunkEnvelope, unchunk } from "./_chunk_frames.ts";
import { deliver, type DeliveryContext } from "./_deliver.ts";
import {
  type AuthPayload,
  authPayload,
  type ChallengePayload,
  challengePayload,
  checkAuth,
  checkWelcome,
  type HandshakeSide,
  type WelcomePayload,
} from "./_handshake.ts";
import { Liveness } from "./_liveness.ts";
import { RateLimit } from "./_rate_limit.ts";
import { ReplayWindow } from "./_replay_window.ts";
import { SendQueue } from "./_send_queue.ts";

type Timer = ReturnType<typeof setTimeout>;

type State = "idle" | "handshake" | "verifying" | "open" | "closed";

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
  #peerFingerprint = "";
  #challenge: ChallengePayload | undefined;
  #nonce = randomNonce();
  #seq = 0;
  #asks = new PendingAsks();
  #replay = new ReplayWindow();
  #rate: RateLimit;
  #reassembler: Reassembler;
  #early: Uint8Array[] = [];
  #queue: SendQueue;
  #liveness = new Liveness();
  #handshakeTimer: Timer | undefined;
  #delivery: DeliveryContext;
  #closeInfo: CloseInfo | undefined;
  #closed = Promise.withResolvers<CloseInfo>();
  #opened = Promise.withResolvers<void>();
  #stats: ChannelStats = { framesIn: 0, framesOut: 0, dropped: 0, duplicates: 0, rejected: 0 };

  /** Creates a channel; call {@linkcode Channel.attach} when its socket opens. */
  constructor(options: ChannelOptions) {
    this.#o = options;
    this.#limits = options.resolvedLimits;

    this.#rate = new RateLimit(this.#limits);
    this.#reassembler = new Reassembler({
      maxMessageBytes: this.#limits.maxMessageBytes,
      timeoutMs: this.#limits.reassemblyTimeoutMs,
      onExpired: (err) => this.#reject(err),
    });
    this.#queue = new SendQueue(options, this.#limits.maxBatch, {
      isOpen: () => this.#state === "open",
      bufferedAmount: () => this.#socket?.bufferedAmount ?? 0,
      write: (frame) => this.#write(frame, this.#peerId),
      chunkEnvelope: (to) => {
        const env: ChunkEnvelope = this.#envelope("chunk", to, undefined);
        delete env.payload;
        return env;
      },
      failed: (err) => {
        this.#log("error", `Send queue failed: ${err instanceof Error ? err.message : err}`);
        this.close(1011, "Send queue failed");
      },
    });
    this.#delivery = { peer: this, options, log: (level, message) => this.#log(level, message) };
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

  /**
   * The hex SHA-256 fingerprint of the key the peer signed the handshake
   * with ("" when it proved the run secret only, or before the handshake).
   */
  get peerFingerprint(): string {
    return this.#peerFingerprint;
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
    return this.#queue.backlog;
  }

  /** Starts the handshake on a socket that has just opened. */
  attach(socket: SocketLike): void {
    if (this.#state !== "idle") {
      throw new TypeError("Cannot attach a socket: channel already started");
    }
    this.#socket = socket;
    this.#state = "handshake";
    this.#liveness.heard();
    this.#handshakeTimer = setTimeout(() => {
      this.#handshakeTimer = undefined;
      this.#fail(AUTH_TIMEOUT_CODE, "Authentication timed out");
    }, this.#o.handshakeTimeoutMs ?? 10_000);
    if (this.#o.role === "server") {
      this.#sendNow({
        kind: "challenge",
        to: "",
        payload: challengePayload(this.#side(), this.#nonce),
      });
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
    this.#liveness.heard();
    this.#stats.framesIn++;
    const refused = this.#rate.admit(bytes.byteLength);
    if (refused !== undefined) {
      this.#stats.dropped++;
      if (refused) this.#reject(refused);
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
    const tooLarge = this.#state === "handshake"
      ? handshakeFrameRefusal(bytes.byteLength, this.#limits)
      : undefined;
    if (tooLarge) {
      this.#reject(tooLarge);
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

  #side(): HandshakeSide {
    const o = this.#o;
    return { nodeId: o.nodeId, run: o.run, secretKey: o.key, identity: o.identity, allow: o.allow };
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
      const challenge = env.payload as ChallengePayload;
      this.#challenge = challenge;
      authPayload(this.#side(), env.from, challenge, this.#nonce).then((payload) => {
        if (this.#state !== "verifying") return;
        this.#state = "handshake";
        this.#sendNow({ kind: "auth", to: env.from, payload });
        this.#drainEarly();
      }, (err) => this.#authFailed(env.from, `cannot answer the challenge: ${err}`));
      return;
    }
    this.#state = "verifying";
    if (role === "server") {
      checkAuth(this.#side(), env.from, this.#nonce, env.payload as AuthPayload).then((r) => {
        if (this.#state !== "verifying") return;
        if (!r.ok) {
          this.#authFailed(env.from, r.refusal.detail, r.refusal.code, r.refusal.reason);
          return;
        }
        this.#peerId = env.from;
        this.#peerFingerprint = r.fingerprint;
        this.#sendNow({ kind: "welcome", to: env.from, payload: r.welcome });
        this.#becomeOpen();
      }, (err) => this.#authFailed(env.from, `cannot check the auth: ${err}`));
      return;
    }
    checkWelcome(
      this.#side(),
      this.#peerId,
      this.#challenge!,
      this.#nonce,
      env.payload as WelcomePayload,
    ).then((r) => {
      if (this.#state !== "verifying") return;
      if (!r.ok || env.from !== this.#peerId) {
        this.#authFailed(env.from, r.ok ? `welcome from "${env.from}"` : r.why);
        return;
      }
      const pinned = this.#o.expectedKey?.toLowerCase();
      if (pinned && !r.fingerprint.startsWith(pinned)) {
        const why = `Host key ${r.fingerprint.slice(0, 16) || "(none)"} is not the expected ${
          pinned.slice(0, 16)
        }`;
        this.#authFailed(env.from, why, AUTH_FAILED_CODE, why);
        return;
      }
      this.#peerFingerprint = r.fingerprint;
      this.#becomeOpen();
    }, (err) => this.#authFailed(env.from, `cannot check the welcome: ${err}`));
  }

  #drainEarly(): void {
    const early = this.#early;
    this.#early = [];
    for (const b of early) this.#receiveFrame(b);
  }

  #authFailed(peer: string, why: string, code = AUTH_FAILED_CODE, reason?: string): void {
    this.#log(
      "warn",
      `Authentication failed for peer "${peer}" at ${this.#o.remoteAddr ?? "?"}: ${why}`,
    );
    this.#fail(code, reason ?? "Authentication failed");
  }

  #becomeOpen(): void {
    this.#state = "open";
    if (this.#handshakeTimer !== undefined) clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = undefined;
    this.#liveness.start(this.#o.pingIntervalMs ?? 2000, this.#o.pingTimeoutMs ?? 6000, {
      bufferedAmount: () => this.#socket?.bufferedAmount ?? 0,
      timedOut: (timeout) => {
        this.#log("warn", `No frame from peer "${this.#peerId}" for ${timeout} ms: closing`);
        this.close(4408, "Ping timeout");
      },
      ping: () => {
        if (this.#o.role === "client") {
          this.#sendNow({ kind: "ping", to: this.#peerId, payload: Date.now() });
        }
      },
    });
    this.#o.onOpen?.(this);
    this.#opened.resolve();
    this.#drainEarly();
  }

  #handle(env: Envelope): void {
    const refused = arrivalRefusal(env, {
      run: this.#o.run,
      nodeId: this.#o.nodeId,
      peerId: this.#peerId,
    });
    if (refused) {
      this.#reject(refused.error, refused.corr);
      return;
    }
    if (!this.#replay.fresh(env.seq)) {
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

  #chunk(env: Envelope): void {
    let inner: Envelope | undefined;
    try {
      inner = unchunk(env, this.#reassembler, this.#limits);
    } catch (err) {
      this.#reject(err instanceof FrameError ? err : new FrameError("invalid", String(err)));
      return;
    }
    if (inner) this.#dispatch(inner);
  }

  #dispatch(env: Envelope): void {
    if (!this.#asks.answer(env)) deliver(env, this.#delivery);
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
        this.#liveness.sent(b.byteLength);
        socket.send(b);
      });
      return;
    }
    this.#liveness.sent(frame.byteLength);
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
    this.#queue.post(this.#envelope(kind, to, payload, extra));
  }

  /**
   * Resolves once everything queued has been handed to the socket and its
   * buffer is below the low-water mark: await it to pace a producer.
   * Rejects with {@linkcode ConnectionClosedError} if the channel closes.
   */
  async drain(): Promise<void> {
    await this.#queue.drained();
    if (this.#state !== "open") {
      throw new ConnectionClosedError(`Cannot drain: connection to "${this.#peerId}" closed`);
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
    return this.#asks.ask<R>(
      to,
      options,
      this.#o.askTimeoutMs ?? 30_000,
      (id) => this.post("ask", to, payload, { id }),
    );
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
    this.#liveness.stop();
    this.#reassembler.close();
    this.#queue.close();
    const detail = `${info.code}${info.reason ? ` ${info.reason}` : ""}`;
    this.#asks.failAll((to) =>
      new ConnectionClosedError(
        `Ask to ${to} failed: connection to "${this.#peerId}" closed (${detail})`,
      )
    );
    if (info.code === AUTH_FAILED_CODE || info.code === NOT_ADMITTED_CODE) {
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
