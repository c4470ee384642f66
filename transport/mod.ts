/**
 * The wire between nodes: msgpack frames over WebSockets.
 *
 * - {@linkcode encode} / {@linkcode decode}: the msgpack codec (typed arrays
 *   round-trip with their type).
 * - {@linkcode Envelope} and {@linkcode validateEnvelope}: the one versioned
 *   envelope, checked on arrival before anything else sees it.
 * - {@linkcode TransportServer} (mountable on any hono app) and
 *   {@linkcode serve}; {@linkcode TransportClient} with reconnect, pings,
 *   backpressure and chunked transfers of large tensors.
 * - Run-secret HMAC challenge-response in both directions before any message
 *   is delivered; with node identities ({@linkcode loadIdentity}), Ed25519
 *   signatures over the handshake, node ids derived from keys, and an
 *   allow-list of keys.
 * - {@linkcode FaultInjector}: seeded drop, delay, duplicate, reorder,
 *   corrupt and partitions for tests.
 * - {@linkcode ActorTransport}: joins an actor system to other nodes so that
 *   remote refs work like local ones.
 *
 * @example Two actor systems over a real WebSocket
 * ```ts
 * import { ActorSystem } from "../actors/runtime/system.ts";
 * import { ActorTransport } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * const hub = new ActorSystem({ node: "hub" });
 * const edge = new ActorSystem({ node: "edge" });
 * await hub.spawn({ receive: (s: string) => s.toUpperCase() }, { name: "shout" });
 * const hubT = new ActorTransport(hub, { run: "demo", secret: "s3cret" });
 * const edgeT = new ActorTransport(edge, { run: "demo", secret: "s3cret" });
 * const listener = await hubT.listen({ port: 0 });
 * await edgeT.connect(listener.url).ready();
 * assert.equal(await edge.ref("hub/shout").ask("hi"), "HI");
 * await edgeT.close();
 * await hubT.close();
 * await edge.shutdown();
 * await hub.shutdown();
 * ```
 *
 * @module
 */
export * from "./auth.ts";
export * from "./chunk.ts";
export * from "./client.ts";
export * from "./codec.ts";
export * from "./envelope.ts";
export * from "./errors.ts";
export * from "./faults.ts";
export * from "./identity.ts";
export * from "./identity_file.ts";
export * from "./remote.ts";
export * from "./dialer.ts";
export * from "./rng.ts";
export * from "./server.ts";
export { Channel } from "./_channel.ts";
export {
  type AskOptions as TransportAskOptions,
  type ChannelStats,
  type CloseInfo,
  type ConnectionOptions,
  consoleLogger,
  type IncomingMessage,
  type Logger,
  type LogLevel,
  type MessageHandler,
} from "./_channel_options.ts";
export { type AdmissionLimits, type AdmissionStats, DEFAULT_ADMISSION } from "./_admission.ts";
