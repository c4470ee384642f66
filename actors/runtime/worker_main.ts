/**
 * The entry script of a Worker that hosts an actor behavior (see
 * `worker.ts`). It imports the behavior module named by the host, runs its
 * hooks, and answers each message the host forwards. Not imported by user
 * code.
 *
 * Protocol (host -> worker): `{type: "init", id, module, args, path}`,
 * `{type: "msg", id, msg}`, `{type: "stop", id, reason}`. Worker -> host:
 * `{type: "ok", id, value}`, `{type: "fail", id, error: {name, message, stack}}`,
 * and `{type: "closed"}` when the behavior calls `self.close()`.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import type { WorkerBehavior, WorkerContext } from "./worker.ts";

type Inbound =
  | { type: "init"; id: number; module: string; args: unknown; path: string }
  | { type: "msg"; id: number; msg: unknown }
  | { type: "stop"; id: number; reason: string };

const scope = self as unknown as DedicatedWorkerGlobalScope & { close(): void };
const close = scope.close.bind(scope);
// A Worker that closes itself gives its host no event; say so first, so the
// host can count it as the actor's death.
scope.close = () => {
  scope.postMessage({ type: "closed" });
  close();
};

let behavior: WorkerBehavior | undefined;
const abort = new AbortController();
let ctx: WorkerContext | undefined;

function reply(id: number, value: unknown): void {
  try {
    scope.postMessage({ type: "ok", id, value });
  } catch (e) {
    fail(id, new TypeError(`Cannot send reply: ${e instanceof Error ? e.message : e}`));
  }
}

function fail(id: number, e: unknown): void {
  const error = e instanceof Error
    ? { name: e.name, message: e.message, stack: e.stack }
    : { name: "Error", message: String(e) };
  scope.postMessage({ type: "fail", id, error });
}

async function handle(data: Inbound): Promise<void> {
  switch (data.type) {
    case "init": {
      const mod = await import(data.module);
      const exported = mod.default ?? mod.behavior;
      const made = typeof exported === "function" ? await exported(data.args) : exported;
      if (typeof made?.receive !== "function") {
        throw new TypeError(
          `Invalid worker behavior module ${data.module}: default export must be a behavior with receive, or a function returning one`,
        );
      }
      behavior = made as WorkerBehavior;
      ctx = { path: data.path, args: data.args, signal: abort.signal };
      await behavior.started?.(ctx);
      return reply(data.id, undefined);
    }
    case "msg": {
      if (behavior === undefined || ctx === undefined) {
        throw new TypeError("Worker actor got a message before init");
      }
      return reply(data.id, await behavior.receive(data.msg, ctx));
    }
    case "stop": {
      abort.abort(data.reason);
      if (behavior !== undefined && ctx !== undefined) await behavior.stopped?.(ctx, data.reason);
      return reply(data.id, undefined);
    }
  }
}

scope.onmessage = (event: MessageEvent<Inbound>) => {
  const data = event.data;
  handle(data).catch((e) => fail(data.id, e));
};
