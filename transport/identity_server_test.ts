/**
 * Node identities and TLS over real WebSockets in one process: a keyed
 * client joins a keyed server, a key off the allow-list and a node id not
 * derived from its key are refused with their close codes, a message that
 * speaks for another node is refused as an impersonation, and `wss://` works
 * with the self-signed certificate trusted and is refused without it.
 */
import { deepEqual, equal, ok, rejects } from "@std/assert";
import { ActorSystem } from "../actors/runtime/system.ts";
import { NOT_ADMITTED_CODE } from "./auth.ts";
import { TransportClient } from "./client.ts";
import { AuthenticationError } from "./errors.ts";
import { derivedNodeId, generateIdentity, type NodeIdentity } from "./identity.ts";
import { ActorTransport } from "./remote.ts";
import { serve, type ServeOptions } from "./server.ts";
import { selfSignedCert } from "../tests/_tls.ts";

const RUN = "id-run";

async function keyed(label: string): Promise<{ identity: NodeIdentity; nodeId: string }> {
  const identity = await generateIdentity();
  return { identity, nodeId: derivedNodeId(label, identity.fingerprint) };
}

async function hub(options: Partial<ServeOptions>) {
  return await serve({
    nodeId: "hub",
    run: RUN,
    identity: (await keyed("hub")).identity,
    log: () => {},
    onMessage: () => "ok",
    ...options,
  });
}

Deno.test("identity over sockets: a listed key joins and each side knows the other's fingerprint", async () => {
  const peer = await keyed("trainer");
  const served = await hub({ allow: new Set([peer.identity.fingerprint]) });
  const c = new TransportClient(served.url, { run: RUN, ...peer, log: () => {} });
  try {
    equal(await c.ask("hub/x", 1), "ok");
    const channel = await c.ready();
    ok(/^[0-9a-f]{64}$/.test(channel.peerFingerprint));
    equal(served.server.peer(peer.nodeId)?.peerFingerprint, peer.identity.fingerprint);
  } finally {
    await c.close();
    await served.shutdown();
  }
});

Deno.test("identity over sockets: a client that pins the server's key refuses another key", async () => {
  const hubId = await keyed("hub");
  const served = await hub({ secret: "token", identity: hubId.identity });
  const options = { run: RUN, secret: "token", log: () => {} };
  const pinned = new TransportClient(served.url, {
    ...options,
    ...await keyed("trainer"),
    expectedKey: hubId.identity.fingerprint.slice(0, 16),
  });
  const other = (await generateIdentity()).fingerprint;
  const wrong = new TransportClient(served.url, {
    ...options,
    ...await keyed("trainer"),
    expectedKey: other,
  });
  try {
    equal(await pinned.ask("hub/x", 1), "ok");
    await rejects(
      () => wrong.ready(),
      (e: unknown) =>
        e instanceof AuthenticationError &&
        e.message.includes(
          `Host key ${hubId.identity.fingerprint.slice(0, 16)} is not the expected ${
            other.slice(0, 16)
          }`,
        ),
    );
  } finally {
    await pinned.close();
    await wrong.close();
    await served.shutdown();
  }
});

Deno.test("identity over sockets: a key off the allow-list is closed with 4403 and told why", async () => {
  const listed = await keyed("trainer");
  const stranger = await keyed("trainer");
  const served = await hub({ allow: new Set([listed.identity.fingerprint]) });
  const c = new TransportClient(served.url, { run: RUN, ...stranger, log: () => {} });
  try {
    await rejects(
      () => c.ready(),
      (e: unknown) =>
        e instanceof AuthenticationError &&
        /Not admitted: key [0-9a-f]{16} is not on the run's allow-list \(4403\)/.test(e.message),
    );
    equal((await c.closed).code, NOT_ADMITTED_CODE);
    equal(served.server.peers.size, 0);
  } finally {
    await c.close();
    await served.shutdown();
  }
});

Deno.test("identity over sockets: a node id not derived from the signing key is refused", async () => {
  const victim = await keyed("trainer");
  const thief = await generateIdentity();
  const logs: string[] = [];
  const served = await hub({ secret: "token", log: (_l, m) => logs.push(m) });
  const c = new TransportClient(served.url, {
    run: RUN,
    nodeId: victim.nodeId,
    identity: thief,
    secret: "token",
    log: () => {},
  });
  try {
    await rejects(
      () => c.ready(),
      (e: unknown) =>
        e instanceof AuthenticationError && /not derived from its key/.test(e.message),
    );
    ok(logs.some((l) => l.includes(`"${victim.nodeId}"`) && l.includes("impersonation")), logs[0]);
  } finally {
    await c.close();
    await served.shutdown();
  }
});

