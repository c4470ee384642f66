/**
 * A seeded fault layer for tests: drop, delay, duplicate, reorder, corrupt
 * and partition frames between named nodes.
 *
 * Each directed link (`from -> to`) draws from its own PRNG, seeded from the
 * injector's seed and the link's names, and every frame consumes the same
 * number of draws whatever happens to it. So the same seed gives the same
 * fault sequence on a link, however traffic on other links interleaves.
 * Partitions are set and healed at run time.
 *
 * @module
 */
import { hashSeed, mulberry32 } from "./rng.ts";

type Timer = ReturnType<typeof setTimeout>;

/** Probabilities (each in `[0, 1]`) of each fault, per frame. */
export interface FaultRates {
  /** Frame lost. */
  drop?: number;
  /** One bit of the frame flipped. */
  corrupt?: number;
  /** Frame delivered twice. */
  duplicate?: number;
  /** Frame held back and delivered after the next frame on its link. */
  reorder?: number;
  /** Frame delivered late, after a delay drawn from `delayMs`. */
  delay?: number;
  /** Range of delays `[min, max]` in ms. Default `[1, 50]`. */
  delayMs?: [number, number];
}

/** Options of {@linkcode FaultInjector}. */
export interface FaultOptions extends FaultRates {
  /** Seed of every link's PRNG. */
  seed: number;
  /** Where channels apply the faults. Default "send". */
  on?: "send" | "receive" | "both";
  /** Rates for particular links, keyed `"from->to"`; override the defaults. */
  links?: Record<string, FaultRates>;
  /** Most events kept in {@linkcode FaultInjector.log}. Default 10,000. */
  maxLog?: number;
}

/** What happened to one frame. */
export type FaultAction =
  | "pass"
  | "drop"
  | "corrupt"
  | "duplicate"
  | "reorder"
  | "delay"
  | "partition";

/** One entry of the fault log. */
export interface FaultEvent {
  /** Sending node. */
  from: string;
  /** Receiving node. */
  to: string;
  /** Index of the frame on its link. */
  n: number;
  /** Actions taken, in order (e.g. `["corrupt", "duplicate"]`). */
  actions: FaultAction[];
  /** Delay applied, in ms, when delayed. */
  delayMs?: number;
}

interface Link {
  random: () => number;
  n: number;
  held?: { frame: Uint8Array; deliver: (frame: Uint8Array) => void; timer: Timer };
}

/**
 * Decides and applies faults to frames passing between named nodes.
 *
 * @example Same seed, same faults
 * ```ts
 * import { FaultInjector } from "./faults.ts";
 * import assert from "node:assert/strict";
 * const run = () => {
 *   const f = new FaultInjector({ seed: 7, drop: 0.3 });
 *   for (let i = 0; i < 20; i++) f.transmit("a", "b", new Uint8Array([i]), () => {});
 *   f.close();
 *   return f.log.map((e) => e.actions.join("+"));
 * };
 * assert.deepEqual(run(), run());
 * ```
 */
export class FaultInjector {
  /** Where channels apply the faults. */
  readonly on: "send" | "receive" | "both";
  #options: FaultOptions;
  #links = new Map<string, Link>();
  #sides: [Set<string>, Set<string>][] = [];
  #timers = new Set<Timer>();
  #log: FaultEvent[] = [];
  #closed = false;

  /** Creates an injector; with no rates it only applies partitions. */
  constructor(options: FaultOptions) {
    for (const key of ["drop", "corrupt", "duplicate", "reorder", "delay"] as const) {
      const p = options[key];
      if (p !== undefined && !(p >= 0 && p <= 1)) {
        throw new RangeError(`Invalid fault rate ${key}: ${p} (must be in [0, 1])`);
      }
    }
    this.#options = options;
    this.on = options.on ?? "send";
  }

  /** Events so far, oldest first (bounded by `maxLog`). */
  get log(): readonly FaultEvent[] {
    return this.#log;
  }

