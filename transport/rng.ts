/**
 * Seeded pseudo-random numbers and reconnect backoff.
 *
 * @module
 */

/**
 * mulberry32: a small, fast 32-bit PRNG. The same seed gives the same
 * sequence of numbers in `[0, 1)`.
 *
 * @example Same seed, same sequence
 * ```ts
 * import { mulberry32 } from "./rng.ts";
 * import assert from "node:assert/strict";
 * const a = mulberry32(42), b = mulberry32(42);
 * assert.equal(a(), b());
 * ```
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Hashes a string to a 32-bit seed (FNV-1a), to derive per-link seeds. */
export function hashSeed(text: string, seed = 0): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** Options of {@linkcode backoffDelay}. */
export interface ReconnectBackoffOptions {
  /** Delay cap for the first retry, in ms. Default 100. */
  baseMs?: number;
  /** Largest delay cap, in ms. Default 10,000. */
  maxMs?: number;
  /** Source of numbers in `[0, 1)`. Default `Math.random`. */
  random?: () => number;
}

/**
 * Exponential backoff with full jitter: a delay drawn uniformly from
 * `[0, min(maxMs, baseMs * 2^attempt))`. Full jitter spreads the retries of
 * many peers that lost the same server, so they do not all come back at once.
 *
 * @example Delays stay under the cap
 * ```ts
 * import { backoffDelay } from "./rng.ts";
 * import assert from "node:assert/strict";
 * const d = backoffDelay(3, { baseMs: 100, maxMs: 10_000 });
 * assert.ok(d >= 0 && d < 800);
 * ```
 */
export function backoffDelay(attempt: number, options: ReconnectBackoffOptions = {}): number {
  const baseMs = options.baseMs ?? 100;
  const maxMs = options.maxMs ?? 10_000;
  const random = options.random ?? Math.random;
  if (!Number.isInteger(attempt) || attempt < 0) {
    throw new RangeError(`Invalid backoff attempt: ${attempt} (must be a non-negative integer)`);
  }
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 52));
  return random() * cap;
}
