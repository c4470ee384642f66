/**
 * The fault suite's network fault layer ({@linkcode PhasedFaults}): the
 * transport's seeded {@linkcode FaultInjector} with rates that change in
 * phases during a run, partitions, and a bandwidth limit per link.
 *
 * @module
 */
import { FaultInjector, type FaultRates } from "../transport/faults.ts";
import { hashSeed } from "../transport/rng.ts";

type Timer = ReturnType<typeof setTimeout>;

/**
 * The transport's {@linkcode FaultInjector} with rates that change during a
 * run (one seeded injector per phase) and an optional bandwidth limit per
 * directed link (frames queue behind each other at `bitsPerSecond`).
 */
export class PhasedFaults extends FaultInjector {
  #seed: number;
  #phase = 0;
  #current: FaultInjector | undefined;
  #all: FaultInjector[] = [];
  #bps = 0;
  #nextFree = new Map<string, number>();
  #timers = new Set<Timer>();
  #closed = false;
  /** Frames cut by a partition, and frames seen, by action. */
  readonly counts: Record<string, number> = {};

  /** Creates the layer; with no phase set it passes frames through (partitions aside). */
  constructor(seed: number) {
    super({ seed });
    this.#seed = seed;
  }

  /** Starts a new phase with these rates (or none), seeded from the run seed and the phase. */
  setRates(rates: FaultRates | undefined): void {
    this.#phase++;
    this.#current = rates
      ? new FaultInjector({ ...rates, seed: hashSeed(`phase-${this.#phase}`, this.#seed) })
      : undefined;
    if (this.#current) this.#all.push(this.#current);
  }

  /** Limits every link to `bitsPerSecond` (0: no limit). */
  setBandwidth(bitsPerSecond: number): void {
    this.#bps = bitsPerSecond;
  }

  /** Counts what the phase injectors did so far, by action. */
  actionCounts(): Record<string, number> {
    const out: Record<string, number> = { ...this.counts };
    for (const f of this.#all) {
      for (const e of f.log) for (const a of e.actions) out[a] = (out[a] ?? 0) + 1;
    }
    return out;
  }

  override transmit(
    from: string,
    to: string,
    frame: Uint8Array,
    deliver: (frame: Uint8Array) => void,
  ): void {
    if (this.#closed) return;
    if (this.isPartitioned(from, to)) {
      this.counts.partition = (this.counts.partition ?? 0) + 1;
      return;
    }
    const onward = (f: Uint8Array) => {
      if (this.#closed) return;
      if (this.#current) this.#current.transmit(from, to, f, deliver);
      else deliver(f);
    };
    if (this.#bps <= 0) {
      onward(frame);
      return;
    }
    // Bandwidth: the frame leaves once the link has sent what was queued before it.
    const key = `${from}->${to}`;
    const now = performance.now();
    const done = Math.max(now, this.#nextFree.get(key) ?? 0) +
      frame.byteLength * 8 / this.#bps * 1000;
    this.#nextFree.set(key, done);
    this.counts.throttled = (this.counts.throttled ?? 0) + 1;
    const copy = frame.slice();
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      onward(copy);
    }, done - now);
    this.#timers.add(timer);
  }

  override close(): void {
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const f of this.#all) f.close();
    super.close();
  }
}
