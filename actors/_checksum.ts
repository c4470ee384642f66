/**
 * A fast checksum of a float32 tensor's exact bits, carried with every
 * update so that a trainer can verify that its copy of θ_{r+1} equals the
 * aggregator's: a flipped bit anywhere on the way (a corrupted frame the
 * transport could not tell apart from a good one, a bad memory cell) is
 * caught at the next round instead of drifting silently forever.
 *
 * Two 32-bit FNV-1a lanes with different offsets over the 32-bit words.
 * Each step (xor, then a multiply by an odd prime) is a bijection of the
 * lane, so any one changed word, and so any one flipped bit, changes the
 * checksum.
 *
 * @module
 */

/**
 * Checksum of `x`'s bits as 16 hex characters.
 *
 * @example
 * ```ts
 * import { tensorChecksum } from "./_checksum.ts";
 * console.log(tensorChecksum(new Float32Array([1, 2])).length); // 16
 * ```
 */
export function tensorChecksum(x: Float32Array): string {
  return wordsChecksum(new Uint32Array(x.buffer, x.byteOffset, x.length));
}

/**
 * Checksum of a string's UTF-8 bytes (and its length) as 16 hex characters,
 * with the same lanes as {@linkcode tensorChecksum}.
 *
 * @example
 * ```ts
 * import { textChecksum } from "./_checksum.ts";
 * console.log(textChecksum("a") !== textChecksum("b")); // true
 * ```
 */
export function textChecksum(text: string): string {
  const bytes = new TextEncoder().encode(text);
  // The length goes first, so zero padding cannot make two texts equal.
  const words = new Uint32Array(1 + Math.ceil(bytes.length / 4));
  words[0] = bytes.length;
  new Uint8Array(words.buffer, 4).set(bytes);
  return wordsChecksum(words);
}

function wordsChecksum(w: Uint32Array): string {
  let a = 0x811c9dc5;
  let b = 0x050c5d1f;
  for (let i = 0; i < w.length; i++) {
    const v = w[i];
    a = Math.imul(a ^ v, 16777619);
    b = Math.imul(b ^ (v >>> 16 | v << 16), 16777619);
  }
  return (a >>> 0).toString(16).padStart(8, "0") + (b >>> 0).toString(16).padStart(8, "0");
}
