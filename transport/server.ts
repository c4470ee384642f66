/**
 * The WebSocket server side, built on hono so that an existing service can
 * mount it on its own app at its own route; {@linkcode serve} runs it alone
 * on `Deno.serve`. Before a peer authenticates, the server bounds what it
 * may cost: how many handshakes are in progress and how fast one address
 * may open connections (transport/_admission.ts, checked before the
 * upgrade), how long a handshake may take (`handshakeTimeoutMs`) and how
 * large a frame may be (`Limits.maxHandshakeFrameBytes`).
 *
 * @module
 */
import { Hono, type MiddlewareHandler, upgradeWebSocket } from "./_deps.ts";
import { importSecret } from "./auth.ts";
import type { NodeIdentity } from "./identity.ts";
import { Channel } from "./_channel.ts";
import {
  checkConnectionOptions,
  type CloseInfo,
  type ConnectionOptions,
  consoleLogger,
  type Logger,
  type MessageHandler,
} from "./_channel_options.ts";
import { type Envelope, resolveLimits } from "./envelope.ts";
import { Admission, type AdmissionLimits, type AdmissionStats } from "./_admission.ts";

/** Options of {@linkcode TransportServer}. */
export interface ServerOptions extends ConnectionOptions {
  /** This node's id (no `/`). */
  nodeId: string;
  /** Run id; peers of other runs are refused. */
  run: string;
  /** The run secret (join token) every peer must prove; optional with `allow`. */
  secret?: string | Uint8Array;
  /**
   * This node's key pair. With it, every peer must sign the handshake with a
   * key of its own, and its node id must be derived from that key.
   */
  identity?: NodeIdentity;
  /** Fingerprints of the keys admitted (an allow-list); needs `identity`. */
  allow?: ReadonlySet<string>;
  /** Request/response handler for tells and asks. */
  onMessage?: MessageHandler;
  /** Raw handler for every data envelope (takes priority over `onMessage`). */
  onEnvelope?: (envelope: Envelope, peer: Channel) => void;
  /** Called when a peer has authenticated. */
  onPeer?: (peer: Channel) => void;
  /** Called when an authenticated peer's connection closes. */
  onPeerClosed?: (peer: Channel, info: CloseInfo) => void;
  /** Limits on connections before they authenticate (defaults: `DEFAULT_ADMISSION`). */
  admission?: Partial<AdmissionLimits>;
}

/** The host part of hono's connection info (Deno.serve's `remoteAddr`), without the port. */
function remoteOf(env: unknown): { host: string; addr: string } {
  const info = (env ?? {}) as { remoteAddr?: { hostname?: string; port?: number } };
  const host = info.remoteAddr?.hostname;
  return host === undefined
    ? { host: "unknown", addr: "unknown address" }
    : { host, addr: `${host}:${info.remoteAddr?.port}` };
}

function checkId(nodeId: string, what: string): void {
  if (typeof nodeId !== "string" || nodeId.length === 0 || nodeId.includes("/")) {
    throw new TypeError(`Invalid ${what}: expected a non-empty string without "/", got ${nodeId}`);
  }
}

/**
 * Checks how a server admits peers and imports its run secret, if any:
 * a secret, or a key pair and an allow-list. Throws a `RangeError` or
 * `TypeError` naming what is missing.
 */
function admissionKey(options: ServerOptions): Promise<CryptoKey | undefined> {
  if (options.allow && !options.identity) {
    throw new TypeError("Invalid server options: an allow-list needs the server's own identity");
  }
  if (options.secret === undefined) {
    if (!options.allow) {
      throw new TypeError("Invalid server options: needs a run secret or an allow-list of keys");
    }
    return Promise.resolve(undefined);
  }
  const secretLength = typeof options.secret === "string"
    ? options.secret.length
    : options.secret?.byteLength;
  if (!secretLength) throw new RangeError("Invalid run secret: empty");
  return importSecret(options.secret);
}

