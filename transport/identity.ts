/**
 * Node identities: an Ed25519 key pair per node, its fingerprint, the node
 * id derived from it, and the run's allow-list of keys.
 *
 * A node's id ends with the first {@linkcode ID_FINGERPRINT_CHARS} hex
 * characters of its key's fingerprint (`trainer-3f9a0c1d2b4e5f60`), so a
 * server that checks the signature of the handshake also knows that the id
 * is the signer's: no peer can claim another node's id without its private
 * key. The key lives in a PKCS#8 PEM file readable by its owner only (mode
 * 0600; transport/identity_file.ts), or, in a browser tab, in its storage.
 *
 * @module
 */

/** Hex characters of the fingerprint that a derived node id ends with (64 bits). */
export const ID_FINGERPRINT_CHARS = 16;

/** A node's key pair and what peers see of it. */
export interface NodeIdentity {
  /** Signs this node's side of the handshake. */
  privateKey: CryptoKey;
  /** The raw 32-byte Ed25519 public key, sent in the handshake. */
  publicKey: Uint8Array;
  /** Lower-case hex SHA-256 of {@linkcode NodeIdentity.publicKey}. */
  fingerprint: string;
}

const PEM_LABEL = "PRIVATE KEY";

/**
 * The fingerprint of a raw public key: lower-case hex SHA-256.
 *
 * @example
 * ```ts
 * import { fingerprintOf } from "./identity.ts";
 * import assert from "node:assert/strict";
 * assert.equal((await fingerprintOf(new Uint8Array(32))).length, 64);
 * ```
 */
export async function fingerprintOf(publicKey: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", publicKey as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fromPkcs8(pkcs8: Uint8Array): Promise<NodeIdentity> {
  const key = await crypto.subtle.importKey(
    "pkcs8",
    pkcs8 as Uint8Array<ArrayBuffer>,
    { name: "Ed25519" },
    true,
    ["sign"],
  );
  // WebCrypto cannot derive a public key from a private one; its JWK form carries both.
  const jwk = await crypto.subtle.exportKey("jwk", key);
  const publicKey = Uint8Array.from(
    atob(jwk.x!.replace(/-/g, "+").replace(/_/g, "/")),
    (c) => c.charCodeAt(0),
  );
  const privateKey = await crypto.subtle.importKey(
    "pkcs8",
    pkcs8 as Uint8Array<ArrayBuffer>,
    { name: "Ed25519" },
    false,
    ["sign"],
  );
  return { privateKey, publicKey, fingerprint: await fingerprintOf(publicKey) };
}

async function freshPkcs8(): Promise<Uint8Array> {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  return new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
}

/**
 * A fresh identity kept in memory only (a joiner with no key file: a new id
 * per process).
 *
 * @example
 * ```ts
 * import { generateIdentity } from "./identity.ts";
 * import assert from "node:assert/strict";
 * const id = await generateIdentity();
 * assert.equal(id.publicKey.byteLength, 32);
 * ```
 */
export async function generateIdentity(): Promise<NodeIdentity> {
  return await fromPkcs8(await freshPkcs8());
}

function toPem(der: Uint8Array): string {
  const b64 = btoa(String.fromCharCode(...der));
  const lines = b64.match(/.{1,64}/g)!.join("\n");
  return `-----BEGIN ${PEM_LABEL}-----\n${lines}\n-----END ${PEM_LABEL}-----\n`;
}

function fromPem(text: string, path: string): Uint8Array {
  const m = text.match(/-----BEGIN PRIVATE KEY-----([\s\S]*?)-----END PRIVATE KEY-----/);
  if (!m) throw new TypeError(`Invalid key file ${path}: expected a PKCS#8 PEM private key`);
  return Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

/**
 * A fresh Ed25519 private key as PKCS#8 PEM text (what a key file holds).
 *
 * @example
 * ```ts
 * import { freshKeyPem } from "./identity.ts";
 * console.log((await freshKeyPem()).startsWith("-----BEGIN PRIVATE KEY-----")); // true
 * ```
 */
export async function freshKeyPem(): Promise<string> {
  return toPem(await freshPkcs8());
}

/**
 * The identity of a PKCS#8 PEM Ed25519 key; `source` names where the text
 * came from in the error.
 *
 * @example
 * ```ts
 * import { freshKeyPem, identityFromPem } from "./identity.ts";
 * const id = await identityFromPem(await freshKeyPem(), "a fresh key");
 * console.log(id.fingerprint.length); // 64
 * ```
 *
 * @throws {TypeError} naming `source` when it holds no Ed25519 PKCS#8 key
 */
export async function identityFromPem(text: string, source: string): Promise<NodeIdentity> {
  try {
    return await fromPkcs8(fromPem(text, source));
  } catch (err) {
    if (err instanceof TypeError && err.message.startsWith("Invalid key file")) throw err;
    throw new TypeError(`Invalid key file ${source}: not an Ed25519 private key`);
  }
}

/**
 * The node id derived from a key: `<label>-<first 16 hex of the fingerprint>`.
 *
 * @example
 * ```ts
 * import { derivedNodeId } from "./identity.ts";
 * import assert from "node:assert/strict";
 * assert.equal(derivedNodeId("trainer", "3f9a0c1d2b4e5f60aa"), "trainer-3f9a0c1d2b4e5f60");
 * ```
 */
export function derivedNodeId(label: string, fingerprint: string): string {
  return `${label}-${fingerprint.slice(0, ID_FINGERPRINT_CHARS)}`;
}

/** Whether `nodeId` is derived from the key with `fingerprint` (see {@linkcode derivedNodeId}). */
export function isDerivedNodeId(nodeId: string, fingerprint: string): boolean {
  const suffix = fingerprint.slice(0, ID_FINGERPRINT_CHARS);
  return suffix.length === ID_FINGERPRINT_CHARS &&
    (nodeId === suffix || nodeId.endsWith(`-${suffix}`));
}

/**
 * Parses an allow-list: one key per line, as its 64-hex fingerprint or its
 * raw public key in base64 (`#` starts a comment). Returns the fingerprints.
 * Throws a `TypeError` naming the first bad line.
 *
 * @example
 * ```ts
 * import { parseAllowList } from "./identity.ts";
 * import assert from "node:assert/strict";
 * const fp = "ab".repeat(32);
 * assert.deepEqual([...await parseAllowList(`# trainers\n${fp}  # lab box\n`)], [fp]);
 * ```
 */
export async function parseAllowList(text: string, source = "allow-list"): Promise<Set<string>> {
  const out = new Set<string>();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const entry = lines[i].replace(/#.*/, "").trim();
    if (!entry) continue;
    if (/^[0-9a-fA-F]{64}$/.test(entry)) {
      out.add(entry.toLowerCase());
      continue;
    }
    let raw: Uint8Array | undefined;
    try {
      raw = Uint8Array.from(
        atob(entry.replace(/-/g, "+").replace(/_/g, "/")),
        (c) => c.charCodeAt(0),
      );
    } catch {
      raw = undefined;
    }
    if (raw?.byteLength !== 32) {
      throw new TypeError(
        `Invalid ${source} line ${
          i + 1
        }: expected a 64-hex key fingerprint or a base64 Ed25519 public key, got "${
          entry.slice(0, 80)
        }"`,
      );
    }
    out.add(await fingerprintOf(raw));
  }
  return out;
}
