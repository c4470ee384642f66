/**
 * The routing half of an actor system's transport: the connections it dials
 * ({@linkcode ActorDialer}), and how every authenticated connection joins the
 * system. transport/remote.ts adds the server side (`ActorTransport`); a node
 * that only dials out, such as a browser tab, uses this module alone, which
 * needs nothing of Deno's.
 *
 * Every authenticated connection (accepted by this node's server or dialled
 * by one of its clients) becomes the system's {@linkcode RemoteLink} for the
 * peer: actor frames map one to one onto envelopes (`tell`, `ask` with `id`,
 * `reply` and `error` with `corr`), and the peer's proven id replaces any
 * `from` it claims. When a peer's last connection closes, the system's
 * `removeRemote` fails the asks still waiting on it with a clear
 * `RemoteUnavailableError` instead of letting them hang; a dialled
 * connection that comes back (the client reconnects) is added again.
 *
 * @module
 */
import type { RemoteFrame, RemoteLink } from "../actors/runtime/_remote.ts";
import type { ActorSystem } from "../actors/runtime/system.ts";
import type { Channel } from "./_channel.ts";
import { type CloseInfo, type ConnectionOptions, consoleLogger } from "./_channel_options.ts";
import { type ClientOptions, TransportClient } from "./client.ts";
import type { Envelope } from "./envelope.ts";
import type { NodeIdentity } from "./identity.ts";
import { nodeOf } from "../actors/runtime/_remote.ts";
import type { AdmissionLimits } from "./_admission.ts";

const transports = new WeakMap<ActorSystem, ActorDialer>();

/**
 * The host name by which `system`'s transport reaches node `node` (the host
 * of the URL it dialled, or the address a peer connected from), or
 * `undefined` when no transport of `system` is connected to it. Lets a
 * service on that node offer a second endpoint (another port) on the same
 * host.
 *
 * @example
 * ```ts
 * import { ActorSystem } from "../actors/runtime/system.ts";
 * import { peerHostname } from "./dialer.ts";
 * import assert from "node:assert/strict";
 * assert.equal(peerHostname(new ActorSystem({ node: "a" }), "b"), undefined);
 * ```
 */
export function peerHostname(system: ActorSystem, node: string): string | undefined {
  return transports.get(system)?.peerHostname(node);
}

