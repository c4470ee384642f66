/**
 * The dialling side: one logical connection to a server node that survives
 * drops. It reconnects with exponential backoff and full jitter, checks
 * liveness with app-level pings, and holds messages sent while disconnected
 * until the next connection opens (asks already in flight on a dropped
 * connection fail with {@linkcode ConnectionClosedError}).
 *
 * @module
 */
import { AUTH_FAILED_CODE, importSecret, NOT_ADMITTED_CODE, TLS_FAILED_CODE } from "./auth.ts";
import type { NodeIdentity } from "./identity.ts";
import { Channel } from "./_channel.ts";
import {
  type AskOptions,
  checkConnectionOptions,
  type CloseInfo,
  type ConnectionOptions,
  type MessageHandler,
} from "./_channel_options.ts";
import { type Envelope, resolveLimits } from "./envelope.ts";
import { AskTimeoutError } from "../actors/runtime/ref.ts";
import { AuthenticationError, ConnectionClosedError } from "./errors.ts";
import { backoffDelay, mulberry32 } from "./rng.ts";
import { type SocketOpener, socketOpener } from "./_socket.ts";

type Timer = ReturnType<typeof setTimeout>;

/** Options of {@linkcode TransportClient}. */
export interface ClientOptions extends ConnectionOptions {
  /** This node's id (no `/`). */
  nodeId: string;
  /** Run id. */
  run: string;
  /** The run secret (join token); optional with `identity` on a run that admits keys. */
  secret?: string | Uint8Array;
  /** This node's key pair: it signs the handshake (the node id must be derived from it). */
  identity?: NodeIdentity;
  /**
   * PEM certificates to trust for `wss://` besides the system's roots (a
   * self-signed host certificate; it must not be a CA certificate).
   */
  caCerts?: string[];
  /** The server's node id; a server that claims another id is refused. */
  expectedPeer?: string;
  /**
   * The server's key fingerprint, or a prefix of at least 16 hex characters:
   * a server that signs with another key (or none) is refused.
   */
  expectedKey?: string;
  /** Request/response handler for tells and asks the server sends. */
  onMessage?: MessageHandler;
  /** Raw handler for every data envelope (takes priority over `onMessage`). */
  onEnvelope?: (envelope: Envelope, peer: Channel) => void;
  /** Called each time a connection has authenticated. */
  onOpen?: (peer: Channel) => void;
  /** Called each time an authenticated connection closes. */
  onClose?: (peer: Channel, info: CloseInfo) => void;
  /** Reconnect after a drop. Default true. */
  reconnect?: boolean;
  /** First backoff cap in ms. Default 100. */
  backoffBaseMs?: number;
  /** Largest backoff in ms. Default 5,000. */
  backoffMaxMs?: number;
  /** Seed of the jitter PRNG (ignored when `random` is given). */
  seed?: number;
  /** Jitter source in `[0, 1)`. Default `Math.random` (or a PRNG from `seed`). */
  random?: () => number;
  /** Give up after this many failed attempts in a row. Default Infinity. */
  maxAttempts?: number;
  /** Keep retrying after the server refused the secret. Default false. */
  retryOnAuthFailure?: boolean;
  /** Most messages held while disconnected. Default 10,000. */
  maxQueued?: number;
}

/** Where a client stands. */
export type ClientState = "connecting" | "open" | "waiting" | "closed";

interface Queued {
  kind: "tell" | "ask";
  to: string;
  payload: unknown;
  options?: AskOptions;
  resolve?: (value: unknown) => void;
  reject?: (error: Error) => void;
  deadline?: number;
  timer?: Timer;
}

/**
 * A reconnecting connection to one server node.
 *
 * @example Ask a server
 * ```ts
 * import { serve } from "./server.ts";
 * import { TransportClient } from "./client.ts";
 * import assert from "node:assert/strict";
 * const served = await serve({
 *   nodeId: "hub", run: "r1", secret: "s",
 *   onMessage: (m) => `hello ${m.payload}`,
 * });
 * const client = new TransportClient(served.url, { nodeId: "a", run: "r1", secret: "s" });
 * assert.equal(await client.ask("hub/greeter", "a"), "hello a");
 * await client.close();
 * await served.shutdown();
 * ```
 */