Deno.test("identity over sockets: a message or reply speaking for another node is refused as impersonation", async () => {
  const hubSys = new ActorSystem({ node: "hub" });
  const got: unknown[] = [];
  await hubSys.spawn({ receive: (m: unknown) => (got.push(m), "taken") }, { name: "agg" });
  const logs: string[] = [];
  const claims = (p: unknown) => {
    const m = p as { trainer?: unknown; keeper?: unknown };
    const who = m?.trainer ?? m?.keeper;
    return typeof who === "string" ? [who] : [];
  };
  const hubT = new ActorTransport(hubSys, {
    run: RUN,
    identity: (await keyed("hub")).identity,
    secret: "token",
    claims,
    log: (_l, m) => logs.push(m),
  });
  const listener = await hubT.listen({ port: 0 });
  const me = await keyed("trainer");
  const edge = new ActorSystem({ node: me.nodeId });
  const edgeLogs: string[] = [];
  const edgeT = new ActorTransport(edge, {
    run: RUN,
    identity: me.identity,
    secret: "token",
    log: (_l, m) => edgeLogs.push(m),
  });
  try {
    await edgeT.connect(listener.url, { expectedPeer: "hub" }).ready();
    const agg = edge.ref("hub/agg");
    equal(await agg.ask({ type: "contribution", trainer: `${me.nodeId}/node/trainer` }), "taken");
    await rejects(
      () => agg.ask({ type: "contribution", trainer: "trainer-0123456789abcdef/node/trainer" }),
      /contribution from node "trainer-[0-9a-f]{16}" speaks for "trainer-0123456789abcdef\/node\/trainer" of another node \(impersonation\)/,
    );
    agg.tell({ type: "contribution", trainer: "host/run/trainers/0" });
    equal(await agg.ask({ type: "contribution", trainer: `${me.nodeId}/node/trainer` }), "taken");
    deepEqual(got.length, 2, "only the contributions in the sender's own name arrived");
    ok(logs.some((l) => /Refused contribution .*"host\/run\/trainers\/0".*impersonation/.test(l)));
    equal(hubT.peerFingerprint(me.nodeId), me.identity.fingerprint);
    // A reply is bound the same way: one that speaks for another node's keeper fails the ask.
    await edge.spawn({ receive: (keeper: string) => ({ type: "keeper_missing", keeper }) }, {
      name: "keeper",
    });
    const keeper = hubSys.ref(`${me.nodeId}/keeper`);
    const own = `${me.nodeId}/keeper`;
    deepEqual(await keeper.ask(own), { type: "keeper_missing", keeper: own });
    await rejects(
      () => keeper.ask("host/run/keepers/0", { timeoutMs: 10_000 }),
      /Refused keeper_missing from node "trainer-[0-9a-f]{16}" speaks for "host\/run\/keepers\/0"/,
    );
  } finally {
    await edgeT.close();
    await hubT.close();
    await listener.shutdown();
    await edge.shutdown();
    await hubSys.shutdown();
  }
});

Deno.test("TLS: wss:// works with the self-signed certificate trusted, and is refused without it", async () => {
  const dir = await Deno.makeTempDir();
  const good = await selfSignedCert(dir, "host");
  const other = await selfSignedCert(dir, "other");
  const served = await hub({ secret: "token", tls: { cert: good.cert, key: good.key } });
  const peer = await keyed("trainer");
  const options = { run: RUN, ...peer, secret: "token", log: () => {}, maxAttempts: 1 };
  const trusted = new TransportClient(served.url, { ...options, caCerts: [good.cert] });
  const wrongCa = new TransportClient(served.url, { ...options, caCerts: [other.cert] });
  const noCa = new TransportClient(served.url, options);
  try {
    ok(served.url.startsWith("wss://"), served.url);
    equal(await trusted.ask("hub/x", 1), "ok");
    for (const c of [wrongCa, noCa]) {
      await rejects(
        () => c.ready(),
        (e: unknown) =>
          e instanceof AuthenticationError &&
          /TLS certificate not trusted \(invalid peer certificate: \w+\)/.test(e.message),
      );
    }
  } finally {
    await trusted.close();
    await wrongCa.close();
    await noCa.close();
    await served.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
