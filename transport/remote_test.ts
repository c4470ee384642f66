import { deepEqual, equal, ok, rejects, throws } from "@std/assert";
import { ActorSystem } from "../actors/runtime/system.ts";
import {
  ActorStoppedError,
  RemoteActorError,
  RemoteUnavailableError,
} from "../actors/runtime/ref.ts";
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

Deno.test("remote refs: every large reply arrives with many asks in flight", async () => {
  // Replies posted from microtasks while the send pump was finishing a transfer once stayed
  // queued until a later message restarted the pump: the last reply of a burst never came.
  const p = await pair();
  try {
    const sizes = [1 << 20, 3 << 19, 256 << 10, 2 << 20];
    await p.b.spawn({
      receive: async (m: { i: number; hops: number }) => {
        for (let h = 0; h < m.hops; h++) await Promise.resolve();
        const bytes = new Uint8Array(sizes[m.i % sizes.length]).fill(m.i & 0xff);
        return m.i % 2 ? { i: m.i, bytes } : { i: m.i, bytes: new Float32Array(bytes.buffer) };
      },
    }, { name: "big" });
    const ref = p.a.ref("b/big");
    const bursts = 24;
    const inFlight = 6;
    let arrived = 0;
    let wrong = 0;
    const failures: string[] = [];
    for (let burst = 0; burst < bursts; burst++) {
      // Each burst ends with no later message that could restart a stalled pump.
      await Promise.all(Array.from({ length: inFlight }, async (_, k) => {
        const i = burst * inFlight + k;
        try {
          const r = await ref.ask<{ i: number; bytes: Uint8Array | Float32Array }>(
            { i, hops: (burst * 7 + k * 3) % 32 },
            { timeoutMs: 4000 },
          );
          const b = new Uint8Array(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength);
          const n = sizes[i % sizes.length];
          if (r.i !== i || b.byteLength !== n || b[0] !== (i & 0xff) || b[n - 1] !== (i & 0xff)) {
            wrong++;
          }
          arrived++;
        } catch (err) {
          failures.push(`ask ${i}: ${(err as Error).message}`);
        }
      }));
    }
    deepEqual(failures, []);
    equal(arrived, bursts * inFlight);
    equal(wrong, 0);
  } finally {
    await p.close();
  }
});

Deno.test("remote refs: a whole-frame size over the frame limit is refused", () => {
  const a = new ActorSystem({ node: "a" });
  throws(() => new ActorTransport(a, { ...OPTS, wholeBytes: 16 << 20 }), /Invalid wholeBytes/);
  throws(() => new ActorTransport(a, { ...OPTS, wholeBytes: -1 }), RangeError);
});
