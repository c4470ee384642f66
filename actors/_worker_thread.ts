/**
 * Retiring a Worker that holds a WebGPU device, so that the process can exit
 * right after without crashing.
 *
 * Why: `worker.terminate()` (and a Worker's own `self.close()`) returns at
 * once; the Worker's thread then tears down its isolate and its WebGPU
 * instance on its own. On the GL backend (wgpu's EGL path, Mesa llvmpipe)
 * that teardown makes EGL calls on a display that every Worker of the process
 * shares, and if the process exits meanwhile (`Deno.exit`, or the main module
 * ending) the exit's own cleanup releases that display under it: the Worker
 * thread panics ("Failed to make EGL context current: BadDisplay", "Deno has
 * panicked") or the heap is corrupted ("corrupted double-linked list",
 * "malloc_consolidate(): unaligned fastbin chunk", exit code 134). Deno tells
 * the host that a Worker closed before the Worker's thread has finished its
 * cleanup, and gives no way to wait for it (denoland/deno#35657, open), so the
 * Worker tells its host which OS thread it runs on ({@linkcode workerThreadId})
 * and the host waits until that thread is gone from `/proc/self/task`
 * ({@linkcode threadEnded}). Destroying the device first
 * ({@linkcode RetireOptions.close}) frees GPU memory at a known point, but
 * alone it does not prevent the crash: the instance outlives the device.
 *
 * Where there is no `/proc` (not Linux) or no read permission for it, the
 * thread is unknown and only the device is released before termination. A
 * browser bundle puts actors/_worker_thread_browser.ts in place of this module.
 *
 * @module
 */

import { closeAndTerminate, DEFAULT_CLOSE_TIMEOUT_MS } from "./_worker_close.ts";

export { DEFAULT_CLOSE_TIMEOUT_MS };
/** How long {@linkcode retireWorker} waits for the Worker's thread to end, ms. */
export const DEFAULT_END_TIMEOUT_MS = 2500;

function procReadable(): boolean {
  try {
    return Deno.permissions.querySync({ name: "read", path: "/proc" }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * The OS thread id of the calling thread (call it inside a Worker and send it
 * to the host), or undefined where `/proc/thread-self` cannot be read. It
 * never prompts for a permission.
 *
 * @example
 * ```ts
 * import { workerThreadId } from "./_worker_thread.ts";
 * console.log(typeof (workerThreadId() ?? 0)); // "number"
 * ```
 */
export function workerThreadId(): number | undefined {
  if (!procReadable()) return undefined;
  try {
    // "<pid>/task/<tid>"
    const tid = Number(Deno.readLinkSync("/proc/thread-self").split("/").pop());
    return Number.isInteger(tid) && tid > 0 ? tid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Resolves true once thread `tid` of this process has ended, false if it
 * still runs after `timeoutMs`. Polls `/proc/self/task/<tid>` every few ms.
 *
 * @example
 * ```ts
 * import { threadEnded, workerThreadId } from "./_worker_thread.ts";
 * const self = workerThreadId();
 * if (self !== undefined) console.log(await threadEnded(self, 10)); // false: it is this thread
 * ```
 */
export async function threadEnded(
  tid: number,
  timeoutMs = DEFAULT_END_TIMEOUT_MS,
): Promise<boolean> {
  if (!Number.isInteger(tid) || tid <= 0) {
    throw new RangeError(`Cannot wait for thread: expected a positive integer id, got ${tid}`);
  }
  const deadline = performance.now() + timeoutMs;
  while (true) {
    try {
      await Deno.stat(`/proc/self/task/${tid}`);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return true;
      throw err;
    }
    if (performance.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 3));
  }
}

/** Options of {@linkcode retireWorker}. */
export interface RetireOptions {
  /**
   * Asks the Worker to release what it holds (its model and GPU device) and
   * resolves when it confirms. Skipped when absent (a Worker that already
   * died cannot answer).
   */
  close?: () => Promise<unknown>;
  /** The Worker's OS thread ({@linkcode workerThreadId} in the Worker); unknown when absent. */
  thread?: number;
  /** Default {@linkcode DEFAULT_CLOSE_TIMEOUT_MS}. */
  closeTimeoutMs?: number;
  /** Default {@linkcode DEFAULT_END_TIMEOUT_MS}. */
  endTimeoutMs?: number;
}

/** What {@linkcode retireWorker} saw. */
export interface Retired {
  /** The Worker confirmed `close` in time. */
  closed: boolean;
  /** Its thread ended in time; "unknown" when the thread was not known. */
  ended: boolean | "unknown";
}

/**
 * Retires a Worker: asks it to close (bounded), terminates it, and waits
 * (bounded) until its thread has ended, so that exiting the process
 * afterwards cannot race the thread's GPU teardown. Never throws.
 *
 * @example
 * ```ts ignore
 * import { retireWorker } from "./_worker_thread.ts";
 * // `thread` came from the Worker (workerThreadId), `close` is a request of its protocol.
 * const r = await retireWorker(worker, { thread, close: () => ask(worker, { op: "close" }) });
 * console.log(r); // { closed: true, ended: true }
 * Deno.exit(0);
 * ```
 */
export async function retireWorker(worker: Worker, options: RetireOptions = {}): Promise<Retired> {
  const closed = await closeAndTerminate(worker, options);
  if (options.thread === undefined) return { closed, ended: "unknown" };
  let ended: boolean;
  try {
    ended = await threadEnded(options.thread, options.endTimeoutMs ?? DEFAULT_END_TIMEOUT_MS);
  } catch {
    ended = false;
  }
  return { closed, ended };
}
