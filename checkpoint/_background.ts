/**
 * How a keeper's background threads (writer, server) stay out of the
 * trainers' way on a machine whose compute runs on the CPU (llvmpipe).
 *
 * Measured on the project's 2-core VMs, a trainer worker stepping beside a
 * CPU burner, loaded blocks of steps alternated with idle ones:
 *
 * - A burner running flat out at the lowest priority still cost the steps
 *   6-19% (nice 19 and SCHED_IDLE alike); at a 10% duty cycle 3-4%; at 1%
 *   nothing measurable. Pinned to the other core, away from a trainer
 *   pinned to one core, even a normal-priority burner cost nothing. So the
 *   cost is in taking the short gaps a trainer's llvmpipe threads leave
 *   between dispatches: the next dispatch waits for the core (and its
 *   caches), and a dispatch waits at its barrier for its slowest thread.
 * - Hence two measures. {@linkcode lowerThisThread}: SCHED_IDLE, which any
 *   normal thread preempts as soon as it wakes. {@linkcode CpuPacer}: while
 *   other work keeps the thread's cores busy, it sleeps after each slice of
 *   work to hold its CPU time to `duty`; on an otherwise idle machine it
 *   runs flat out.
 *
 * @module
 */
import { setPriority } from "node:os";

const SCHED_IDLE = 5;

/**
 * Puts the calling thread (only it, and threads it starts later) at the
 * lowest CPU priority there is: SCHED_IDLE on Linux (through libc; needs
 * `--allow-ffi`), else nice 19. Returns what it got; never throws.
 */
export function lowerThisThread(): "idle" | "nice" | "none" {
  if (Deno.build.os === "linux") {
    try {
      const lib = Deno.dlopen("libc.so.6", {
        sched_setscheduler: { parameters: ["i32", "i32", "buffer"], result: "i32" },
      });
      try {
        // pid 0 is the calling thread; sched_param { sched_priority: 0 }.
        if (lib.symbols.sched_setscheduler(0, SCHED_IDLE, new Int32Array(1)) === 0) return "idle";
      } finally {
        lib.close();
      }
    } catch {
      // No FFI permission or no glibc: nice below.
    }
  }
  try {
    // On Linux this lowers this thread only (nice values are per thread).
    setPriority(0, 19);
    return "nice";
  } catch {
    return "none";
  }
}

/**
 * The default CPU budget of a background thread while the machine is busy:
 * 5% of one core. A keeper's writes on a 2-core machine measured 1.00-1.05x
 * the idle step time at 5% and 1.06x at 10%.
 */
export const DEFAULT_DUTY = 0.05;

/** Options of {@linkcode CpuPacer}. */
export interface PacerOptions {
  /** Share of one core the thread may use while the machine is busy (default {@linkcode DEFAULT_DUTY}). */
  duty?: number;
  /** CPU time worked between two checks, ms (default 2). */
  sliceMs?: number;
  /**
   * The machine counts as busy when this thread waited for a CPU more than
   * this many times as long as it ran, lately (default 0.5). A SCHED_IDLE
   * thread beside a trainer on llvmpipe waited 1.4-9x its run time in
   * measurements here; beside one busy core on a 2-core machine, 0.02x.
   */
  busyWait?: number;
  /** CPU time over which that share is taken, ms (default 10). */
  windowMs?: number;
  /** Reads the thread's [run, wait] ns (default: /proc/thread-self/schedstat; tests fake it). */
  sched?: () => [number, number] | undefined;
}

/** [run, wait] ns of the calling thread, from /proc; undefined where it is not there. */
function threadSched(): [number, number] | undefined {
  try {
    const f = Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ");
    return [Number(f[0]), Number(f[1])];
  } catch {
    return undefined;
  }
}

/**
 * Holds a background thread to a CPU budget while the rest of the machine
 * is busy (see the module doc). Call {@linkcode due} (or `pace`/`paceSync`)
 * between small pieces of work. It reads the thread's own scheduling
 * statistics from /proc: the CPU time it ran, and how long it waited for a
 * CPU, which is how it tells that other threads keep the cores busy (this
 * also holds when the thread may only use some of the cores). Where /proc
 * is missing it never asks for a pause.
 *
 * @example
 * ```ts
 * import { CpuPacer } from "./_background.ts";
 * const pacer = new CpuPacer({ duty: 0.1 });
 * for (let i = 0; i < 4; i++) {
 *   // ... a slice of work ...
 *   await pacer.pace();
 * }
 * ```
 */
export class CpuPacer {
  /** The budget's share of one core. */
  readonly duty: number;
  #sliceNs: number;
  #busyWait: number;
  #windowNs: number;
  /** Run time at the last check. */
  #runAt: number | undefined;
  #wallAt = performance.now();
  /** [run, wait] at the start of the current window. */
  #window: [number, number] | undefined;
  #busy = false;
  #sched: () => [number, number] | undefined;
  /** Total ms this pacer asked to sleep (for reports). */
  sleptMs = 0;

  constructor(options: PacerOptions = {}) {
    this.duty = options.duty ?? DEFAULT_DUTY;
    if (!(this.duty > 0 && this.duty <= 1)) {
      throw new RangeError(`CPU duty must be in (0, 1], got ${options.duty}`);
    }
    this.#sliceNs = (options.sliceMs ?? 2) * 1e6;
    this.#busyWait = options.busyWait ?? 0.5;
    this.#windowNs = (options.windowMs ?? 10) * 1e6;
    this.#sched = options.sched ?? threadSched;
    this.#window = this.#sched();
    this.#runAt = this.#window?.[0];
  }

  /** Whether this thread waited for a CPU much of the time it wanted one, lately. */
  #othersBusy(now: [number, number]): boolean {
    const [run, wait] = [now[0] - this.#window![0], now[1] - this.#window![1]];
    if (run >= this.#windowNs) {
      this.#busy = wait > this.#busyWait * run;
      this.#window = now;
    }
    return this.#busy;
  }

  /** Ms to pause now to keep within the budget; 0 most of the time. */
  due(): number {
    if (this.#runAt === undefined || this.duty >= 1) return 0;
    // A cheap clock read first: the thread cannot have worked a slice in less wall time.
    if ((performance.now() - this.#wallAt) * 1e6 < this.#sliceNs) return 0;
    const now = this.#sched();
    if (!now) return 0;
    const worked = now[0] - this.#runAt;
    if (worked < this.#sliceNs) return 0;
    this.#runAt = now[0];
    this.#wallAt = performance.now();
    if (!this.#othersBusy(now)) return 0;
    const ms = (worked / 1e6) * (1 / this.duty - 1);
    this.sleptMs += ms;
    return ms;
  }

  /** Pauses the event loop of this thread for {@linkcode due} ms. */
  async pace(): Promise<void> {
    const ms = this.due();
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    if (ms > 0) this.#wallAt = performance.now();
  }

  /** Blocks this thread for {@linkcode due} ms (Workers only: Atomics.wait). */
  paceSync(): void {
    const ms = this.due();
    if (ms > 0) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
      this.#wallAt = performance.now();
    }
  }
}
