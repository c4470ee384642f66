import { deepEqual, equal, ok } from "@std/assert";
import { ActorSystem } from "./runtime/system.ts";
import { ActorTransport } from "../transport/remote.ts";
import { buildLayout } from "../kernels/layout.ts";
import type { GptConfig } from "../kernels/config.ts";
import { CheckpointStore } from "../checkpoint/store.ts";
import { keeperBehavior, type KeeperEvent } from "./keeper.ts";
import type { KeeperPieceMsg } from "./keeper_protocol.ts";
import { fetchRound } from "./keeper_fetch.ts";

const CONFIG: GptConfig = { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 8, vocabSize: 64 };
const N = buildLayout(CONFIG).totalLength;

function theta(round: number): Float32Array {
  return new Float32Array(N).map((_, i) => Math.sin(i * 0.37 + round) * 0.02);
}

/**
 * A host with a keeper (writer and serving threads) behind a real transport,
 * holding round 1 on disk from before it started, and a joiner node dialled
 * to it. The host also runs `proxy`, a keeper front whose manifest replies
 * can be rewritten.
 */
async function rig(rewrite?: (reply: Record<string, unknown>) => Record<string, unknown>) {
  const dir = await Deno.makeTempDir({ prefix: "ckpt_direct_" });
  await new CheckpointStore(dir).commit({
    run: "r",
    round: 1,
    config: CONFIG,
    params: theta(1),
    momentum: new Float32Array(N),
  });
  const events: KeeperEvent[] = [];
  const host = new ActorSystem({ node: "host" });
  await host.spawn(
    keeperBehavior({
      run: "r",
      id: "host/keeper",
      dir,
      config: CONFIG,
      writer: "worker",
      serve: { hostname: "127.0.0.1" },
      onEvent: (e) => events.push(e),
    }),
    { name: "keeper" },
  );
  await host.spawn({
    async receive(msg: { type: string }) {
      const reply = await host.ref("host/keeper").ask<Record<string, unknown>>(msg);
      return msg.type === "keeper_manifest" && rewrite ? rewrite(reply) : reply;
    },
  }, { name: "proxy" });
  const ht = new ActorTransport(host, { run: "r", secret: "s", log: () => {} });
  const listener = await ht.listen({ port: 0, hostname: "127.0.0.1" });
  const joiner = new ActorSystem({ node: "joiner" });
  const jt = new ActorTransport(joiner, { run: "r", secret: "s", log: () => {} });
  await jt.connect(listener.url, { expectedPeer: "host" }).ready();
  return {
    dir,
    host,
    joiner,
    events,
    async cleanup() {
      await jt.close();
      await ht.close();
      await listener.shutdown();
      await joiner.shutdown();
      await host.shutdown();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

async function fileBytes(dir: string, round: number): Promise<Map<string, Uint8Array>> {
  const p = await new CheckpointStore(dir).readVerified(round);
  return p.files;
}

Deno.test("direct: a joiner takes a round from the keeper's serving thread, on disk or just written, bit for bit", async () => {
  const r = await rig();
  try {
    // Round 1: on disk from before the keeper started (the serving thread reads and verifies it).
    const disk = await fetchRound(r.joiner, ["host/keeper"], { run: "r", round: 1 });
    const want1 = await fileBytes(r.dir, 1);
    for (const name of ["model.safetensors", "state.safetensors"]) {
      deepEqual(disk.files.get(name), want1.get(name), `${name} of round 1`);
    }
    equal(disk.direct, disk.bytes, "every byte came over the direct path");
    equal(disk.resumed, 0);
    // Round 2: written by the keeper's writer thread (files in shared memory).
    const piece: KeeperPieceMsg = {
      type: "keeper_piece",
      run: "r",
      round: 2,
      start: 0,
      total: N,
      params: theta(2),
      momentum: new Float32Array(N).fill(0.5),
      config: CONFIG,
    };
    r.host.ref("host/keeper").tell(piece);
    for (let i = 0; i < 200 && !r.events.some((e) => e.type === "written"); i++) {
      await new Promise((res) => setTimeout(res, 20));
    }
    const [written] = r.events.flatMap((e) => e.type === "written" && e.round === 2 ? [e] : []);
    if (!written) throw new Error("round 2 was not written");
    // The writer thread reports how much of the write yielded the CPU (none needed is 0).
    ok(
      typeof written.yielded_ms === "number" && written.yielded_ms >= 0 &&
        written.yielded_ms <= written.ms,
      JSON.stringify(written),
    );
    const fresh = await fetchRound(r.joiner, ["host/keeper"], { run: "r", paramsOnly: true });
    equal(fresh.round, 2);
    deepEqual(
      fresh.files.get("model.safetensors"),
      (await fileBytes(r.dir, 2)).get("model.safetensors"),
    );
    equal(fresh.direct, fresh.bytes);
    // Without the direct path the same bytes come over the actor protocol.
    const actor = await fetchRound(r.joiner, ["host/keeper"], {
      run: "r",
      round: 2,
      direct: false,
    });
    equal(actor.direct, 0);
    deepEqual(actor.files.get("model.safetensors"), fresh.files.get("model.safetensors"));
  } finally {
    await r.cleanup();
  }
});

Deno.test("direct: a rejected ticket falls back to the actor protocol and still verifies", async () => {
  const r = await rig((reply) => ({
    ...reply,
    direct: { ...(reply.direct as Record<string, unknown>), ticket: "forged" },
  }));
  try {
    const got = await fetchRound(r.joiner, ["host/proxy"], { run: "r", round: 1, backoffMs: 1 });
    equal(got.direct, 0);
    ok(got.resumed > 0, "the refused direct request counts as a resumed failure");
    deepEqual(
      got.files.get("model.safetensors"),
      (await fileBytes(r.dir, 1)).get("model.safetensors"),
    );
  } finally {
    await r.cleanup();
  }
});

Deno.test("direct: a stream broken midway resumes at the offset reached, no byte taken twice", async () => {
  // A relay in front of the serving thread that passes the header and two messages, then drops
  // the joiner's connection: a link that breaks in the middle of a transfer.
  let real = "";
  const relay = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (ev) => {
      const up = new WebSocket(real);
      up.binaryType = "arraybuffer";
      let binary = 0;
      up.onopen = () => up.send(ev.data);
      up.onmessage = (m) => {
        if (typeof m.data !== "string" && ++binary > 2) {
          up.close();
          socket.close(1011, "link broke");
          return;
        }
        socket.send(m.data);
      };
    };
    return response;
  });
  const r = await rig((reply) => {
    const d = reply.direct as { port: number; ticket: string };
    real = `ws://127.0.0.1:${d.port}/`;
    return { ...reply, direct: { ...d, port: relay.addr.port } };
  });
  try {
    // A model file of several direct messages (1 MiB each).
    const big: GptConfig = { nLayer: 2, nHead: 4, nEmbd: 256, blockSize: 16, vocabSize: 256 };
    const n = buildLayout(big).totalLength;
    ok(n * 4 > 3 << 20, "the model file spans more than two direct messages");
    await new CheckpointStore(r.dir).commit({
      run: "r",
      round: 3,
      config: big,
      params: new Float32Array(n).map((_, i) => Math.cos(i) * 0.01),
      momentum: new Float32Array(n),
    });
    const got = await fetchRound(r.joiner, ["host/proxy"], {
      run: "r",
      round: 3,
      paramsOnly: true,
      backoffMs: 1,
    });
    const size = got.manifest.files["model.safetensors"].size;
    // Each direct try takes two messages before the link breaks; the rest comes over the actor
    // protocol, each time from the offset reached.
    equal(got.direct % (2 << 20), 0, `direct bytes ${got.direct}`);
    ok(got.direct >= 2 << 20 && got.direct < size, `direct bytes ${got.direct} of ${size}`);
    equal(got.bytes, size, "no byte was taken twice");
    ok(got.resumed >= 1);
    deepEqual(
      got.files.get("model.safetensors"),
      (await fileBytes(r.dir, 3)).get("model.safetensors"),
    );
  } finally {
    await r.cleanup();
    await relay.shutdown();
  }
});
