import { deepEqual, equal, ok, rejects } from "@std/assert";
import { ActorSystem } from "../actors/system.ts";
import { ActorStoppedError, RemoteActorError, RemoteUnavailableError } from "../actors/ref.ts";
import { ActorTransport } from "./remote.ts";

const OPTS = { run: "r-remote", secret: "remote-secret", log: () => {} };

async function pair() {
  const a = new ActorSystem({ node: "a" });
  const b = new ActorSystem({ node: "b" });
  const ta = new ActorTransport(a, OPTS);
  const tb = new ActorTransport(b, OPTS);
  const listener = await tb.listen({ port: 0 });
  const client = ta.connect(listener.url, { expectedPeer: "b" });
  await client.ready();
  return {
    a,
    b,
    ta,
    tb,
    listener,
    client,
    async close() {
      await ta.close();
      await tb.close();
      await listener.shutdown();
      await a.shutdown();
      await b.shutdown();
    },
  };
}

Deno.test("remote refs: tell and ask an actor on another node like a local one", async () => {
  const p = await pair();
  try {
    const seen: unknown[] = [];
    await p.b.spawn({
      receive: (m: unknown) => {
        seen.push(m);
        return m;
      },
    }, { name: "sink" });
    const ref = p.a.ref("b/sink");
    ref.tell({ hello: 1 });
    deepEqual(await ref.ask({ hello: 2 }), { hello: 2 });
    deepEqual(seen, [{ hello: 1 }, { hello: 2 }]);
    deepEqual(p.a.stats().remotes, ["b"]);
    deepEqual(p.b.stats().remotes, ["a"]);
  } finally {
    await p.close();
  }
});

Deno.test("remote refs: the server side reaches actors on the dialling node", async () => {
  const p = await pair();
  try {
    await p.a.spawn({ receive: (n: number) => n + 1 }, { name: "inc" });
    equal(await p.b.ref("a/inc").ask(41), 42);
  } finally {
    await p.close();
  }
});

Deno.test("remote refs: a tensor payload crosses with its type, chunked", async () => {
  const p = await pair();
  try {
    await p.b.spawn({
      receive: (m: { w: Float32Array }) => ({
        sum: m.w.reduce((s, x) => s + x, 0),
        type: m.w.constructor.name,
      }),
    }, { name: "sum" });
    const w = new Float32Array(3_000_000).fill(0.5);
    deepEqual(await p.a.ref("b/sum").ask({ w }, { timeoutMs: 20_000 }), {
      sum: 1_500_000,
      type: "Float32Array",
    });
  } finally {
    await p.close();
  }
});

Deno.test("remote refs: errors come back as RemoteActorError, missing actors as errors", async () => {
  const p = await pair();
  try {
    await p.b.spawn({
      receive: () => {
        throw new RangeError("bad step");
      },
    }, { name: "boom" });
    await rejects(
      () => p.a.ref("b/boom").ask("x"),
      (e: unknown) =>
        e instanceof RemoteActorError && e.remoteName === "RangeError" &&
        /bad step/.test(e.message),
    );
    await rejects(
      () => p.a.ref("b/nobody").ask("x"),
      (e: unknown) => e instanceof ActorStoppedError && /b\/nobody: no such actor/.test(e.message),
    );
  } finally {
    await p.close();
  }
});

Deno.test("remote refs: in-flight asks fail with RemoteUnavailableError when the peer goes away", async () => {
  const p = await pair();
  try {
    await p.b.spawn({ receive: () => new Promise(() => {}) }, { name: "slow", shutdownMs: 50 });
    const pending = p.a.ref("b/slow").ask("x", { timeoutMs: 60_000 }).then(
      () => undefined,
      (e) => e,
    );
    await new Promise((r) => setTimeout(r, 20));
    await p.tb.close();
    const err = await pending;
    ok(err instanceof RemoteUnavailableError, String(err));
    ok(/node b disconnected: connection closed \(1001/.test(err.message), err.message);
  } finally {
    await p.close();
  }
});