export class TransportClient {
  /** The server URL. */
  readonly url: string;
  #o: ClientOptions;
  #key: Promise<CryptoKey | undefined>;
  #sockets: SocketOpener;
  #limits;
  #random: () => number;
  #state: ClientState = "connecting";
  #channel: Channel | undefined;
  #socket: WebSocket | undefined;
  #attempt = 0;
  #connections = 0;
  #timer: Timer | undefined;
  #queue: Queued[] = [];
  #readyWaiters: { resolve: (c: Channel) => void; reject: (e: Error) => void }[] = [];
  #closed = Promise.withResolvers<CloseInfo>();
  #lastClose: CloseInfo | undefined;
  /** Why the client gave up, when it did so by itself (a refused handshake, an untrusted certificate). */
  #fatalError: Error | undefined;

  /** Creates the client and starts connecting. */
  constructor(url: string | URL, options: ClientOptions) {
    if (typeof options.nodeId !== "string" || !options.nodeId || options.nodeId.includes("/")) {
      throw new TypeError(
        `Invalid node id: expected a non-empty string without "/", got ${options.nodeId}`,
      );
    }
    this.url = String(url);
    this.#o = options;
    this.#limits = resolveLimits(options.limits);
    checkConnectionOptions(options);
    if (options.expectedKey !== undefined && !/^[0-9a-fA-F]{16,64}$/.test(options.expectedKey)) {
      throw new RangeError(
        `Invalid expected key: "${options.expectedKey}" (16 to 64 hex characters of a fingerprint)`,
      );
    }
    if (options.secret === undefined && !options.identity) {
      throw new TypeError("Invalid client options: needs a run secret or an identity");
    }
    const secretLength = typeof options.secret === "string"
      ? options.secret.length
      : options.secret?.byteLength;
    if (options.secret !== undefined && !secretLength) {
      throw new RangeError("Invalid run secret: empty");
    }
    this.#random = options.random ??
      (options.seed !== undefined ? mulberry32(options.seed) : Math.random);
    this.#key = options.secret === undefined
      ? Promise.resolve(undefined)
      : importSecret(options.secret);
    this.#key.catch(() => {});
    this.#sockets = socketOpener(options.caCerts);
    this.#dial();
  }

  /** Where the client stands. */
  get state(): ClientState {
    return this.#state;
  }

  /** The open connection, if any. */
  get channel(): Channel | undefined {
    return this.#channel?.isOpen ? this.#channel : undefined;
  }

  /** How many connections have authenticated so far (reconnects + 1). */
  get connections(): number {
    return this.#connections;
  }

  /** Failed attempts since the last successful connection. */
  get attempt(): number {
    return this.#attempt;
  }

  /** Resolves when the client is closed for good (by `close()` or a fatal error). */
  get closed(): Promise<CloseInfo> {
    return this.#closed.promise;
  }

  /** Resolves with the next (or current) open connection. */
  ready(): Promise<Channel> {
    const open = this.channel;
    if (open) return Promise.resolve(open);
    if (this.#state === "closed") {
      return Promise.reject(
        this.#fatalError ?? new ConnectionClosedError(`Client ${this.#o.nodeId} is closed`),
      );
    }
    const { promise, resolve, reject } = Promise.withResolvers<Channel>();
    this.#readyWaiters.push({ resolve, reject });
    return promise;
  }

