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
 * Whether a permission is granted now. Asked without prompting: a keeper
 * may run inside another service whose terminal must not see a prompt from
 * a background thread.
 */
function granted(desc: Deno.PermissionDescriptor): boolean {
  try {
    return Deno.permissions.querySync(desc).state === "granted";
  } catch {
    return false;
  }
}

/**
 * Puts the calling thread (only it, and threads it starts later) at the
 * lowest CPU priority there is: SCHED_IDLE on Linux (through libc; needs
 * `--allow-ffi`), else nice 19 (needs `--allow-sys`). Returns what it got;
 * never throws, never prompts.
 */
export function lowerThisThread(): "idle" | "nice" | "none" {
  if (Deno.build.os === "linux" && granted({ name: "ffi" })) {
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
      // No glibc: nice below.
    }
  }
  if (!granted({ name: "sys", kind: "setPriority" })) return "none";
  try {
    // On Linux this lowers this thread only (nice values are per thread).
    setPriority(0, 19);
    return "nice";
  } catch {
    return "none";
  }
}

/**
 * Bytes of work between two calls of a `pace` hook: about 1 ms of hashing or
 * copying here, short enough that a paced background thread's bursts stay
 * shorter than a kernel dispatch.
 */
export const PACE_BYTES = 1 << 20;

/**
 * Runs `fn(start, end)` over `[0, length)` in pieces of `piece`, calling
 * `pace` after each; without `pace`, once over the whole range.
 */
export function inPieces(
  length: number,
  piece: number,
  pace: (() => void) | undefined,
  fn: (start: number, end: number) => void,
): void {
  const step = pace ? piece : length;
  for (let at = 0; at < length; at += step) {
    fn(at, Math.min(length, at + step));
    pace?.();
  }
}

/**
 * The default CPU budget of a background thread while the machine is busy:
 * 5% of one core. With a keeper writing round after round beside a trainer
 * on a 2-core machine, steps took 0.97-1.07x their idle time at 5% over nine
 * bench runs (0.98-1.00x with the trainer on one core and the keeper beside
 * it), and 1.06x at 10% in the one run made.
 */
export const DEFAULT_DUTY = 0.05;

/**
 * `duty` when it is a share of one core in (0, 1].
 *
 * @throws {RangeError} starting with `what` otherwise
 */
export function checkDuty(duty: number, what: string): number {
  if (!(duty > 0 && duty <= 1)) throw new RangeError(`${what} must be in (0, 1], got ${duty}`);
  return duty;
}

/** Options of {@linkcode CpuPacer}. */
export interface PacerOptions {
  /** Share of one core the thread may use while the machine is busy (default {@linkcode DEFAULT_DUTY}). */
  duty?: number;
  /** CPU time worked between two checks, ms (default 2). */
  sliceMs?: number;
  /**
   * The cores count as busy when other threads kept more than this share of
   * the cores this thread may run on busy, lately (default 0.7). A trainer
   * on llvmpipe kept 0.85-0.88 of a 2-core machine busy; a joiner receiving
   * as fast as it could, 0.5-0.67.
   */
  busyShare?: number;
  /** Wall time over which that share is taken, ms (default 100). */
  windowMs?: number;
  /** Reads the thread's CPU time, ns (default: /proc; tests fake it). */
  cpuTime?: () => number | undefined;
  /**
   * Reads [ticks other threads kept busy, all ticks] since boot, over the
   * cores this thread may run on (default: /proc; tests fake it).
   */
  coreTicks?: () => [number, number] | undefined;
}

/** CPU time of the calling thread, ns, from /proc; undefined where it is not there. */
function threadCpuNs(): number | undefined {
  try {
    return Number(Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ")[0]);
  } catch {
    return undefined;
  }
}

/** The CPUs the calling thread may run on (its affinity), from /proc. */
function allowedCpus(): Set<number> {
  const line = Deno.readTextFileSync("/proc/thread-self/status").split("\n").find((l) =>
    l.startsWith("Cpus_allowed_list:")
  );
  return parseCpuList(line?.split(":")[1] ?? "");
}

/**
 * The CPUs of a Linux CPU list such as `0-3,8,10-11` (as in
 * /proc/self/status `Cpus_allowed_list`).
 *
 * @throws {RangeError} naming the list when it is not one
 */
export function parseCpuList(list: string): Set<number> {
  const out = new Set<number>();
  for (const part of list.trim().split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m || (m[2] !== undefined && Number(m[2]) < Number(m[1]))) {
      throw new RangeError(`Not a CPU list: "${list.trim()}"`);
    }
    for (let c = Number(m[1]); c <= Number(m[2] ?? m[1]); c++) out.add(c);
  }
  return out;
}

/**
 * [busy ticks of other threads, all ticks] since boot over `cpus`, from
 * /proc/stat less this thread's own ticks.
 */
