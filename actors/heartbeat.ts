/**
 * Heartbeats while a handler awaits long work. An actor's mailbox waits for
 * the handler it is in, and the heartbeat timer's messages wait with it: a
 * trainer evaluating a large model, or an aggregator closing a round of one,
 * would send none for as long and be evicted while it works.
 *
 * @module
 */

/**
 * Awaits `work`, calling `beat` every `everyMs` until it settles.
 *
 * @example
 * ```ts
 * import { beatWhile } from "./heartbeat.ts";
 * let beats = 0;
 * const done = new Promise((r) => setTimeout(() => r("done"), 35));
 * console.log(await beatWhile(done, () => beats++, 10), beats >= 2); // done true
 * ```
 */
export async function beatWhile<T>(
  work: Promise<T>,
  beat: () => void,
  everyMs: number,
): Promise<T> {
  const timer = setInterval(beat, everyMs);
  try {
    return await work;
  } finally {
    clearInterval(timer);
  }
}
