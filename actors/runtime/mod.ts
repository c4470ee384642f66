/**
 * A small OTP-style actor library, importable alone: it imports nothing
 * outside this folder (tests/layering_test.ts holds it to that), and the rest
 * of the project builds on it (transport/ carries its frames between nodes,
 * actors/ writes the training roles as its behaviors).
 *
 * - {@linkcode ActorSystem}: one per node; spawns actors that handle one
 *   message at a time from bounded {@linkcode Mailbox}es, keeps a named
 *   registry, watches, timers ({@linkcode Timers}) and ordered shutdown.
 * - {@linkcode ActorRef}: location-transparent addresses (`node/name`) that
 *   reach local actors and, through a transport's {@linkcode RemoteLink}
 *   (the contract in `_remote.ts`), actors on other nodes.
 * - {@linkcode Supervisor}: plain-data child specs and flags, restart
 *   strategies, intensity, escalation and backoff, as in Erlang/OTP.
 * - {@linkcode workerActor}: an actor hosted in a Worker, for CPU- or
 *   GPU-bound work that must not block the node's event loop.
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
 * @example A crashed child is restarted by its supervisor
 * ```ts
 * import { ActorSystem, Supervisor } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * const system = new ActorSystem({ node: "n1" });
 * let starts = 0;
 * await system.spawn(
 *   new Supervisor({
 *     children: [{
 *       id: "flaky",
 *       start: () => {
 *         starts++;
 *         return {
 *           receive: (m: unknown) => {
 *             if (m === "crash") throw new Error("Crashed on purpose");
 *             return starts;
 *           },
 *         };
 *       },
 *     }],
 *   }),
 *   { name: "root" },
 * );
 * const flaky = system.ref("n1/root/flaky");
 * await assert.rejects(flaky.ask("crash"), /Crashed on purpose/);
 * // The supervisor restarts the child at once: ask until the new one answers.
 * let seen: unknown;
 * for (let i = 0; i < 50 && seen === undefined; i++) {
 *   seen = await flaky.ask("starts").catch(() => undefined);
 *   if (seen === undefined) await new Promise((r) => setTimeout(r, 10));
 * }
 * assert.equal(seen, 2);
 * await system.shutdown();
 * ```
 *
 * @module
 */
export * from "./_remote.ts";
export * from "./behavior.ts";
export * from "./mailbox.ts";
export * from "./ref.ts";
export * from "./supervisor.ts";
export * from "./system.ts";
export * from "./timers.ts";
export * from "./worker.ts";