/**
 * Accepts peer connections: authenticates each, then hands its messages to
 * the handlers. One connection per peer id: a newer one replaces the older.
 *
 * @example Mount on an existing hono app
 * ```ts
 * import { Hono } from "hono";
 * import { TransportServer } from "./server.ts";
 * const app = new Hono();
 * app.get("/health", (c) => c.text("ok"));
 * const transport = new TransportServer({ nodeId: "hub", run: "r1", secret: "s" });
 * transport.mount(app, "/actors");
 * await transport.close();
 * ```
 */
export class TransportServer {
  /** This node's id. */
  readonly nodeId: string;
  #options: ServerOptions;
  #key: Promise<CryptoKey | undefined>;
  #limits;
  #peers = new Map<string, Channel>();
  #channels = new Set<Channel>();
  #closing = false;
  #admission: Admission;
  /** Releases of the admission tickets still held (`close` frees them with their timers). */
  #releases = new Set<() => void>();
  #lastRefusalLog = -Infinity;

  /** Creates the server; nothing listens until it is mounted or served. */
  constructor(options: ServerOptions) {
    checkId(options.nodeId, "node id");
    if (typeof options.run !== "string" || options.run.length === 0) {
      throw new TypeError(`Invalid run id: expected a non-empty string, got ${options.run}`);
    }
    this.nodeId = options.nodeId;
    this.#options = options;
    this.#limits = resolveLimits(options.limits);
    checkConnectionOptions(options);
    this.#admission = new Admission(options.admission);
    this.#key = admissionKey(options);
    this.#key.catch(() => {});
  }

  /** Authenticated peers by node id. */
  get peers(): ReadonlyMap<string, Channel> {
    return this.#peers;
  }

  /** Handshakes in progress and connections refused before authentication. */
  get admission(): AdmissionStats {
    return this.#admission.stats;
  }

  /** The open connection of peer `id`, if any. */
  peer(id: string): Channel | undefined {
    return this.#peers.get(id);
  }

