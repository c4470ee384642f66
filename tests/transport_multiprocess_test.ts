/**
 * Multi-process transport suite: actors in separate OS processes talk over
 * real WebSockets. Slow-ish (spawns `deno` twice); run alone with
 * `deno test -A tests/transport_multiprocess_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";
import { ActorSystem } from "../actors/runtime/system.ts";
import { RemoteUnavailableError } from "../actors/runtime/ref.ts";
import { ActorTransport } from "../transport/remote.ts";

const RUN = "mp-run";
const SECRET = "mp-secret";
const FIXTURE = new URL("./fixtures/transport_node.ts", import.meta.url).pathname;

interface Child {
  process: Deno.ChildProcess;
  port: number;
}

async function spawnNode(nodeId: string, port: number): Promise<Child> {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", FIXTURE, nodeId, String(port), RUN, SECRET],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const deadline = Date.now() + 20_000;
  while (!/PORT (\d+)/.test(text)) {
    if (Date.now() > deadline) throw new Error(`Node ${nodeId} did not print its port: ${text}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`Node ${nodeId} exited before printing its port: ${text}`);
    text += value;
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  (async () => {
    try {
      while (!(await reader.read()).done) { /* discard */ }
    } catch { /* closed */ }
  })();
  return { process, port: Number(text.match(/PORT (\d+)/)![1]) };
}

async function kill(child: Child | undefined): Promise<void> {
  if (!child) return;
  try {
    child.process.kill("SIGKILL");
  } catch { /* already gone */ }
  await child.process.status;
}

async function sha256Hex(view: ArrayBufferView): Promise<string> {
  const bytes = new Uint8Array(view.buffer as ArrayBuffer, view.byteOffset, view.byteLength);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function until(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test({
  name: "multi-process: tells, asks, a 100 MiB tensor, SIGKILL with in-flight ask, reconnect",
  sanitizeOps: true,
  sanitizeResources: true,
  fn: async () => {
    let b: Child | undefined;
    let b2: Child | undefined;
    const a = new ActorSystem({ node: "a" });
    const transport = new ActorTransport(a, { run: RUN, secret: SECRET, log: () => {} });
    try {
      b = await spawnNode("b", 0);
      const url = `ws://127.0.0.1:${b.port}/`;
      const client = transport.connect(url, {
        expectedPeer: "b",
        seed: 7,
        backoffBaseMs: 50,
        backoffMaxMs: 400,
      });
      await client.ready();

      // Tells and asks across processes.
      const counter = a.ref("b/counter");
      for (let i = 0; i < 1000; i++) counter.tell(i);
      equal(await counter.ask("count"), 1000);
      deepEqual(await a.ref("b/echo").ask({ x: [1, "two"], f: new Float64Array([3.5]) }), {
        x: [1, "two"],
        f: new Float64Array([3.5]),
      });

      // 100 MiB crosses in chunks; the other process hashes what it got.
      const data = new Float32Array(25 * 1024 * 1024);
      for (let i = 0; i < data.length; i++) data[i] = (i % 65_521) * 0.25 - 1000;
      const expected = await sha256Hex(data);
      const framesBefore = client.channel!.stats.framesOut;
      const got = await a.ref("b/hash").ask({ data }, { timeoutMs: 40_000 });
      deepEqual(got, { type: "Float32Array", length: data.length, sha256: expected });
      ok(client.channel!.stats.framesOut - framesBefore >= 50, "sent as chunk frames");

      // SIGKILL the other node while an ask is in flight: the ask fails clearly.
      const inFlight = a.ref("b/slow").ask("never answered", { timeoutMs: 60_000 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      await new Promise((r) => setTimeout(r, 50));
      b.process.kill("SIGKILL");
      await b.process.status;
      const err = await inFlight;
      ok(err instanceof RemoteUnavailableError, `expected RemoteUnavailableError, got ${err}`);
      ok(
        /node b disconnected: connection closed/.test((err as Error).message),
        (err as Error).message,
      );
      equal(client.connections, 1);

      // Restart it on the same port: the client reconnects by itself.
      b2 = await spawnNode("b", b.port);
      await until(
        "the client to reconnect",
        () => client.connections === 2 && a.stats().remotes.includes("b"),
      );
      equal(await a.ref("b/echo").ask("back again"), "back again");
      equal(await a.ref("b/counter").ask("count"), 0, "a fresh process, fresh state");
    } finally {
      await transport.close();
      await a.shutdown();
      await kill(b);
      await kill(b2);
    }
  },
});
