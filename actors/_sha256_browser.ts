/**
 * actors/_sha256.ts in a browser: WebCrypto's digest (a tab has no node:crypto).
 *
 * @module
 */

/**
 * The SHA-256 digest of `bytes` (32 bytes).
 *
 * @example
 * ```ts
 * import { sha256 } from "./_sha256_browser.ts";
 * console.log((await sha256(new Uint8Array([1, 2]))).length); // 32
 * ```
 */
export async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
}
