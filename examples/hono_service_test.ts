import { deepEqual, equal, ok } from "@std/assert";
import { ActorSystem } from "../actors/runtime/system.ts";
import { ActorTransport } from "../transport/remote.ts";
import { createService, type Item } from "./hono_service.ts";

Deno.test("hono service: its own routes work and a peer asks its actor through /actors", async () => {
  const service = await createService({ secret: "svc-secret", run: "svc-run" });
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: () => {} },
    service.app.fetch,
  );
  const base = `http://127.0.0.1:${server.addr.port}`;
  const peer = new ActorSystem({ node: "peer" });
  const peerTransport = new ActorTransport(peer, {
    run: "svc-run",
    secret: "svc-secret",
    log: () => {},
  });
  try {
    const health = await fetch(`${base}/health`);
    equal(health.status, 200);
    deepEqual((await health.json()).ok, true);
    const items = await (await fetch(`${base}/items`)).json() as Item[];
    equal(items.length, 2);

    const client = peerTransport.connect(`ws://127.0.0.1:${server.addr.port}/actors`, {
      expectedPeer: "shop",
    });
    await client.ready();
    const inventory = peer.ref("shop/inventory");
    deepEqual(await inventory.ask({ op: "add", name: "checkpoints" }), {
      id: 3,
      name: "checkpoints",
    });
    deepEqual(await inventory.ask({ op: "add", name: "" }), {
      error: "Cannot add item: name must be a non-empty string",
    });
    const posted = await fetch(`${base}/items`, {
      method: "POST",
      body: JSON.stringify({ name: "eval runs" }),
    });
    equal(posted.status, 201);
    deepEqual(await posted.json(), { id: 4, name: "eval runs" });

    // The HTTP route sees what the remote peer added, through the same actor.
    const after = await (await fetch(`${base}/items`)).json() as Item[];
    deepEqual(after.map((i) => i.name), ["GPU hours", "tokens", "checkpoints", "eval runs"]);
    const status = await (await fetch(`${base}/health`)).json();
    deepEqual(status.peers, ["peer"]);

    // A plain HTTP GET on the transport route is not a WebSocket upgrade.
    const notWs = await fetch(`${base}/actors`);
    ok(notWs.status >= 400);
    await notWs.body?.cancel();
  } finally {
    await peerTransport.close();
    await peer.shutdown();
    await service.close();
    await server.shutdown();
  }
});
