/**
 * The steps of a channel's handshake, apart from the socket: what each side
 * sends (challenge, auth, welcome) and what it checks in the other's answer.
 * The channel (`_channel.ts`) drives these on its state machine; tests call
 * them directly.
 *
 * A run admits peers by the run secret (the join token: an HMAC over the
 * other side's nonce), by node key (an Ed25519 signature over the whole
 * transcript, see `auth.ts`), or both. A server with a key of its own asks
 * every client for a key, checks that the client's node id is derived from
 * it (`identity.ts`) and, with an allow-list, that the key is on the list.
 *
 * @module
 */
import {
  AUTH_FAILED_CODE,
  NOT_ADMITTED_CODE,
  prove,
  signTranscript,
  type Transcript,
  verifyProof,
  verifyTranscript,
} from "./auth.ts";
import {
  fingerprintOf,
  ID_FINGERPRINT_CHARS,
  isDerivedNodeId,
  type NodeIdentity,
} from "./identity.ts";

/** What one side brings to the handshake. */
export interface HandshakeSide {
  /** This node's id. */
  nodeId: string;
  /** The run id. */
  run: string;
  /** HMAC key of the run secret, when the run has one. */
  secretKey?: CryptoKey;
  /** This node's key pair, when it has one. */
  identity?: NodeIdentity;
  /** Server side: the fingerprints admitted; every key when absent. */
  allow?: ReadonlySet<string>;
}

/** The server's challenge. */
export interface ChallengePayload {
  /** The server's fresh nonce. */
  nonce: Uint8Array;
  /** The server's public key, when it has one. */
  key?: Uint8Array;
  /** True when the server admits only clients that sign with a key. */
  keys?: boolean;
}

/** The client's answer to a challenge. */
export interface AuthPayload {
  /** The client's fresh nonce. */
  nonce: Uint8Array;
  /** Proof of the run secret. */
  mac?: Uint8Array;
  /** The client's public key. */
  key?: Uint8Array;
  /** The client's signature over the transcript. */
  sig?: Uint8Array;
}

/** The server's answer to a good auth. */
export interface WelcomePayload {
  /** Proof of the run secret. */
  mac?: Uint8Array;
  /** The server's signature over the transcript. */
  sig?: Uint8Array;
}

/** A refused handshake: the close code, the reason sent to the peer, and the log line. */
export interface Refusal {
  /** {@linkcode AUTH_FAILED_CODE} or {@linkcode NOT_ADMITTED_CODE}. */
  code: number;
  /** Close reason (short; the peer sees it). */
  reason: string;
  /** What the log says. */
  detail: string;
}

/** The outcome of checking a client's auth on the server. */
export type AuthCheck =
  | { ok: true; fingerprint: string; welcome: WelcomePayload }
  | { ok: false; refusal: Refusal };

const EMPTY = new Uint8Array(0);

function refuse(detail: string, reason = "Authentication failed", code = AUTH_FAILED_CODE) {
  return { ok: false as const, refusal: { code, reason, detail } };
}

/** Server: the challenge for a new connection. */
export function challengePayload(side: HandshakeSide, nonce: Uint8Array): ChallengePayload {
  if (!side.identity) return { nonce };
  return { nonce, key: side.identity.publicKey, keys: true };
}

function transcript(
  role: "client" | "server",
  run: string,
  ids: { client: string; server: string },
  nonces: { server: Uint8Array; client: Uint8Array },
  keys: { client?: Uint8Array; server?: Uint8Array },
): Transcript {
  return {
    role,
    run,
    serverNonce: nonces.server,
    clientNonce: nonces.client,
    clientId: ids.client,
    clientKey: keys.client ?? EMPTY,
    serverId: ids.server,
    serverKey: keys.server ?? EMPTY,
  };
}

/**
 * What one side sends to prove itself: a MAC of the run secret over the other
 * side's nonce (with a secret) and a signature over the transcript (with a key).
 */
async function proofs(
  side: HandshakeSide,
  role: "client" | "server",
  otherNonce: Uint8Array,
  t: Transcript,
): Promise<{ mac?: Uint8Array; sig?: Uint8Array }> {
  const out: { mac?: Uint8Array; sig?: Uint8Array } = {};
  if (side.secretKey) {
    const input = { role, nonce: otherNonce, peerId: side.nodeId, run: side.run };
    out.mac = await prove(side.secretKey, input);
  }
  if (side.identity) out.sig = await signTranscript(side.identity.privateKey, t);
  return out;
}