  async #dial(): Promise<void> {
    this.#timer = undefined;
    if (this.#state === "closed") return;
    this.#state = "connecting";
    const key = await this.#key;
    if ((this.#state as ClientState) === "closed") return;
    const channel = new Channel({
      ...this.#o,
      key,
      role: "client",
      resolvedLimits: this.#limits,
      remoteAddr: this.url,
      onOpen: (peer) => this.#opened(peer),
      onClose: (peer, info) => this.#o.onClose?.(peer, info),
    });
    let socket: WebSocket;
    try {
      socket = this.#sockets.open(this.url);
    } catch (err) {
      this.#fatal({
        code: 1002,
        reason: `Cannot connect to ${this.url}: ${(err as Error).message}`,
      });
      return;
    }
    socket.binaryType = "arraybuffer";
    this.#channel = channel;
    this.#socket = socket;
    socket.onopen = () => channel.attach(socket);
    socket.onmessage = (e) => channel.receive(e.data);
    let failure = "";
    socket.onerror = (e) => {
      failure = (e as ErrorEvent).message ?? "";
    };
    socket.onclose = (e) => {
      channel.socketClosed(e.code, e.reason);
      if (this.#socket === socket) this.#socket = undefined;
      // A certificate the client does not trust will not be trusted on the next try either.
      const tls = /certificate/i.test(failure);
      const info = tls
        ? { code: TLS_FAILED_CODE, reason: failure.replace(/^.*?: (?=invalid peer)/, "") }
        : { code: e.code, reason: e.reason };
      this.#dropped(channel, info);
    };
  }

  #opened(channel: Channel): void {
    this.#state = "open";
    this.#attempt = 0;
    this.#connections++;
    this.#o.onOpen?.(channel);
    const waiters = this.#readyWaiters;
    this.#readyWaiters = [];
    for (const w of waiters) w.resolve(channel);
    const queue = this.#queue;
    this.#queue = [];
    for (const q of queue) this.#sendQueued(channel, q);
  }

