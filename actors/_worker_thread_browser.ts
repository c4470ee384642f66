/**
 * actors/_worker_thread.ts in a browser: a tab has no `/proc` and no process
 * exit to race, so retiring a Worker is asking it to release its device
 * (bounded) and terminating it. A browser bundle puts this module in place
 * of actors/_worker_thread.ts (see actors/browser/bundle.ts).
 *
 * @module
 */
import { closeAndTerminate, DEFAULT_CLOSE_TIMEOUT_MS } from "./_worker_close.ts";

export { DEFAULT_CLOSE_TIMEOUT_MS };

/**
 * Always undefined: a browser does not tell a Worker its OS thread.
 *
 * @example
 * ```ts
 * import { workerThreadId } from "./_worker_thread_browser.ts";
 * console.log(workerThreadId()); // undefined
 * ```
 */
export function workerThreadId(): number | undefined {
  return undefined;
}

/** Options of {@linkcode retireWorker}. */
export interface RetireOptions {
  /** Asks the Worker to release its model and GPU device; resolves when it confirms. */
  close?: () => Promise<unknown>;
  /** Ignored: a browser Worker's thread is not known. */
  thread?: number;
  /** Default {@linkcode DEFAULT_CLOSE_TIMEOUT_MS}. */
  closeTimeoutMs?: number;
}

/** What {@linkcode retireWorker} saw. */
export interface Retired {
  /** The Worker confirmed `close` in time. */
  closed: boolean;
  /** Always "unknown" in a browser. */
  ended: "unknown";
}

/**
 * Retires a Worker: asks it to close (bounded), then terminates it. Never throws.
 *
 * @example
 * ```ts ignore
 * import { retireWorker } from "./_worker_thread_browser.ts";
 * const r = await retireWorker(worker, { close: () => ask(worker, { op: "close" }) });
 * ```
 */
export async function retireWorker(worker: Worker, options: RetireOptions = {}): Promise<Retired> {
  return { closed: await closeAndTerminate(worker, options), ended: "unknown" };
}
