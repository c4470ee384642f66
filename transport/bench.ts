/**
 * The `transport` bench suite (`deno task bench --only transport`).
 *
 * Measures the actor layer against a bare WebSocket + msgpackr doing the same
 * transfer in the same run, both ends in this process over loopback:
 * - `inproc_tell_msgs_per_s`, `inproc_ask_round_trips_per_s`: one actor system;
 * - `remote_tell_msgs_per_s` vs `raw_ws_msgs_per_s`: small tells to an actor
 *   on another node over one WebSocket vs one msgpack frame per message;
 * - `tensor_mb_per_s` vs `raw_ws_tensor_mb_per_s`: a 64 MiB Float32Array
 *   asked of a remote actor vs the same bytes sent in 2 MiB msgpack frames
 *   and reassembled;
 * - the ratios `remote_tell_vs_raw_ws` and `tensor_vs_raw_ws` (layer / bare).
 *
 * @module
 */
import { Packr } from "msgpackr";
import { ActorSystem } from "../actors/runtime/system.ts";
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";
import { ActorTransport } from "./remote.ts";

const OPTS = { run: "bench", secret: "bench-secret", log: () => {} };

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function inProcess(tells: number, asks: number): Promise<BenchRecord[]> {
  const system = new ActorSystem({ node: "local" });
  let count = 0;
  const counter = await system.spawn({
    receive: (m: unknown) => m === "count" ? count : (count++, undefined),
  }, { name: "counter", mailboxSize: tells + 10 });
  let t = performance.now();
  for (let i = 0; i < tells; i++) counter.tell(i);
  while ((await counter.ask<number>("count")) < tells) { /* drain */ }
  const tellRate = tells / ((performance.now() - t) / 1000);
  const echo = await system.spawn({ receive: (m: unknown) => m }, { name: "echo" });
  t = performance.now();
  for (let i = 0; i < asks; i++) await echo.ask(i);
  const askRate = asks / ((performance.now() - t) / 1000);
  await system.shutdown();
  return [
    { name: "inproc_tell_msgs_per_s", value: tellRate, unit: "msgs/s", messages: tells },
    {
      name: "inproc_ask_round_trips_per_s",
      value: askRate,
      unit: "asks/s",
      asks,
      mode: "sequential",
    },
  ];
}

interface Remote {
  a: ActorSystem;
  b: ActorSystem;
  close(): Promise<void>;
  drain(): Promise<void>;
}

async function remotePair(tells: number): Promise<Remote & { count(): number }> {
  const a = new ActorSystem({ node: "a" });
  const b = new ActorSystem({ node: "b" });
  let count = 0;
  await b.spawn({ receive: (m: unknown) => m === "count" ? count : (count++, undefined) }, {
    name: "counter",
    mailboxSize: tells + 10,
  });
  await b.spawn({ receive: (m: { data: Float32Array }) => m.data.length }, { name: "sink" });
  const ta = new ActorTransport(a, OPTS);
  const tb = new ActorTransport(b, OPTS);
  const listener = await tb.listen({ port: 0 });
  const client = ta.connect(listener.url, { expectedPeer: "b" });
  await client.ready();
  return {
    a,
    b,
    count: () => count,
    drain: () => client.drain(),
    async close() {
      await ta.close();
      await tb.close();
      await listener.shutdown();
      await a.shutdown();
      await b.shutdown();
    },
  };
}

async function remoteTells(r: Remote & { count(): number }, n: number): Promise<number> {
  const start = r.count();
  const ref = r.a.ref("b/counter");
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    ref.tell({ i, v: 1.5 });
    if (i % 8192 === 8191) await r.drain();
  }
  while (r.count() - start < n) await new Promise((res) => setTimeout(res, 1));
  return n / ((performance.now() - t) / 1000);
}

async function remoteTensor(r: Remote, data: Float32Array): Promise<number> {
  const t = performance.now();
  const n = await r.a.ref("b/sink").ask<number>({ data }, { timeoutMs: 120_000 });
  if (n !== data.length) {
    throw new Error(`Tensor came back with ${n} elements, sent ${data.length}`);
  }
  return data.byteLength / 2 ** 20 / ((performance.now() - t) / 1000);
}