  /** Cuts every link between a node of `a` and a node of `b`, both ways. */
  partition(a: string[], b: string[]): void {
    this.#sides.push([new Set(a), new Set(b)]);
  }

  /** Removes every partition. */
  heal(): void {
    this.#sides = [];
  }

  /** Whether frames from `from` to `to` are cut by a partition. */
  isPartitioned(from: string, to: string): boolean {
    return this.#sides.some(([a, b]) => (a.has(from) && b.has(to)) || (b.has(from) && a.has(to)));
  }

  #link(from: string, to: string): Link {
    const key = `${from}->${to}`;
    let link = this.#links.get(key);
    if (!link) {
      link = { random: mulberry32(hashSeed(key, this.#options.seed)), n: 0 };
      this.#links.set(key, link);
    }
    return link;
  }

  /**
   * Passes one frame from `from` to `to` through the fault layer, calling
   * `deliver` zero, one or two times, now or later. The frame is never
   * mutated; a corrupted frame is a copy.
   */
  transmit(
    from: string,
    to: string,
    frame: Uint8Array,
    deliver: (frame: Uint8Array) => void,
  ): void {
    const link = this.#link(from, to);
    const rates = { ...this.#options, ...this.#options.links?.[`${from}->${to}`] };
    // Always seven draws per frame, so a link's sequence depends only on its frame count.
    const r = Array.from({ length: 7 }, link.random);
    const event: FaultEvent = { from, to, n: link.n++, actions: [] };
    this.#record(event);
    if (this.#closed) {
      event.actions.push("drop");
      return;
    }
    if (this.isPartitioned(from, to)) {
      event.actions.push("partition");
      return;
    }
    if (r[0] < (rates.drop ?? 0)) {
      event.actions.push("drop");
      return;
    }
    let out = frame;
    if (r[1] < (rates.corrupt ?? 0) && frame.byteLength > 0) {
      out = frame.slice();
      const bit = Math.floor(r[2] * frame.byteLength * 8);
      out[bit >> 3] ^= 1 << (bit & 7);
      event.actions.push("corrupt");
    }
    const copies = r[3] < (rates.duplicate ?? 0) ? 2 : 1;
    if (copies === 2) event.actions.push("duplicate");
    let delayMs = 0;
    if (r[5] < (rates.delay ?? 0)) {
      const [min, max] = rates.delayMs ?? [1, 50];
      delayMs = min + r[6] * (max - min);
      event.actions.push("delay");
      event.delayMs = delayMs;
    }
    const send = () => {
      for (let i = 0; i < copies; i++) deliver(out);
    };
    // A frame held for reordering goes out right after this one.
    const held = link.held;
    link.held = undefined;
    const release = () => {
      if (!held) return;
      clearTimeout(held.timer);
      this.#timers.delete(held.timer);
      held.deliver(held.frame);
    };
    if (r[4] < (rates.reorder ?? 0) && !held) {
      event.actions.push("reorder");
      // Held until the next frame on the link, or 20 ms if none comes.
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        if (link.held?.timer === timer) {
          link.held = undefined;
          send();
        }
      }, 20 + delayMs);
      this.#timers.add(timer);
      link.held = { frame: out, deliver: () => send(), timer };
      return;
    }
    if (event.actions.length === 0) event.actions.push("pass");
    if (delayMs > 0) {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        send();
      }, delayMs);
      this.#timers.add(timer);
    } else {
      send();
    }
    release();
  }

  #record(event: FaultEvent): void {
    this.#log.push(event);
    const max = this.#options.maxLog ?? 10_000;
    if (this.#log.length > max) this.#log.splice(0, this.#log.length - max);
  }

  /** Drops frames still held or delayed and stops every timer. */
  close(): void {
    this.#closed = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    for (const link of this.#links.values()) link.held = undefined;
  }
}
