/**
 * Joins an {@linkcode ActorSystem} to other nodes over the transport, so
 * that a ref to an actor on another node is used exactly like a local one:
 * {@linkcode ActorTransport} is transport/dialer.ts's `ActorDialer` (the
 * connections it dials, and the routing of every connection to the system)
 * with the server side added: peers that connect to this node.
 *
 * @module
 */
import type { ActorSystem } from "../actors/runtime/system.ts";
import type { Hono } from "./_deps.ts";
import { ActorDialer, type ActorTransportOptions } from "./dialer.ts";
import { TransportServer } from "./server.ts";

export { type ActorTransportOptions, type DialOptions, peerHostname } from "./dialer.ts";

/** A certificate chain and its private key, PEM text, for serving `wss://`. */
export interface TlsFiles {
  /** The certificate chain. */
  cert: string;
  /** The private key. */
  key: string;
}

/** A bound listener of {@linkcode ActorTransport.listen}. */
export interface Listener {
  /** Bound port. */
  port: number;
  /** `ws://host:port/path` for peers to dial. */
  url: string;
  /** Stops listening (connections are closed by `ActorTransport.close`). */
  shutdown(): Promise<void>;
}

/**
 * The transport of one actor system: accepts peers through its server (mount
 * it on a hono app or `listen`) and dials peers with `connect`.
 *
 * @example Two systems on real WebSockets
 * ```ts
 * import { ActorSystem } from "../actors/runtime/system.ts";
 * import { ActorTransport } from "./remote.ts";
 * import assert from "node:assert/strict";
 *
 * const a = new ActorSystem({ node: "a" });
 * const b = new ActorSystem({ node: "b" });
 * await b.spawn({ receive: (n: number) => n * 2 }, { name: "double" });
 * const ta = new ActorTransport(a, { run: "r1", secret: "s" });
 * const tb = new ActorTransport(b, { run: "r1", secret: "s" });
 * const listener = await tb.listen({ port: 0 });
 * await ta.connect(listener.url, { expectedPeer: "b" }).ready();
 * assert.equal(await a.ref("b/double").ask(21), 42);
 * await ta.close();
 * await tb.close();
 * await listener.shutdown();
 * await a.shutdown();
 * await b.shutdown();
 * ```
 */
export class ActorTransport extends ActorDialer {
  #server: TransportServer | undefined;
  #system: ActorSystem;
  #options: ActorTransportOptions;
  #listeners = new Set<Deno.HttpServer>();

  /** Creates the transport of `system` (its node id is the system's `node`). */
  constructor(system: ActorSystem, options: ActorTransportOptions) {
    super(system, options);
    this.#system = system;
    this.#options = options;
    // A node that only dials (a joiner with a key and no secret) never needs a server's admission.
    if (options.secret !== undefined || options.allow) void this.server;
  }

  /**
   * The server side; mount it on an app with `server.mount(app, path)`.
   * Made on first use: it needs the run secret or an allow-list, which a
   * node that only dials may not have.
   */
  get server(): TransportServer {
    this.#server ??= new TransportServer({
      ...this.#options,
      nodeId: this.#system.node,
      onEnvelope: (env, ch) => this.deliver(env, ch),
      onPeer: (ch) => this.opened(ch),
      onPeerClosed: (ch, info) => this.closed(ch, info),
    });
    return this.#server;
  }

  /** Registers the transport route on `app` at `path`; returns this transport. */
  mount(app: Hono, path = "/"): this {
    this.server.mount(app, path);
    return this;
  }

  /** Serves the transport alone on `Deno.serve` (`wss://` with `tls`: PEM cert and key). */
  listen(
    options: { port?: number; hostname?: string; path?: string; tls?: TlsFiles } = {},
  ): Promise<Listener> {
    const path = options.path ?? "/";
    const app = this.server.router(path);
    const { promise, resolve } = Promise.withResolvers<Listener>();
    const http = Deno.serve({
      port: options.port ?? 0,
      hostname: options.hostname ?? "127.0.0.1",
      ...(options.tls ? { cert: options.tls.cert, key: options.tls.key } : {}),
      onListen: (addr) => {
        resolve({
          port: addr.port,
          url: `${options.tls ? "wss" : "ws"}://${addr.hostname}:${addr.port}${path}`,
          shutdown: async () => {
            this.#listeners.delete(http);
            await http.shutdown();
          },
        });
      },
    }, app.fetch);
    this.#listeners.add(http);
    return promise;
  }

  /** Closes every client and server connection (peers are removed from the system). */
  override async close(): Promise<void> {
    await super.close();
    await this.#server?.close();
    await Promise.all([...this.#listeners].map((h) => h.shutdown()));
    this.#listeners.clear();
  }
}
