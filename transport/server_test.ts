import { deepEqual, equal, ok, rejects } from "@std/assert";
import { prove } from "./auth.ts";
import { importSecret } from "./auth.ts";
import type { IncomingMessage, LogLevel } from "./_channel_options.ts";
import { TransportClient } from "./client.ts";
import { decode, encode } from "./codec.ts";
import type { Envelope } from "./envelope.ts";
import { AuthenticationError, ConnectionClosedError, RemoteError } from "./errors.ts";
import { FaultInjector } from "./faults.ts";
import { serve, type ServeOptions } from "./server.ts";

const RUN = "run-1";
const SECRET = "the-run-secret";

interface Hub {
  url: string;
  got: IncomingMessage[];
  logs: string[];
  shutdown(): Promise<void>;
}

async function hub(options: Partial<ServeOptions> = {}): Promise<Hub> {
  const got: IncomingMessage[] = [];
  const logs: string[] = [];
  const served = await serve({
    nodeId: "hub",
    run: RUN,
    secret: SECRET,
    log: (level: LogLevel, msg: string) => logs.push(`${level} ${msg}`),
    onMessage: (m) => {
      got.push(m);
      const p = m.payload as { op?: string; data?: Float32Array };
      if (p?.op === "fail") throw new TypeError("asked to fail");
      if (p?.op === "sum") return p.data!.reduce((a, b) => a + b, 0);
      if (p?.op === "echo") return p;
      if (p?.op === "hang") return new Promise(() => {});
      return "ok";
    },
    ...options,
  });
  return { url: served.url, got, logs, shutdown: () => served.shutdown() };
}

function client(
  url: string,
  options: Partial<ConstructorParameters<typeof TransportClient>[1]> = {},
) {
  return new TransportClient(url, {
    nodeId: "a",
    run: RUN,
    secret: SECRET,
    log: () => {},
    ...options,
  });
}

/** A hand-driven WebSocket peer that can authenticate and then send raw bytes. */
async function rawPeer(url: string, secret = SECRET, id = "raw") {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const inbox: Envelope[] = [];
  const closed = Promise.withResolvers<CloseEvent>();
  let wake = () => {};
  ws.onmessage = (e) => {
    const v = decode(new Uint8Array(e.data as ArrayBuffer));
    inbox.push(...(Array.isArray(v) ? v : [v]) as Envelope[]);
    wake();
  };
  ws.onclose = (e) => closed.resolve(e);
  await new Promise((r) => ws.onopen = r);
  const next = async (kind: string) => {
    for (;;) {
      const i = inbox.findIndex((e) => e.kind === kind);
      if (i >= 0) return inbox.splice(i, 1)[0];
      const woke = new Promise<void>((r) => wake = r);
      const done = await Promise.race([woke.then(() => false), closed.promise.then(() => true)]);
      if (done && !inbox.some((e) => e.kind === kind)) {
        throw new Error(`closed before a ${kind} frame`);
      }
    }
  };
  let seq = 100;
  const env = (kind: string, payload: unknown, extra: Record<string, unknown> = {}) => ({
    v: 1,
    run: RUN,
    from: id,
    to: "hub/x",
    kind,
    seq: seq++,
    payload,
    ...extra,
  });
  return {
    ws,
    inbox,
    closed: closed.promise,
    next,
    env,
    async auth() {
      const challenge = await next("challenge") as Envelope<{ nonce: Uint8Array }>;
      const key = await importSecret(secret);
      const mac = await prove(key, {
        role: "client",
        nonce: challenge.payload.nonce,
        peerId: id,
        run: RUN,
      });
      ws.send(
        encode({
          v: 1,
          run: RUN,
          from: id,
          to: "hub",
          kind: "auth",
          seq: 0,
          payload: { mac, nonce: new Uint8Array(32) },
        }),
      );
      await next("welcome");
    },
    send(bytes: Uint8Array) {
      ws.send(bytes);
    },
  };
}

Deno.test("server and client exchange tells and asks, both ways", async () => {
  const h = await hub();
  const c = client(h.url, { onMessage: (m) => `client saw ${m.payload}` });
  try {
    c.tell("hub/inbox", { n: 1 });
    equal(await c.ask("hub/x", { op: "sum", data: new Float32Array([1, 2, 3.5]) }), 6.5);
    deepEqual(h.got[0], { kind: "tell", from: "a", to: "hub/inbox", payload: { n: 1 } });
    const channel = await c.ready();
    equal(channel.peerId, "hub");
    await rejects(
      () => c.ask("hub/x", { op: "fail" }),
      (e: unknown) => e instanceof RemoteError && /asked to fail/.test((e as Error).message),
    );
  } finally {
    await c.close();
    await h.shutdown();
  }
});

