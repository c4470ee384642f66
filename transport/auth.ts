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
 * @module
 */

/** Close code for a failed handshake. */
export const AUTH_FAILED_CODE = 4401;
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
