/**
 * A hostile peer for tests/preauth_flood_test.ts, run as its own process
 * (its own file-descriptor budget): it opens `--connections` WebSocket
 * upgrade requests over raw TCP and never authenticates, plus `--slow`
 * slow-loris connections that send their upgrade request one byte every
 * `--byte-ms`, holds them all for `--hold-ms`, then closes everything and
 * prints one JSON line of what the host answered. Bounded in count and time;
 * loopback only.
 *
 * @module
 */
import { parseArgs } from "@std/cli";

const { values } = parseArgs({
  args: Deno.args,
  strict: true,
  options: {
    port: { type: "string" },
    connections: { type: "string" },
    slow: { type: "string" },
    "byte-ms": { type: "string" },
    "hold-ms": { type: "string" },
  },
});
const port = Number(values.port);
const connections = Number(values.connections ?? 1000);
const slow = Number(values.slow ?? 200);
const byteMs = Number(values["byte-ms"] ?? 300);
const holdMs = Number(values["hold-ms"] ?? 20_000);
for (const [k, v] of Object.entries({ port, connections, slow, byteMs, holdMs })) {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`Invalid --${k}: ${v}`);
}
if (connections + slow > 5000) throw new RangeError("Invalid flood: at most 5,000 connections");

const enc = new TextEncoder();
const request = () => {
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  return enc.encode(
    `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
};

/** What the host answered each flood connection: its HTTP status, or how it ended. */
const answers: Record<string, number> = {};
const count = (k: string) => answers[k] = (answers[k] ?? 0) + 1;
/** Connections the host closed while we held them. */
let closedByHost = 0;
const open: Deno.TcpConn[] = [];
let stopping = false;

/** Reads until the host closes (or we do), counting the first answer under `prefix`. */
async function watch(conn: Deno.TcpConn, prefix: string): Promise<void> {
  const buf = new Uint8Array(4096);
  let first = true;
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      if (first) {
        first = false;
        const status = new TextDecoder().decode(buf.subarray(0, Math.min(n, 16))).split(" ")[1];
        count(`${prefix}${status ?? "garbled"}`);
      }
    }
  } catch {
    // Reset by the host, or closed by us.
  }
  if (!stopping) closedByHost++;
}

const t0 = performance.now();
// Open the flood in waves of 50 concurrent dials: a burst, but not one the kernel's backlog drops.
for (let i = 0; i < connections; i += 50) {
  const wave = Math.min(50, connections - i);
  await Promise.all(Array.from({ length: wave }, async () => {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      open.push(conn);
      await conn.write(request());
      watch(conn, "");
    } catch {
      count("connect_failed");
    }
  }));
}
const openedMs = performance.now() - t0;
// Slow-loris peers: one byte of the upgrade request every byteMs, never finished within the hold.
const trickles: Promise<void>[] = [];
let slowOpen = 0;
for (let i = 0; i < slow; i++) {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    open.push(conn);
    slowOpen++;
    watch(conn, "slow_");
    const bytes = request();
    trickles.push((async () => {
      for (let b = 0; b < bytes.length && !stopping; b++) {
        try {
          await conn.write(bytes.subarray(b, b + 1));
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, byteMs));
      }
    })());
  } catch {
    count("slow_connect_failed");
  }
}
console.log(
  JSON.stringify({ event: "flooding", opened_ms: Math.round(openedMs), open: open.length }),
);
await new Promise((r) => setTimeout(r, holdMs));
const heldAtEnd = open.length - closedByHost;
stopping = true;
for (const c of open) {
  try {
    c.close();
  } catch {
    // Already closed by the host.
  }
}
await Promise.all(trickles);
console.log(JSON.stringify({
  event: "flood_done",
  connections,
  slow: slowOpen,
  answers,
  closed_by_host: closedByHost,
  held_at_end: heldAtEnd,
}));
Deno.exit(0);