/** Whether `mac` proves the run secret: made by `prover` in `role` over `nonce`. */
async function macProven(
  side: HandshakeSide,
  role: "client" | "server",
  nonce: Uint8Array,
  prover: string,
  mac: Uint8Array | undefined,
): Promise<boolean> {
  if (!mac || !side.secretKey) return false;
  return await verifyProof(side.secretKey, mac, { role, nonce, peerId: prover, run: side.run });
}

/** The transcript as the client knows it (its own side, and the challenge of `serverId`). */
function clientTranscript(
  role: "client" | "server",
  side: HandshakeSide,
  serverId: string,
  challenge: ChallengePayload,
  clientNonce: Uint8Array,
): Transcript {
  return transcript(
    role,
    side.run,
    { client: side.nodeId, server: serverId },
    { server: challenge.nonce, client: clientNonce },
    { client: side.identity?.publicKey, server: challenge.key },
  );
}

/** Client: the answer to the challenge of server `serverId`. */
export async function authPayload(
  side: HandshakeSide,
  serverId: string,
  challenge: ChallengePayload,
  nonce: Uint8Array,
): Promise<AuthPayload> {
  const t = clientTranscript("client", side, serverId, challenge, nonce);
  const proof = await proofs(side, "client", challenge.nonce, t);
  return { nonce, ...proof, ...(side.identity ? { key: side.identity.publicKey } : {}) };
}

/**
 * Server: checks the auth of client `clientId` against the challenge nonce
 * it was sent; on success, the client's key fingerprint ("" without a key)
 * and the welcome to send.
 */
export async function checkAuth(
  side: HandshakeSide,
  clientId: string,
  serverNonce: Uint8Array,
  auth: AuthPayload,
): Promise<AuthCheck> {
  if (side.secretKey) {
    if (!(await macProven(side, "client", serverNonce, clientId, auth.mac))) {
      return refuse(auth.mac ? "bad MAC" : "no proof of the run secret");
    }
  }
  let fingerprint = "";
  if (auth.key && auth.sig) {
    const t = transcript(
      "client",
      side.run,
      { client: clientId, server: side.nodeId },
      { server: serverNonce, client: auth.nonce },
      { client: auth.key, server: side.identity?.publicKey },
    );
    if (!(await verifyTranscript(auth.key, auth.sig, t))) return refuse("bad signature");
    fingerprint = await fingerprintOf(auth.key);
    if (!isDerivedNodeId(clientId, fingerprint)) {
      const short = fingerprint.slice(0, ID_FINGERPRINT_CHARS);
      return refuse(
        `node id "${clientId}" is not derived from its key ${short} (impersonation)`,
        `Node id is not derived from its key ${short}`,
      );
    }
  } else if (side.identity || side.allow) {
    return refuse("no node key: this run admits only nodes that sign with a key");
  }
  if (side.allow && !side.allow.has(fingerprint)) {
    const short = fingerprint.slice(0, ID_FINGERPRINT_CHARS);
    return refuse(
      `key ${fingerprint} is not on the run's allow-list`,
      `Not admitted: key ${short} is not on the run's allow-list`,
      NOT_ADMITTED_CODE,
    );
  }
  const welcome: WelcomePayload = await proofs(
    side,
    "server",
    auth.nonce,
    transcript(
      "server",
      side.run,
      { client: clientId, server: side.nodeId },
      { server: serverNonce, client: auth.nonce },
      { client: auth.key, server: side.identity?.publicKey },
    ),
  );
  return { ok: true, fingerprint, welcome };
}

/** The outcome of checking a server's welcome on the client. */
export type WelcomeCheck = { ok: true; fingerprint: string } | { ok: false; why: string };

/**
 * Client: checks the welcome of server `serverId`: the server must prove
 * what it claims (the run secret, the key of its challenge). On success, the
 * server's key fingerprint ("" when it has no key).
 */
export async function checkWelcome(
  side: HandshakeSide,
  serverId: string,
  challenge: ChallengePayload,
  clientNonce: Uint8Array,
  welcome: WelcomePayload,
): Promise<WelcomeCheck> {
  if (side.secretKey) {
    if (!(await macProven(side, "server", clientNonce, serverId, welcome.mac))) {
      return { ok: false, why: "server did not prove the run secret" };
    }
  }
  if (challenge.key) {
    const t = clientTranscript("server", side, serverId, challenge, clientNonce);
    if (!welcome.sig || !(await verifyTranscript(challenge.key, welcome.sig, t))) {
      return { ok: false, why: "server did not prove its key" };
    }
    return { ok: true, fingerprint: await fingerprintOf(challenge.key) };
  }
  return { ok: true, fingerprint: "" };
}