  /**
   * The hono handler that upgrades a request to a transport connection;
   * register it with `app.get(path, server.handler)`.
   */
  get handler(): MiddlewareHandler {
    // The admission ticket of each upgrade request, released once it authenticates or closes.
    const tickets = new WeakMap<Request, () => void>();
    const upgrade = upgradeWebSocket(async (c) => {
      const { addr } = remoteOf(c.env);
      // hono builds the events before it checks the upgrade header: plain requests get none.
      if (c.req.header("upgrade")?.toLowerCase() !== "websocket") return {};
      const release = tickets.get(c.req.raw) ?? (() => {});
      const channel = this.#channel(addr, await this.#key, release);
      return {
        onOpen: (_event, ws) => {
          const raw = ws.raw as WebSocket;
          raw.binaryType = "arraybuffer";
          this.#channels.add(channel);
          if (this.#closing) {
            raw.close(1001, "Server shutting down");
            return;
          }
          channel.attach(raw);
        },
        onMessage: (event) => channel.receive(event.data),
        onClose: (event) => {
          release();
          this.#channels.delete(channel);
          channel.socketClosed(event.code, event.reason);
        },
        onError: () => {},
      };
    });
    return async (c, next) => {
      if (c.req.header("upgrade")?.toLowerCase() !== "websocket") return await upgrade(c, next);
      const { host } = remoteOf(c.env);
      const ticket = this.#admission.admit(host);
      if (!ticket.ok) {
        this.#logRefusal(ticket.reason);
        return c.text(ticket.reason, ticket.status);
      }
      // A socket that never opens or closes must not hold its slot for ever.
      const expiry = setTimeout(() => release(), 2 * (this.#options.handshakeTimeoutMs ?? 10_000));
      const release = () => {
        clearTimeout(expiry);
        ticket.release();
        this.#releases.delete(release);
      };
      this.#releases.add(release);
      tickets.set(c.req.raw, release);
      try {
        const res = await upgrade(c, next);
        if (!(res instanceof Response) || res.status !== 101) release();
        return res;
      } catch (err) {
        release();
        throw err;
      }
    };
  }

  /** Logs refused connections at most once a second (logging each would feed the flood). */
  #logRefusal(reason: string): void {
    const now = performance.now();
    if (now - this.#lastRefusalLog < 1000) return;
    this.#lastRefusalLog = now;
    const s = this.#admission.stats;
    const refused = s.refusedPending + s.refusedPerAddress + s.refusedRate;
    (this.#options.log ?? consoleLogger)(
      "warn",
      `Refused connection before authentication: ${reason} (${refused} refused so far)`,
    );
  }

  #channel(remoteAddr: string, key: CryptoKey | undefined, release: () => void): Channel {
    const o = this.#options;
    const channel: Channel = new Channel({
      ...o,
      key,
      role: "server",
      resolvedLimits: this.#limits,
      remoteAddr,
      onOpen: (peer) => {
        release();
        const old = this.#peers.get(peer.peerId);
        this.#peers.set(peer.peerId, peer);
        if (old && old !== peer) old.close(4409, "Replaced by a newer connection");
        o.onPeer?.(peer);
      },
      onClose: (peer, info) => {
        if (this.#peers.get(peer.peerId) === peer) this.#peers.delete(peer.peerId);
        o.onPeerClosed?.(peer, info);
      },
    });
    return channel;
  }

  /**
   * Registers the transport route on `app` at `path` (GET, WebSocket
   * upgrade) and returns this server.
   */
  mount(app: Hono, path = "/"): this {
    app.get(path, this.handler);
    return this;
  }

  /** A new hono app serving only the transport route at `path`. */
  router(path = "/"): Hono {
    const app = new Hono();
    this.mount(app, path);
    return app;
  }

  /** Closes every connection (1001) and waits until their sockets are gone. */
  async close(code = 1001, reason = "Server shutting down"): Promise<void> {
    this.#closing = true;
    for (const release of [...this.#releases]) release();
    const all = [...this.#channels];
    for (const ch of all) ch.close(code, reason);
    await Promise.all(all.map((ch) => ch.closed));
  }
}

/** Options of {@linkcode serve}. */
export interface ServeOptions extends ServerOptions {
  /** Port; 0 picks a free one. Default 0. */
  port?: number;
  /** Interface. Default "127.0.0.1". */
  hostname?: string;
  /** Route of the transport. Default "/". */
  path?: string;
  /** Called with the bound address once listening. */
  onListen?: (addr: Deno.NetAddr) => void;
  /** Log sink. */
  log?: Logger;
  /** Serve `wss://` with this certificate chain and private key (PEM text). */
  tls?: { cert: string; key: string };
}

/** A transport server listening on its own port. */
export interface ServedTransport {
  /** The transport. */
  server: TransportServer;
  /** Bound port. */
  port: number;
  /** Bound interface. */
  hostname: string;
  /** `ws://host:port/path` (`wss://` with TLS) to give to clients. */
  url: string;
  /** Closes every connection, then stops listening. */
  shutdown(): Promise<void>;
}

/**
 * Runs a transport server alone on `Deno.serve`.
 *
 * @example Serve on a free port
 * ```ts
 * import { serve } from "./server.ts";
 * const served = await serve({ nodeId: "hub", run: "r1", secret: "s", port: 0 });
 * console.log(served.url);
 * await served.shutdown();
 * ```
 */
export function serve(options: ServeOptions): Promise<ServedTransport> {
  const server = new TransportServer(options);
  const path = options.path ?? "/";
  const app = server.router(path);
  const { promise, resolve } = Promise.withResolvers<ServedTransport>();
  const httpServer = Deno.serve({
    port: options.port ?? 0,
    hostname: options.hostname ?? "127.0.0.1",
    ...(options.tls ? { cert: options.tls.cert, key: options.tls.key } : {}),
    onListen: (addr) => {
      options.onListen?.(addr);
      const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
      resolve({
        server,
        port: addr.port,
        hostname: addr.hostname,
        url: `${options.tls ? "wss" : "ws"}://${host}:${addr.port}${path}`,
        shutdown: async () => {
          await server.close();
          await httpServer.shutdown();
        },
      });
    },
  }, app.fetch);
  return promise;
}
