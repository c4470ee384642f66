/**
 * Run-secret authentication: an HMAC-SHA256 challenge-response, mutual.
 *
 * 1. The server sends `challenge` with a fresh 32-byte nonce.
 * 2. The client answers `auth` with its id (as `from`), its own nonce, and
 *    `HMAC(secret, server_nonce || "client" || peer_id || run)`.
 * 3. The server checks the MAC (in constant time), then answers `welcome`
 *    with `HMAC(secret, client_nonce || "server" || server_id || run)`,
 *    which the client checks in turn.
 *
 * The role label stops a MAC from one direction being replayed in the other.
 * Nothing a peer sends is delivered before its MAC has been checked.
 *
 * With node identities (transport/identity.ts) each side also signs the
 * handshake's transcript with its Ed25519 key: the run, both nonces, both
 * node ids and both public keys ({@linkcode Transcript}). The MAC proves the
 * run's join token (the secret); the signature proves the key, and with it
 * the node id derived from the key. A signature made for one connection does
 * not verify on another (fresh nonces), for another run, or for a server with
 * another key.
 *
 * @module
 */

/** Close code for a failed handshake. */
export const AUTH_FAILED_CODE = 4401;
/** Close code for a peer whose key the run does not admit (not on its allow-list). */
export const NOT_ADMITTED_CODE = 4403;
/**
 * Close code a client reports when the server's TLS certificate was not
 * trusted (1015, the WebSocket code for a failed TLS handshake).
 */
export const TLS_FAILED_CODE = 1015;
/** Close code for a handshake that did not finish in time. */
export const AUTH_TIMEOUT_CODE = 4408;
/** Length of nonces and MACs in bytes. */
export const NONCE_BYTES = 32;

/** Which side computes a proof. */
export type Role = "client" | "server";

/** What a proof binds together. */
export interface ProofInput {
  /** The side proving. */
  role: Role;
  /** The other side's nonce. */
  nonce: Uint8Array;
  /** The prover's node id. */
  peerId: string;
  /** The run id. */
  run: string;
}

/**
 * Imports a run secret as an HMAC-SHA256 key. Throws a `RangeError` for an
 * empty secret.
 *
 * @example
 * ```ts
 * import { importSecret } from "./auth.ts";
 * const key = await importSecret("correct horse battery staple");
 * ```
 */
export async function importSecret(secret: string | Uint8Array): Promise<CryptoKey> {
  const raw = typeof secret === "string" ? new TextEncoder().encode(secret) : secret;
  if (raw.byteLength === 0) throw new RangeError("Invalid run secret: empty");
  return await crypto.subtle.importKey(
    "raw",
    raw as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
}

/** A fresh random nonce. */
export function randomNonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
}

function message(input: ProofInput): Uint8Array<ArrayBuffer> {
  const text = new TextEncoder().encode(
    `\0decentra-transport-v1\0${input.role}\0${input.peerId}\0${input.run}`,
  );
  const out = new Uint8Array(input.nonce.byteLength + text.byteLength);
  out.set(input.nonce, 0);
  out.set(text, input.nonce.byteLength);
  return out;
}

/**
 * Computes the MAC a side sends to prove it holds the run secret.
 *
 * @example Prove and verify
 * ```ts
 * import { importSecret, prove, randomNonce, verifyProof } from "./auth.ts";
 * import assert from "node:assert/strict";
 * const key = await importSecret("s3cret");
 * const input = { role: "client" as const, nonce: randomNonce(), peerId: "a", run: "r1" };
 * const mac = await prove(key, input);
 * assert.ok(await verifyProof(key, mac, input));
 * assert.ok(!(await verifyProof(key, mac, { ...input, peerId: "b" })));
 * ```
 */
export async function prove(key: CryptoKey, input: ProofInput): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, message(input)));
}

/** Checks a MAC from {@linkcode prove} in constant time. */
export async function verifyProof(
  key: CryptoKey,
  mac: Uint8Array,
  input: ProofInput,
): Promise<boolean> {
  if (mac.byteLength !== NONCE_BYTES) return false;
  return await crypto.subtle.verify("HMAC", key, mac as Uint8Array<ArrayBuffer>, message(input));
}

/** What a handshake signature binds together: the whole handshake of one connection. */
export interface Transcript {
  /** The side signing. */
  role: Role;
  /** The run id. */
  run: string;
  /** The server's challenge nonce. */
  serverNonce: Uint8Array;
  /** The client's nonce. */
  clientNonce: Uint8Array;
  /** The client's node id. */
  clientId: string;
  /** The client's raw public key. */
  clientKey: Uint8Array;
  /** The server's node id. */
  serverId: string;
  /** The server's raw public key (empty when the server has none). */
  serverKey: Uint8Array;
}

function transcriptBytes(t: Transcript): Uint8Array<ArrayBuffer> {
  const enc = new TextEncoder();
  const parts = [
    enc.encode(`\0decentra-identity-v1\0${t.role}\0${t.run}\0${t.clientId}\0${t.serverId}\0`),
    t.serverNonce,
    t.clientNonce,
    t.clientKey,
    t.serverKey,
  ];
  // Length-prefix every part so that no two transcripts share their bytes.
  const out = new Uint8Array(parts.reduce((n, p) => n + 4 + p.byteLength, 0));
  const view = new DataView(out.buffer);
  let at = 0;
  for (const p of parts) {
    view.setUint32(at, p.byteLength);
    out.set(p, at + 4);
    at += 4 + p.byteLength;
  }
  return out;
}

/**
 * Signs a handshake transcript with this node's Ed25519 key.
 *
 * @example Sign and verify
 * ```ts
 * import { randomNonce, signTranscript, verifyTranscript } from "./auth.ts";
 * import { generateIdentity } from "./identity.ts";
 * import assert from "node:assert/strict";
 * const me = await generateIdentity();
 * const t = {
 *   role: "client" as const, run: "r1", serverNonce: randomNonce(), clientNonce: randomNonce(),
 *   clientId: "a", clientKey: me.publicKey, serverId: "host", serverKey: new Uint8Array(0),
 * };
 * const sig = await signTranscript(me.privateKey, t);
 * assert.ok(await verifyTranscript(me.publicKey, sig, t));
 * assert.ok(!(await verifyTranscript(me.publicKey, sig, { ...t, run: "r2" })));
 * ```
 */
export async function signTranscript(privateKey: CryptoKey, t: Transcript): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("Ed25519", privateKey, transcriptBytes(t)));
}

/** Checks a signature from {@linkcode signTranscript}; false for a malformed key or signature. */
export async function verifyTranscript(
  publicKey: Uint8Array,
  signature: Uint8Array,
  t: Transcript,
): Promise<boolean> {
  if (publicKey.byteLength !== 32 || signature.byteLength !== 64) return false;
  try {
    const key = await crypto.subtle.importKey(
      "raw",
      publicKey as Uint8Array<ArrayBuffer>,
      { name: "Ed25519" },
      false,
      ["verify"],
    );
    return await crypto.subtle.verify(
      "Ed25519",
      key,
      signature as Uint8Array<ArrayBuffer>,
      transcriptBytes(t),
    );
  } catch {
    return false;
  }
}