Deno.test("server asks a connected client by peer id", async () => {
  let peerAsk: Promise<unknown> | undefined;
  const served = await serve({
    nodeId: "hub",
    run: RUN,
    secret: SECRET,
    log: () => {},
    onPeer: (peer) => peerAsk = peer.ask("a/answer", "question"),
  });
  const c = client(served.url, { onMessage: (m) => `answer to ${m.payload}` });
  try {
    await c.ready();
    equal(await peerAsk, "answer to question");
    ok(served.server.peer("a")?.isOpen);
  } finally {
    await c.close();
    await served.shutdown();
  }
});

Deno.test("a tensor larger than a chunk crosses intact in chunks", async () => {
  const h = await hub();
  const c = client(h.url, { chunkBytes: 1 << 20 });
  try {
    const data = new Float32Array(1_500_000).map((_, i) => (i % 1000) * 0.5 - 7);
    const back = await c.ask<{ op: string; data: Float32Array; shape: number[] }>(
      "hub/x",
      { op: "echo", data, shape: [1500, 1000], note: "x" },
    );
    equal(back.data.constructor, Float32Array);
    equal(back.data.length, data.length);
    ok(back.data.every((v, i) => v === data[i]));
    deepEqual(back.shape, [1500, 1000]);
    ok((await c.ready()).stats.framesOut >= 6, "sent as several chunk frames");
  } finally {
    await c.close();
    await h.shutdown();
  }
});

Deno.test("a peer with no secret delivers nothing and is closed with 4401", async () => {
  const h = await hub();
  try {
    const p = await rawPeer(h.url);
    await p.next("challenge");
    p.send(encode(p.env("tell", "sneaky")));
    p.send(encode(p.env("ask", "sneaky", { id: 1 })));
    const closed = await p.closed;
    equal(closed.code, 4401);
    ok(/Authentication failed/.test(closed.reason));
    equal(h.got.length, 0);
  } finally {
    await h.shutdown();
  }
});

Deno.test("a peer with the wrong secret is refused, logged by name, and delivers nothing", async () => {
  const h = await hub();
  const bad = client(h.url, { nodeId: "mallory", secret: "wrong" });
  try {
    const asked = bad.ask("hub/x", "let me in");
    bad.tell("hub/x", "hello?");
    await rejects(() => asked, AuthenticationError);
    const info = await bad.closed;
    equal(info.code, 4401);
    equal(bad.state, "closed");
    equal(h.got.length, 0);
    ok(h.logs.some((l) => /Authentication failed for peer "mallory"/.test(l)), h.logs.join("\n"));
  } finally {
    await bad.close();
    await h.shutdown();
  }
});

Deno.test("a client refuses a server that cannot prove the secret", async () => {
  const served = await serve({ nodeId: "fake", run: RUN, secret: "other", log: () => {} });
  const c = client(served.url);
  try {
    await rejects(() => c.ready(), AuthenticationError);
  } finally {
    await c.close();
    await served.shutdown();
  }
});

Deno.test("bad frames are answered with errors and dropped; the server keeps serving others", async () => {
  const h = await hub({
    limits: { maxFrameBytes: 64 << 10, framesPerSecond: 200, framesBurst: 200 },
  });
  const good = client(h.url, { nodeId: "good", chunkBytes: 32 << 10 });
  const p = await rawPeer(h.url);
  try {
    await p.auth();
    equal(await good.ask("hub/x", "before"), "ok");
    p.send(new Uint8Array([0x92, 0x01])); // truncated msgpack
    p.send(encode({ ...p.env("tell", "x".repeat(100 << 10)) })); // oversized frame
    p.send(encode(p.env("tell", 1, { v: 2 })));
    p.send(encode(p.env("gossip", 1)));
    p.send(encode(p.env("tell", { shape: [3], data: new Float32Array(2) })));
    p.send(encode({ ...p.env("tell", 1), from: "good" })); // speaking for another node
    p.send(encode(p.env("tell", "valid one")));
    const codes: string[] = [];
    for (let i = 0; i < 6; i++) {
      codes.push(((await p.next("error")).payload as { code: string }).code);
    }
    deepEqual(codes, [
      "malformed",
      "too_large",
      "bad_version",
      "unknown_kind",
      "invalid",
      "spoofed",
    ]);
    equal(p.ws.readyState, WebSocket.OPEN);
    equal(await good.ask("hub/x", "after"), "ok");
    // A flood: far more frames than the rate limit allows.
    for (let i = 0; i < 2000; i++) p.send(encode(p.env("tell", i)));
    const limited = await p.next("error");
    equal((limited.payload as { code: string }).code, "rate_limited");
    ok(/Rate limit exceeded/.test((limited.payload as { message: string }).message));
    equal(await good.ask("hub/x", "during flood"), "ok");
    const fromRaw = h.got.filter((m) => m.from === "raw");
    ok(fromRaw.length < 1000, `rate limit let ${fromRaw.length} flood frames through`);
    equal(fromRaw[0].payload, "valid one");
    ok(h.logs.some((l) => /Dropped frame from peer "raw": Malformed frame/.test(l)));
  } finally {
    p.ws.close();
    await p.closed;
    await good.close();
    await h.shutdown();
  }
});