/** The host part of a channel's remote address (a URL, or `host:port`). */
function hostOf(addr: string | undefined): string | undefined {
  if (!addr) return undefined;
  if (addr.includes("://")) {
    try {
      return new URL(addr).hostname || undefined;
    } catch {
      return undefined;
    }
  }
  const at = addr.lastIndexOf(":");
  const host = at > 0 ? addr.slice(0, at) : addr;
  // A bare IPv6 address needs brackets in a URL.
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/** Options of {@linkcode ActorDialer} and of transport/remote.ts's `ActorTransport`. */
export interface ActorTransportOptions extends ConnectionOptions {
  /** Run id shared by every node of the run. */
  run: string;
  /** The run secret (join token); optional with `identity` and `allow`. */
  secret?: string | Uint8Array;
  /** This node's key pair (see `TransportServer` and `TransportClient`). */
  identity?: NodeIdentity;
  /** Server side: the key fingerprints admitted. */
  allow?: ReadonlySet<string>;
  /** Client side: extra PEM certificates to trust for `wss://`. */
  caCerts?: string[];
  /**
   * The actor paths (or node ids) a message to `to` speaks for, e.g. the
   * trainer a contribution names. A tell, ask or reply from a peer that
   * speaks for a path on another node is refused as an impersonation and
   * never delivered: what a message claims is bound to the connection it
   * came on.
   */
  claims?: (payload: unknown, to: string) => string[];
  /** Limits on connections before they authenticate (server side; see transport/_admission.ts). */
  admission?: Partial<AdmissionLimits>;
}

/** Options of {@linkcode ActorDialer.connect}. */
export type DialOptions = Pick<
  ClientOptions,
  | "expectedPeer"
  | "expectedKey"
  | "seed"
  | "random"
  | "backoffBaseMs"
  | "backoffMaxMs"
  | "maxAttempts"
  | "retryOnAuthFailure"
>;

/**
 * The transport of one actor system that dials peers with `connect` and
 * routes what their connections carry to and from the system.
 *
 * @example A dialler reaches an actor of a served system
 * ```ts
 * import { ActorSystem } from "../actors/runtime/system.ts";
 * import { ActorDialer } from "./dialer.ts";
 * import { ActorTransport } from "./remote.ts";
 * import assert from "node:assert/strict";
 *
 * const a = new ActorSystem({ node: "a" });
 * const b = new ActorSystem({ node: "b" });
 * await b.spawn({ receive: (n: number) => n * 2 }, { name: "double" });
 * const ta = new ActorDialer(a, { run: "r1", secret: "s" });
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
export class ActorDialer {
  #system: ActorSystem;
  #options: ActorTransportOptions;
  #channels = new Map<string, Channel[]>();
  #clients = new Set<TransportClient>();

  /** Creates the transport of `system` (its node id is the system's `node`). */
  constructor(system: ActorSystem, options: ActorTransportOptions) {
    this.#system = system;
    this.#options = options;
    transports.set(system, this);
  }

  /** Node ids with at least one open connection. */
  get peers(): string[] {
    return [...this.#channels.keys()];
  }

  /**
   * The fingerprint of the key `node` signed its handshake with ("" when it
   * proved the run secret only), or undefined when it is not connected.
   */
  peerFingerprint(node: string): string | undefined {
    return this.#channels.get(node)?.at(-1)?.peerFingerprint;
  }

  /** The host name by which an open connection reaches `node` (see {@linkcode peerHostname}). */
  peerHostname(node: string): string | undefined {
    return hostOf(this.#channels.get(node)?.at(-1)?.remoteAddr);
  }

  /** Dials a peer node; the client reconnects until {@linkcode ActorDialer.close}. */
  connect(url: string | URL, options: DialOptions = {}): TransportClient {
    const client = new TransportClient(url, {
      ...this.#options,
      ...options,
      nodeId: this.#system.node,
      onEnvelope: (env, ch) => this.deliver(env, ch),
      onOpen: (ch) => this.opened(ch),
      onClose: (ch, info) => this.closed(ch, info),
    });
    this.#clients.add(client);
    client.closed.then(() => this.#clients.delete(client));
    return client;
  }

  #link(channel: Channel): RemoteLink {
    return {
      send: (frame: RemoteFrame) => {
        switch (frame.kind) {
          case "tell":
            channel.post("tell", frame.to, frame.payload);
            return;
          case "ask":
            channel.post("ask", frame.to, frame.payload, { id: frame.id });
            return;
          case "reply":
            channel.post("reply", frame.to, frame.payload, { corr: frame.id });
            return;
          case "error": {
            const p = frame.payload as { name: string; message: string };
            channel.post("error", frame.to, {
              code: "actor_error",
              name: p.name,
              message: p.message,
            }, {
              corr: frame.id,
            });
            return;
          }
        }
      },
    };
  }

  /** Joins an authenticated connection to the system: its peer's link (a server calls this too). */
  opened(channel: Channel): void {
    const list = this.#channels.get(channel.peerId) ?? [];
    list.push(channel);
    this.#channels.set(channel.peerId, list);
    this.#system.addRemote(channel.peerId, this.#link(channel));
  }

  /** Drops a closed connection; the peer is gone when it was its last (a server calls this too). */
  closed(channel: Channel, info: CloseInfo): void {
    const peer = channel.peerId;
    const list = (this.#channels.get(peer) ?? []).filter((c) => c !== channel);
    if (list.length > 0) {
      this.#channels.set(peer, list);
      this.#system.addRemote(peer, this.#link(list[list.length - 1]));
      return;
    }
    this.#channels.delete(peer);
    if (!this.#system.isShutDown) {
      this.#system.removeRemote(
        peer,
        `connection closed (${info.code}${info.reason ? ` ${info.reason}` : ""})`,
      );
    }
  }

  /** Why a message from `channel` may not be delivered: it speaks for another node. */
  #impersonation(env: Envelope, channel: Channel): string | undefined {
    if (!this.#options.claims || env.kind === "error") return undefined;
    let claimed: string[];
    try {
      claimed = this.#options.claims(env.payload, env.to);
    } catch {
      return undefined; // not a message the hook knows; the receiver validates it
    }
    const other = claimed.find((path) => nodeOf(path) !== channel.peerId);
    if (other === undefined) return undefined;
    const type = (env.payload as { type?: unknown })?.type;
    return `${typeof type === "string" ? type : env.kind} from node "${channel.peerId}" speaks ` +
      `for "${other}" of another node (impersonation)`;
  }

  /** Hands an envelope from a connection to the system, or refuses it (a server calls this too). */
  deliver(env: Envelope, channel: Channel): void {
    const impersonation = this.#impersonation(env, channel);
    if (impersonation !== undefined) {
      const message = `Refused ${impersonation}`;
      (this.#options.log ?? consoleLogger)("warn", message);
      // The peer hears why: an ask fails with it, a tell or reply gets it as a report.
      if (channel.isOpen) {
        channel.post("error", env.from, {
          code: "impersonation",
          name: "ImpersonationError",
          message,
        }, env.kind === "ask" ? { corr: env.id } : undefined);
      }
      // The ask a refused reply answers fails with the reason instead of waiting for its timeout.
      if (env.kind === "reply") {
        this.#system.deliverRemote({
          kind: "error",
          to: env.to,
          from: channel.peerId,
          id: env.corr,
          payload: { name: "ImpersonationError", message },
        });
      }
      return;
    }
    let frame: RemoteFrame;
    switch (env.kind) {
      case "tell":
        frame = { kind: "tell", to: env.to, from: channel.peerId, payload: env.payload };
        break;
      case "ask":
        frame = { kind: "ask", to: env.to, from: channel.peerId, id: env.id, payload: env.payload };
        break;
      case "reply":
        frame = {
          kind: "reply",
          to: env.to,
          from: channel.peerId,
          id: env.corr,
          payload: env.payload,
        };
        break;
      case "error": {
        const p = env.payload as { code: string; message: string; name?: unknown };
        if (env.corr === undefined) {
          (this.#options.log ?? consoleLogger)(
            "warn",
            `Peer "${channel.peerId}" reported: ${p.message}`,
          );
          return;
        }
        const name = typeof p.name === "string" ? p.name : p.code;
        frame = {
          kind: "error",
          to: env.to,
          from: channel.peerId,
          id: env.corr,
          payload: { name, message: p.message },
        };
        break;
      }
      default:
        return;
    }
    try {
      this.#system.deliverRemote(frame);
    } catch (err) {
      if (env.kind === "ask" && channel.isOpen) {
        channel.post("error", env.from, {
          code: "invalid",
          name: "TypeError",
          message: (err as Error).message,
        }, {
          corr: env.id,
        });
      } else {
        throw err;
      }
    }
  }

  /** Closes every dialled connection (peers are removed from the system). */
  async close(): Promise<void> {
    await Promise.all([...this.#clients].map((c) => c.close()));
  }
}
