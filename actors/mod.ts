/**
 * The actor runtime: an {@linkcode ActorSystem} per node hosting actors that
 * handle one message at a time from bounded mailboxes, location-transparent
 * {@linkcode ActorRef}s (`node/name`) reaching local actors and, through a
 * transport's {@linkcode RemoteLink}, actors on other nodes; OTP-style
 * {@linkcode Supervisor}s with restart strategies, intensity, escalation and
 * backoff; and actors hosted in Workers ({@linkcode workerActor}).
 *
 * @example A supervised actor reached by path
 * ```ts
 * import { ActorSystem, Supervisor } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * const system = new ActorSystem({ node: "n1" });
 * await system.spawn(
 *   new Supervisor({ children: [{ id: "echo", start: () => ({ receive: (m: unknown) => m }) }] }),
 *   { name: "root" },
 * );
 * assert.equal(await system.ref("n1/root/echo").ask("hello"), "hello");
 * await system.shutdown();
 * ```
 *
 * @module
 */
export * from "./_remote.ts";
export * from "./mailbox.ts";
export * from "./ref.ts";
export * from "./supervisor.ts";
export * from "./system.ts";
export * from "./timers.ts";
export * from "./worker.ts";
