/**
 * The part of retiring a Worker that every runtime shares: ask it to release
 * what it holds, bounded in time, then terminate it. actors/_worker_thread.ts
 * (Deno) then waits for the Worker's OS thread to end; a browser
 * (actors/_worker_thread_browser.ts) has nothing more to wait for.
 *
 * @module
 */

/** How long {@linkcode closeAndTerminate} waits for the Worker to confirm `close`, ms. */
export const DEFAULT_CLOSE_TIMEOUT_MS = 1500;

/**
 * Runs `close` (when given) for at most `closeTimeoutMs`, then terminates the
 * Worker; resolves whether `close` confirmed in time. Never throws.
 *
 * @example
 * ```ts
 * import { closeAndTerminate } from "./_worker_close.ts";
 * const worker = new Worker("data:text/javascript,", { type: "module" });
 * console.log(await closeAndTerminate(worker, { close: () => Promise.resolve() })); // true
 * ```
 */
export async function closeAndTerminate(
  worker: Worker,
  options: { close?: () => Promise<unknown>; closeTimeoutMs?: number },
): Promise<boolean> {
  let closed = false;
  if (options.close) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<false>((r) => {
      timer = setTimeout(() => r(false), options.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS);
    });
    closed = await Promise.race([options.close().then(() => true, () => false), timeout]);
    clearTimeout(timer);
  }
  worker.terminate();
  return closed;
}