/** The same transfers on a bare WebSocket with msgpackr, no envelope, auth or checks. */
async function rawPair() {
  const packr = new Packr({ useRecords: false, moreTypes: true });
  let count = 0;
  let tensor: Float32Array | undefined;
  let received = 0;
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => {
      const m = packr.unpack(new Uint8Array(e.data as ArrayBuffer));
      if (m.kind === "tell") count++;
      else if (m.kind === "count") socket.send(packr.pack({ count }));
      else if (m.kind === "chunk") {
        tensor ??= new Float32Array(m.total / 4);
        new Uint8Array(tensor.buffer).set(m.data, m.offset);
        received += m.data.byteLength;
        if (received === m.total) {
          socket.send(packr.pack({ length: tensor.length }));
          tensor = undefined;
          received = 0;
        }
      }
    };
    return response;
  });
  const ws = new WebSocket(`ws://127.0.0.1:${server.addr.port}/`);
  ws.binaryType = "arraybuffer";
  await new Promise((r) => ws.onopen = r);
  let wake: (m: { count?: number; length?: number }) => void = () => {};
  ws.onmessage = (e) => wake(packr.unpack(new Uint8Array(e.data as ArrayBuffer)));
  const reply = () => new Promise<{ count?: number; length?: number }>((r) => wake = r);
  const drain = async () => {
    while (ws.bufferedAmount > 2 << 20) await new Promise((r) => setTimeout(r, 1));
  };
  return {
    async tells(n: number): Promise<number> {
      const start = count;
      const t = performance.now();
      for (let i = 0; i < n; i++) {
        ws.send(packr.pack({ kind: "tell", to: "b/counter", i, v: 1.5 }));
        if (i % 8192 === 8191) await drain();
      }
      while (count - start < n) await new Promise((res) => setTimeout(res, 1));
      return n / ((performance.now() - t) / 1000);
    },
    async tensor(data: Float32Array): Promise<number> {
      const t = performance.now();
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      const done = reply();
      const chunk = 2 << 20;
      for (let offset = 0; offset < bytes.length; offset += chunk) {
        if (ws.bufferedAmount > 8 << 20) await drain();
        ws.send(
          packr.pack({
            kind: "chunk",
            offset,
            total: bytes.length,
            data: bytes.subarray(offset, offset + chunk),
          }),
        );
      }
      const { length } = await done;
      if (length !== data.length) throw new Error(`Raw tensor came back with ${length} elements`);
      return data.byteLength / 2 ** 20 / ((performance.now() - t) / 1000);
    },
    async close() {
      const closed = new Promise((r) => ws.onclose = r);
      ws.close();
      await closed;
      await server.shutdown();
    },
  };
}

/** Runs the transport suite. */
export async function* bench(options: BenchOptions): AsyncGenerator<BenchRecord> {
  const tells = options.quick ? 20_000 : 100_000;
  const reps = options.quick ? 1 : 3;
  const tensorBytes = options.quick ? 16 << 20 : 64 << 20;
  for (
    const record of await inProcess(
      options.quick ? 20_000 : 200_000,
      options.quick ? 2_000 : 20_000,
    )
  ) {
    yield record;
  }
  const remote = await remotePair(tells * (reps + 1));
  const raw = await rawPair();
  const data = new Float32Array(tensorBytes / 4);
  for (let i = 0; i < data.length; i += 1024) data[i] = i;
  const layerTells: number[] = [],
    rawTells: number[] = [],
    layerMb: number[] = [],
    rawMb: number[] = [];
  try {
    // One warm-up round each, then interleaved repetitions so both see the same machine load.
    await remoteTells(remote, tells / 4);
    await raw.tells(tells / 4);
    await remoteTensor(remote, data);
    await raw.tensor(data);
    for (let r = 0; r < reps; r++) {
      layerTells.push(await remoteTells(remote, tells));
      rawTells.push(await raw.tells(tells));
      layerMb.push(await remoteTensor(remote, data));
      rawMb.push(await raw.tensor(data));
    }
  } finally {
    await raw.close();
    await remote.close();
  }
  const extra = { reps, both_ends: "one process, loopback" };
  const lt = median(layerTells), rt = median(rawTells), lm = median(layerMb), rm = median(rawMb);
  yield { name: "remote_tell_msgs_per_s", value: lt, unit: "msgs/s", messages: tells, ...extra };
  yield { name: "raw_ws_msgs_per_s", value: rt, unit: "msgs/s", messages: tells, ...extra };
  yield { name: "remote_tell_vs_raw_ws", value: lt / rt, unit: "ratio", target: ">= 0.8" };
  yield {
    name: "tensor_mb_per_s",
    value: lm,
    unit: "MiB/s",
    bytes: tensorBytes,
    dtype: "f32",
    ...extra,
  };
  yield { name: "raw_ws_tensor_mb_per_s", value: rm, unit: "MiB/s", bytes: tensorBytes, ...extra };
  yield { name: "tensor_vs_raw_ws", value: lm / rm, unit: "ratio", target: ">= 0.8" };
}
