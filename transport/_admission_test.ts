import { deepEqual, equal, ok, throws } from "@std/assert";
import { Admission, DEFAULT_ADMISSION, MAX_ADDRESSES, resolveAdmission } from "./_admission.ts";
import { TransportClient } from "./client.ts";
import { decode } from "./codec.ts";
import { serve, type ServeOptions } from "./server.ts";

Deno.test("admission: caps handshakes in progress per address and in all, until released", () => {
  const a = new Admission({ maxPending: 3, maxPendingPerAddress: 2 });
  const t1 = a.admit("10.0.0.1");
  const t2 = a.admit("10.0.0.1");
  const t3 = a.admit("10.0.0.1");
  if (!t1.ok || !t2.ok) throw new Error("the first two were refused");
  ok(!t3.ok && t3.status === 503 && /from 10\.0\.0\.1 \(limit 2\)/.test(t3.reason));
  const t4 = a.admit("10.0.0.2");
  ok(t4.ok);
  const t5 = a.admit("10.0.0.3");
  ok(!t5.ok && t5.status === 503 && /in progress \(limit 3\)/.test(t5.reason));
  deepEqual(a.stats, {
    pending: 3,
    refusedPending: 1,
    refusedPerAddress: 1,
    refusedRate: 0,
    addresses: 3,
  });
  t1.release();
  t1.release(); // a second release changes nothing
  equal(a.stats.pending, 2);
  ok(a.admit("10.0.0.1").ok);
  equal(a.stats.pending, 3);
});

Deno.test("admission: new connections per address follow a token bucket", () => {
  let now = 0;
  const a = new Admission({ connectionsPerSecond: 2, connectionBurst: 3 }, () => now);
  for (let i = 0; i < 3; i++) {
    const t = a.admit("10.0.0.9");
    if (!t.ok) throw new Error(`connection ${i} refused: ${t.reason}`);
    t.release();
  }
  const refused = a.admit("10.0.0.9");
  ok(!refused.ok && refused.status === 429 && /limit 2\/s/.test(refused.reason));
  ok(a.admit("10.0.0.8").ok, "another address has its own bucket");
  now = 500; // half a second refills one connection
  ok(a.admit("10.0.0.9").ok);
  ok(!a.admit("10.0.0.9").ok);
  equal(a.stats.refusedRate, 2);
});

Deno.test("admission: limits have documented defaults and bad ones are named", () => {
  deepEqual(resolveAdmission(), { ...DEFAULT_ADMISSION });
  throws(() => resolveAdmission({ maxPending: 0 }), /Invalid admission limit maxPending: 0/);
  throws(() => resolveAdmission({ connectionsPerSecond: NaN }), /connectionsPerSecond/);
});

Deno.test("admission: the table of addresses stays bounded under a flood from many addresses", () => {
  const a = new Admission({ connectionsPerSecond: 1e-6, connectionBurst: 1 }, () => 0);
  for (let i = 0; i < 10_000; i++) {
    const t = a.admit(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`);
    if (t.ok) t.release();
  }
  // Forgotten addresses start again with a full bucket; nothing pending is lost.
  equal(a.stats.pending, 0);
  ok(a.stats.addresses <= MAX_ADDRESSES, `${a.stats.addresses} addresses`);
});

/** Opens a WebSocket and says how it went: "open" (the challenge came) or "refused". */
function dial(url: string): Promise<{ outcome: "open" | "refused"; ws: WebSocket }> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  return new Promise((resolve) => {
    ws.onmessage = (e) => {
      const v = decode(new Uint8Array(e.data as ArrayBuffer)) as { kind?: string };
      if (v?.kind === "challenge") resolve({ outcome: "open", ws });
    };
    ws.onerror = () => {};
    ws.onclose = () => resolve({ outcome: "refused", ws });
  });
}

/** Waits (bounded: 200 polls of 20 ms) until `cond` holds; the caller's next assert says what failed. */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 20));
  ok(cond(), "condition still false after 200 polls");
}

function closeAll(sockets: WebSocket[]): Promise<unknown> {
  return Promise.all(
    sockets.map((ws) =>
      ws.readyState === WebSocket.CLOSED ? undefined : new Promise((r) => {
        ws.addEventListener("close", r);
        ws.close();
      })
    ),
  );
}

async function hub(options: Partial<ServeOptions>) {
  const logs: string[] = [];
  const served = await serve({
    nodeId: "hub",
    run: "r",
    secret: "s",
    log: (level, m) => logs.push(`${level} ${m}`),
    onMessage: () => "ok",
    ...options,
  });
  return { served, logs };
}

Deno.test("server: unauthenticated connections over the per-address cap are refused before the upgrade; a freed slot admits again", async () => {
  const { served, logs } = await hub({ admission: { maxPendingPerAddress: 2 } });
  const held: WebSocket[] = [];
  try {
    const a = await dial(served.url);
    const b = await dial(served.url);
    held.push(a.ws, b.ws);
    deepEqual([a.outcome, b.outcome], ["open", "open"]);
    const c = await dial(served.url);
    held.push(c.ws);
    equal(c.outcome, "refused");
    equal(served.server.admission.pending, 2);
    equal(served.server.admission.refusedPerAddress, 1);
    ok(logs.some((l) => /Refused connection before authentication: Too many handshakes/.test(l)));
    // One silent peer leaves: its slot is free for a real client, which authenticates.
    await closeAll([a.ws]);
    await until(() => served.server.admission.pending === 1);
    const client = new TransportClient(served.url, {
      nodeId: "a",
      run: "r",
      secret: "s",
      log: () => {},
    });
    try {
      await client.ready();
      equal(await client.ask("hub/x", "hi"), "ok");
      // Authenticated, it no longer counts as pending.
      equal(served.server.admission.pending, 1);
    } finally {
      await client.close();
    }
  } finally {
    await closeAll(held);
    await served.shutdown();
  }
});

Deno.test("server: a connection rate over the per-address bucket is refused", async () => {
  const { served } = await hub({ admission: { connectionsPerSecond: 1e-3, connectionBurst: 2 } });
  const held: WebSocket[] = [];
  try {
    const outcomes = [];
    for (let i = 0; i < 3; i++) {
      const d = await dial(served.url);
      held.push(d.ws);
      outcomes.push(d.outcome);
    }
    deepEqual(outcomes, ["open", "open", "refused"]);
    equal(served.server.admission.refusedRate, 1);
  } finally {
    await closeAll(held);
    await served.shutdown();
  }
});

Deno.test("server: a handshake frame over maxHandshakeFrameBytes ends the handshake unparsed", async () => {
  const { served, logs } = await hub({ limits: { maxHandshakeFrameBytes: 1024 } });
  try {
    const d = await dial(served.url);
    equal(d.outcome, "open");
    const closed = new Promise<CloseEvent>((r) => d.ws.addEventListener("close", r));
    d.ws.send(new Uint8Array(1025));
    const e = await closed;
    equal(e.code, 4401);
    ok(/Handshake frame of 1025 bytes exceeds the limit of 1024/.test(e.reason), e.reason);
    ok(logs.some((l) => /unauthenticated peer.*Handshake frame of 1025 bytes/.test(l)));
    await until(() => served.server.admission.pending === 0);
  } finally {
    await served.shutdown();
  }
});