Deno.test("in-flight asks fail with ConnectionClosedError when the connection drops", async () => {
  const h = await hub();
  const c = client(h.url, { reconnect: false });
  try {
    await c.ready();
    const pending = c.ask("hub/x", { op: "hang" }, { timeoutMs: 60_000 });
    const outcome = pending.then(() => undefined, (e: unknown) => e);
    await new Promise((r) => setTimeout(r, 20));
    await h.shutdown();
    await rejects(
      async () => {
        throw await outcome;
      },
      (e: unknown) =>
        e instanceof ConnectionClosedError &&
        /connection to "hub" closed \(1001/.test((e as Error).message),
    );
  } finally {
    await c.close();
  }
});

Deno.test("duplicated and reordered frames from the fault layer are delivered once each", async () => {
  const h = await hub();
  const faults = new FaultInjector({ seed: 42, duplicate: 0.5, reorder: 0.2 });
  const c = client(h.url, { faults });
  try {
    await c.ready();
    for (let i = 0; i < 50; i++) {
      c.tell("hub/x", i);
      await new Promise((r) => setTimeout(r, 0));
    }
    equal(await c.ask("hub/x", "done"), "ok");
    await new Promise((r) => setTimeout(r, 30));
    const seen = h.got.filter((m) => typeof m.payload === "number").map((m) => m.payload as number);
    deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i));
    ok(faults.log.some((e) => e.actions.includes("duplicate")));
  } finally {
    faults.close();
    await c.close();
    await h.shutdown();
  }
});

Deno.test("backpressure: many tells under a small high-water mark all arrive in order", async () => {
  const h = await hub();
  const c = client(h.url, { highWaterBytes: 64 << 10, lowWaterBytes: 16 << 10 });
  try {
    await c.ready();
    const blob = "y".repeat(1000);
    for (let i = 0; i < 5000; i++) {
      c.tell("hub/x", { i, blob });
      if (i % 500 === 0) await c.drain();
    }
    await c.drain();
    equal(await c.ask("hub/x", "end"), "ok");
    const order = h.got.filter((m) => typeof m.payload === "object").map((m) =>
      (m.payload as { i: number }).i
    );
    deepEqual(order, Array.from({ length: 5000 }, (_, i) => i));
  } finally {
    await c.close();
    await h.shutdown();
  }
});

Deno.test("liveness: a partition trips the ping timeout, and the client reconnects once healed", async () => {
  const h = await hub();
  const faults = new FaultInjector({ seed: 9, on: "both" });
  const c = client(h.url, {
    faults,
    pingIntervalMs: 50,
    pingTimeoutMs: 250,
    handshakeTimeoutMs: 250,
    backoffBaseMs: 20,
    backoffMaxMs: 100,
    seed: 1,
  });
  try {
    await c.ready();
    equal(await c.ask("hub/x", "before"), "ok");
    const first = await c.ready();
    faults.partition(["a"], ["hub"]);
    const info = await first.closed;
    deepEqual(info, { code: 4408, reason: "Ping timeout" });
    await new Promise((r) => setTimeout(r, 400));
    equal(c.channel, undefined, "no connection while partitioned");
    faults.heal();
    equal(await c.ask("hub/x", "after heal", { timeoutMs: 5000 }), "ok");
    ok(c.connections >= 2);
  } finally {
    faults.close();
    await c.close();
    await h.shutdown();
  }
});

Deno.test("an empty run secret is refused up front", () => {
  let err: unknown;
  try {
    client("ws://127.0.0.1:1/", { secret: "" });
  } catch (e) {
    err = e;
  }
  ok(err instanceof RangeError && /empty/.test(err.message));
});