  #sendQueued(channel: Channel, q: Queued): void {
    if (q.timer !== undefined) clearTimeout(q.timer);
    if (q.kind === "tell") {
      try {
        channel.tell(q.to, q.payload);
      } catch {
        // The connection closed again at once; the message is lost like any tell on a dead link.
      }
      return;
    }
    const remaining = q.deadline === undefined ? undefined : Math.max(1, q.deadline - Date.now());
    channel.ask(q.to, q.payload, { ...q.options, timeoutMs: remaining ?? Infinity }).then(
      q.resolve!,
      q.reject!,
    );
  }

  #dropped(channel: Channel, info: CloseInfo): void {
    if (this.#channel === channel) this.#channel = undefined;
    this.#lastClose = info;
    if (this.#state === "closed") {
      this.#closed.resolve(info);
      return;
    }
    const authFailed = info.code === AUTH_FAILED_CODE || info.code === NOT_ADMITTED_CODE;
    if (
      (authFailed && !this.#o.retryOnAuthFailure) || info.code === TLS_FAILED_CODE ||
      this.#o.reconnect === false
    ) {
      this.#fatal(info);
      return;
    }
    this.#attempt++;
    if (this.#attempt > (this.#o.maxAttempts ?? Infinity)) {
      this.#fatal(info);
      return;
    }
    this.#state = "waiting";
    const delay = backoffDelay(this.#attempt - 1, {
      baseMs: this.#o.backoffBaseMs ?? 100,
      maxMs: this.#o.backoffMaxMs ?? 5000,
      random: this.#random,
    });
    this.#timer = setTimeout(() => this.#dial(), delay);
  }

  #fatal(info: CloseInfo): void {
    this.#state = "closed";
    this.#sockets.release();
    const error = info.code === AUTH_FAILED_CODE
      ? new AuthenticationError(
        `Cannot connect to ${this.url}: authentication failed (${info.reason || info.code})`,
      )
      : info.code === NOT_ADMITTED_CODE
      ? new AuthenticationError(`Cannot connect to ${this.url}: ${info.reason} (${info.code})`)
      : info.code === TLS_FAILED_CODE
      ? new AuthenticationError(
        `Cannot connect to ${this.url}: TLS certificate not trusted (${info.reason})`,
      )
      : new ConnectionClosedError(
        `Cannot connect to ${this.url}: connection closed (${info.code} ${info.reason})`,
      );
    this.#fatalError = error;
    this.#failQueued(error);
    this.#closed.resolve(info);
  }

  #failQueued(error: Error): void {
    const waiters = this.#readyWaiters;
    this.#readyWaiters = [];
    for (const w of waiters) w.reject(error);
    const queue = this.#queue;
    this.#queue = [];
    for (const q of queue) {
      if (q.timer !== undefined) clearTimeout(q.timer);
      q.reject?.(error);
    }
  }

  #enqueue(q: Queued): void {
    if (this.#state === "closed") {
      throw new ConnectionClosedError(`Cannot send to ${q.to}: client ${this.#o.nodeId} is closed`);
    }
    if (this.#queue.length >= (this.#o.maxQueued ?? 10_000)) {
      throw new RangeError(
        `Cannot send to ${q.to}: ${this.#queue.length} messages already wait for a connection`,
      );
    }
    this.#queue.push(q);
  }

  /** Sends a one-way message; held while disconnected. */
  tell(to: string, payload: unknown): void {
    const open = this.channel;
    if (open) open.tell(to, payload);
    else this.#enqueue({ kind: "tell", to, payload });
  }

  /**
   * Sends a request; held while disconnected (its timeout still runs).
   * Rejects with `ConnectionClosedError` when its connection drops before
   * the answer, `AskTimeoutError` after the timeout, `RemoteError` when the
   * server's handler failed.
   */
  ask<R = unknown>(to: string, payload: unknown, options: AskOptions = {}): Promise<R> {
    const open = this.channel;
    if (open) return open.ask<R>(to, payload, options);
    const { promise, resolve, reject } = Promise.withResolvers<R>();
    const timeoutMs = options.timeoutMs ?? this.#o.askTimeoutMs ?? 30_000;
    const q: Queued = {
      kind: "ask",
      to,
      payload,
      options,
      resolve: resolve as (v: unknown) => void,
      reject,
    };
    if (Number.isFinite(timeoutMs)) {
      q.deadline = Date.now() + timeoutMs;
      q.timer = setTimeout(() => {
        this.#queue = this.#queue.filter((x) => x !== q);
        reject(new AskTimeoutError(to, timeoutMs, { cause: `not connected to ${this.url}` }));
      }, timeoutMs);
    }
    try {
      this.#enqueue(q);
    } catch (err) {
      if (q.timer !== undefined) clearTimeout(q.timer);
      return Promise.reject(err);
    }
    return promise;
  }

  /** Waits until the open connection's send queue has drained (see `Channel.drain`). */
  async drain(): Promise<void> {
    const channel = await this.ready();
    await channel.drain();
  }

  /** Closes for good: no reconnect; held messages fail. Resolves once the socket is gone. */
  async close(code = 1000, reason = "Client closing"): Promise<void> {
    if (this.#state === "closed") {
      await this.#closed.promise;
      return;
    }
    this.#state = "closed";
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#sockets.release();
    this.#failQueued(new ConnectionClosedError(`Client ${this.#o.nodeId} closed`));
    const socket = this.#socket;
    const channel = this.#channel;
    if (socket && channel) {
      channel.close(code, reason);
      try {
        socket.close(code, reason);
      } catch {
        // Already closing.
      }
      await channel.closed;
    } else {
      this.#closed.resolve(this.#lastClose ?? { code, reason });
    }
    await this.#closed.promise;
  }
}

/**
 * Connects to a transport server: shorthand for `new TransportClient(url, options)`.
 *
 * @example
 * ```ts ignore
 * const client = connect("ws://10.0.0.2:7777/", { nodeId: "a", run: "r1", secret });
 * ```
 */
export function connect(url: string | URL, options: ClientOptions): TransportClient {
  return new TransportClient(url, options);
}
