import { deepEqual, equal, ok } from "@std/assert";
import { AUTH_FAILED_CODE, importSecret, NOT_ADMITTED_CODE, randomNonce } from "./auth.ts";
import {
  type AuthCheck,
  authPayload,
  challengePayload,
  checkAuth,
  checkWelcome,
  type HandshakeSide,
  type Refusal,
} from "./_handshake.ts";
import { derivedNodeId, generateIdentity, type NodeIdentity } from "./identity.ts";

const RUN = "r1";

/** Runs the three steps between a server and a client side; returns the server's verdict. */
async function shake(server: HandshakeSide, client: HandshakeSide) {
  const serverNonce = randomNonce();
  const clientNonce = randomNonce();
  const challenge = challengePayload(server, serverNonce);
  const auth = await authPayload(client, server.nodeId, challenge, clientNonce);
  const verdict = await checkAuth(server, client.nodeId, serverNonce, auth);
  const welcome = verdict.ok
    ? await checkWelcome(client, server.nodeId, challenge, clientNonce, verdict.welcome)
    : undefined;
  return { verdict, welcome, challenge, auth, serverNonce, clientNonce };
}

/** The refusal of a verdict that must be a refusal. */
function refusalOf(verdict: AuthCheck): Refusal {
  if (verdict.ok) throw new Error("expected a refusal, the peer was admitted");
  return verdict.refusal;
}

async function keyed(label: string): Promise<{ identity: NodeIdentity; nodeId: string }> {
  const identity = await generateIdentity();
  return { identity, nodeId: derivedNodeId(label, identity.fingerprint) };
}

Deno.test("handshake: keyed client and server admit each other and learn each other's key", async () => {
  const host = await keyed("host");
  const peer = await keyed("trainer");
  const { verdict, welcome } = await shake(
    { run: RUN, nodeId: "host", identity: host.identity },
    { run: RUN, ...peer },
  );
  equal(verdict.ok && verdict.fingerprint, peer.identity.fingerprint);
  deepEqual(welcome, { ok: true, fingerprint: host.identity.fingerprint });
});

Deno.test("handshake: a node id not derived from the signing key is refused as impersonation", async () => {
  const host = await keyed("host");
  const victim = await keyed("trainer");
  const thief = await generateIdentity();
  const { verdict } = await shake(
    { run: RUN, nodeId: "host", identity: host.identity },
    { run: RUN, nodeId: victim.nodeId, identity: thief },
  );
  const refusal = refusalOf(verdict);
  equal(refusal.code, AUTH_FAILED_CODE);
  ok(/impersonation/.test(refusal.detail), refusal.detail);
  ok(/not derived from its key/.test(refusal.reason), refusal.reason);
});

Deno.test("handshake: a signature is bound to the run, both nonces, both ids and the server key", async () => {
  const host = await keyed("host");
  const peer = await keyed("trainer");
  const server = { run: RUN, nodeId: "host", identity: host.identity };
  const s = await shake(server, { run: RUN, ...peer });
  ok(s.verdict.ok);
  // The same auth checked against another connection's nonce, another run or another server key.
  const again = await checkAuth(server, peer.nodeId, randomNonce(), s.auth);
  ok(!again.ok && again.refusal.detail === "bad signature");
  const otherRun = await checkAuth({ ...server, run: "r2" }, peer.nodeId, s.serverNonce, s.auth);
  ok(!otherRun.ok && otherRun.refusal.detail === "bad signature");
  const otherHost = await keyed("host");
  const relayed = await checkAuth(
    { ...server, identity: otherHost.identity },
    peer.nodeId,
    s.serverNonce,
    s.auth,
  );
  ok(!relayed.ok && relayed.refusal.detail === "bad signature");
  // A welcome signed for another client nonce does not convince the client.
  const forged = await checkWelcome(
    { run: RUN, ...peer },
    "host",
    s.challenge,
    randomNonce(),
    s.verdict.ok ? s.verdict.welcome : {},
  );
  deepEqual(forged, { ok: false, why: "server did not prove its key" });
});

Deno.test("handshake: the allow-list admits listed keys and refuses others with 4403", async () => {
  const host = await keyed("host");
  const listed = await keyed("trainer");
  const stranger = await keyed("trainer");
  const server = {
    run: RUN,
    nodeId: "host",
    identity: host.identity,
    allow: new Set([listed.identity.fingerprint]),
  };
  ok((await shake(server, { run: RUN, ...listed })).verdict.ok);
  const { verdict } = await shake(server, { run: RUN, ...stranger });
  const refusal = refusalOf(verdict);
  equal(refusal.code, NOT_ADMITTED_CODE);
  ok(/not on the run's allow-list/.test(refusal.reason), refusal.reason);
});

Deno.test("handshake: an open run needs the secret and a key; secret-only peers stay the weaker mode", async () => {
  const secretKey = await importSecret("join-token");
  const wrong = await importSecret("guess");
  const host = await keyed("host");
  const peer = await keyed("trainer");
  const open = { run: RUN, nodeId: "host", identity: host.identity, secretKey };
  ok((await shake(open, { run: RUN, ...peer, secretKey })).verdict.ok);
  const noToken = (await shake(open, { run: RUN, ...peer })).verdict;
  ok(!noToken.ok && noToken.refusal.detail === "no proof of the run secret");
  const badToken = (await shake(open, { run: RUN, ...peer, secretKey: wrong })).verdict;
  ok(!badToken.ok && badToken.refusal.detail === "bad MAC");
  const noKey = (await shake(open, { run: RUN, nodeId: "anyone", secretKey })).verdict;
  ok(!noKey.ok && /no node key/.test(noKey.refusal.detail));
  // A server without a key of its own admits by the secret alone, with self-claimed ids.
  const legacy = await shake({ run: RUN, nodeId: "host", secretKey }, {
    run: RUN,
    nodeId: "anyone",
    secretKey,
  });
  equal(legacy.verdict.ok && legacy.verdict.fingerprint, "");
  deepEqual(legacy.welcome, { ok: true, fingerprint: "" });
});