function procCoreTicks(cpus: Set<number>): [number, number] | undefined {
  try {
    let busy = 0;
    let total = 0;
    for (const line of Deno.readTextFileSync("/proc/stat").split("\n")) {
      const m = /^cpu(\d+)\s/.exec(line);
      if (!m || !cpus.has(Number(m[1]))) continue;
      // user nice system idle iowait irq softirq steal (guest time is inside user).
      const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
      const all = f.reduce((x, y) => x + y, 0);
      total += all;
      busy += all - f[3] - f[4];
    }
    const st = Deno.readTextFileSync("/proc/thread-self/stat");
    const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
    return total > 0 ? [busy - Number(f[11]) - Number(f[12]), total] : undefined;
  } catch {
    return undefined;
  }
}

/** A word nobody changes: `Atomics.wait` on it sleeps for its timeout. */
const SLEEPER = new Int32Array(new SharedArrayBuffer(4));

/**
 * Holds a background thread to a CPU budget while the rest of the machine
 * is busy (see the module doc). Call {@linkcode due} (or `pace`/`paceSync`)
 * between small pieces of work. It reads the thread's CPU time, and every
 * `windowMs` how busy other threads kept the cores it may run on (its CPU
 * affinity), from /proc. Where /proc is missing or not readable (no
 * `--allow-read` for it) it never asks for a pause.
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
  #busyShare: number;
  #windowMs: number;
  #cpuTime: () => number | undefined;
  #coreTicks: () => [number, number] | undefined;
  /** CPU time at the last check. */
  #cpuAt: number | undefined;
  #wallAt = performance.now();
  /** Ticks at the start of the current window, and when it started. */
  #window: { ticks: [number, number]; at: number } | undefined;
  #busy = false;
  /** Total ms this pacer asked to sleep (for reports). */
  sleptMs = 0;

  constructor(options: PacerOptions = {}) {
    this.duty = checkDuty(options.duty ?? DEFAULT_DUTY, "CPU duty");
    this.#sliceNs = (options.sliceMs ?? 2) * 1e6;
    this.#busyShare = options.busyShare ?? 0.7;
    this.#windowMs = options.windowMs ?? 100;
    // Without /proc (or leave to read it) the pacer never pauses.
    const proc = Deno.build.os === "linux" && granted({ name: "read", path: "/proc" });
    this.#cpuTime = options.cpuTime ?? (proc ? threadCpuNs : () => undefined);
    if (options.coreTicks) this.#coreTicks = options.coreTicks;
    else {
      let cpus: Set<number> | undefined;
      try {
        if (proc) cpus = allowedCpus();
      } catch { /* no /proc */ }
      this.#coreTicks = () => cpus ? procCoreTicks(cpus) : undefined;
    }
    this.#cpuAt = this.#cpuTime();
    const ticks = this.#coreTicks();
    if (ticks) this.#window = { ticks, at: performance.now() };
  }

  /** Whether other threads kept more than `busyShare` of this thread's cores busy lately. */
  #othersBusy(): boolean {
    const now = performance.now();
    if (!this.#window || now - this.#window.at < this.#windowMs) return this.#busy;
    const ticks = this.#coreTicks();
    if (!ticks) return this.#busy;
    const busy = ticks[0] - this.#window.ticks[0];
    const total = ticks[1] - this.#window.ticks[1];
    // Ticks are 10 ms: a window too short to hold a few of them keeps the last reading.
    if (total >= 4) {
      this.#busy = busy > this.#busyShare * total;
      this.#window = { ticks, at: now };
    }
    return this.#busy;
  }

  /** Ms to pause now to keep within the budget; 0 most of the time. */
  due(): number {
    if (this.#cpuAt === undefined || this.duty >= 1) return 0;
    // A cheap clock read first: the thread cannot have worked a slice in less wall time.
    if ((performance.now() - this.#wallAt) * 1e6 < this.#sliceNs) return 0;
    const cpu = this.#cpuTime();
    if (cpu === undefined) return 0;
    const worked = cpu - this.#cpuAt;
    if (worked < this.#sliceNs) return 0;
    this.#cpuAt = cpu;
    this.#wallAt = performance.now();
    if (!this.#othersBusy()) return 0;
    const ms = (worked / 1e6) * (1 / this.duty - 1);
    this.sleptMs += ms;
    return ms;
  }

  /** Pauses the event loop of this thread for {@linkcode due} ms. */
  async pace(): Promise<void> {
    const ms = this.due();
    if (ms > 0) {
      await new Promise((r) => setTimeout(r, ms));
      this.#wallAt = performance.now();
    }
  }

  /** Blocks this thread for {@linkcode due} ms (Workers only: Atomics.wait). */
  paceSync(): void {
    const ms = this.due();
    if (ms > 0) {
      Atomics.wait(SLEEPER, 0, 0, ms);
      this.#wallAt = performance.now();
    }
  }
}
