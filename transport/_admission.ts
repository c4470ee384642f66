/**
 * Limits before authentication: which new connections a server lets start a
 * handshake at all. Every unauthenticated connection costs the host a socket,
 * a channel and a handshake timer until it proves the run secret or times out
 * (`handshakeTimeoutMs`), so a flood of them, or a slow-loris peer that never
 * finishes, must not be able to pile them up. Three rules, checked before the
 * WebSocket upgrade (a refused request costs one HTTP answer):
 *
 * - at most `maxPending` handshakes in progress at once, all addresses
 *   together (503);
 * - at most `maxPendingPerAddress` of them from one address (503);
 * - at most `connectionsPerSecond` new connections per address, sustained,
 *   with bursts of `connectionBurst` (429).
 *
 * A connection stops counting as pending once it authenticates or closes.
 * Its own module because the rule is independent of what the frames say.
 *
 * @module
 */
import { withPositiveDefaults } from "./envelope.ts";

/** The limits of {@linkcode Admission}; every field has a documented default. */
export interface AdmissionLimits {
  /** Handshakes in progress at once, all addresses together. Default 256. */
  maxPending: number;
  /** Handshakes in progress at once from one address. Default 32. */
  maxPendingPerAddress: number;
  /** New connections per second from one address, sustained. Default 10. */
  connectionsPerSecond: number;
  /** New connections from one address in a burst. Default 40. */
  connectionBurst: number;
}

/** Documented defaults of {@linkcode AdmissionLimits}. */
export const DEFAULT_ADMISSION: Readonly<AdmissionLimits> = Object.freeze({
  maxPending: 256,
  maxPendingPerAddress: 32,
  connectionsPerSecond: 10,
  connectionBurst: 40,
});

/** Fills unset limits with {@linkcode DEFAULT_ADMISSION}, naming a bad value. */
export function resolveAdmission(limits: Partial<AdmissionLimits> = {}): AdmissionLimits {
  return withPositiveDefaults(DEFAULT_ADMISSION, limits, "admission limit");
}

/** What {@linkcode Admission.admit} answers. */
export type AdmitResult =
  | { ok: true; release(): void }
  | { ok: false; status: 429 | 503; reason: string };

/** Counters of an {@linkcode Admission}. */
export interface AdmissionStats {
  /** Handshakes in progress now. */
  pending: number;
  /** Connections refused since the start, by rule. */
  refusedPending: number;
  refusedPerAddress: number;
  refusedRate: number;
  /** Addresses remembered (bounded by {@linkcode MAX_ADDRESSES} under a flood). */
  addresses: number;
}

interface AddressState {
  pending: number;
  tokens: number;
  last: number;
}

/** Addresses remembered at most; idle ones with full buckets are forgotten first. */
export const MAX_ADDRESSES = 4096;

/**
 * Decides which new connections may start a handshake.
 *
 * @example
 * ```ts
 * import { Admission } from "./_admission.ts";
 * const admission = new Admission({ maxPendingPerAddress: 1 });
 * const first = admission.admit("10.0.0.2");
 * console.log(first.ok, admission.admit("10.0.0.2").ok); // true false
 * if (first.ok) first.release();
 * console.log(admission.admit("10.0.0.2").ok); // true
 * ```
 */
export class Admission {
  #limits: AdmissionLimits;
  #now: () => number;
  #addresses = new Map<string, AddressState>();
  #pending = 0;
  #refused = { pending: 0, perAddress: 0, rate: 0 };

  /** Creates the admission rule; `now` (ms) is for tests. */
  constructor(limits: Partial<AdmissionLimits> = {}, now: () => number = () => performance.now()) {
    this.#limits = resolveAdmission(limits);
    this.#now = now;
  }

  /** The limits in force. */
  get limits(): Readonly<AdmissionLimits> {
    return this.#limits;
  }

  /** Counters: pending handshakes and refusals by rule. */
  get stats(): AdmissionStats {
    return {
      pending: this.#pending,
      refusedPending: this.#refused.pending,
      refusedPerAddress: this.#refused.perAddress,
      refusedRate: this.#refused.rate,
      addresses: this.#addresses.size,
    };
  }

  /**
   * Asks to start a handshake from `address` (a host name, no port). On
   * success, call `release` once the connection authenticated or closed
   * (a second call does nothing).
   */
  admit(address: string): AdmitResult {
    const l = this.#limits;
    const now = this.#now();
    const a = this.#address(address, now);
    a.tokens = Math.min(
      l.connectionBurst,
      a.tokens + ((now - a.last) / 1000) * l.connectionsPerSecond,
    );
    a.last = now;
    if (a.tokens < 1) {
      this.#refused.rate++;
      return {
        ok: false,
        status: 429,
        reason: `Too many connections from ${address} (limit ${l.connectionsPerSecond}/s)`,
      };
    }
    a.tokens -= 1;
    if (this.#pending >= l.maxPending) {
      this.#refused.pending++;
      return {
        ok: false,
        status: 503,
        reason: `Too many handshakes in progress (limit ${l.maxPending})`,
      };
    }
    if (a.pending >= l.maxPendingPerAddress) {
      this.#refused.perAddress++;
      return {
        ok: false,
        status: 503,
        reason: `Too many handshakes in progress from ${address} (limit ${l.maxPendingPerAddress})`,
      };
    }
    a.pending++;
    this.#pending++;
    let released = false;
    return {
      ok: true,
      release: () => {
        if (released) return;
        released = true;
        a.pending--;
        this.#pending--;
      },
    };
  }

  #address(address: string, now: number): AddressState {
    let a = this.#addresses.get(address);
    if (a) return a;
    if (this.#addresses.size >= MAX_ADDRESSES) this.#forget(now);
    a = { pending: 0, tokens: this.#limits.connectionBurst, last: now };
    this.#addresses.set(address, a);
    return a;
  }

  /**
   * Forgets addresses with nothing pending whose bucket has refilled (they
   * would start full again anyway); if every address is still busy, the
   * oldest with nothing pending, so the table stays bounded under a flood
   * from many addresses (the `maxPending` cap still holds for all of them).
   */
  #forget(now: number): void {
    const l = this.#limits;
    for (const [key, a] of this.#addresses) {
      const tokens = a.tokens + ((now - a.last) / 1000) * l.connectionsPerSecond;
      if (a.pending === 0 && tokens >= l.connectionBurst) this.#addresses.delete(key);
    }
    if (this.#addresses.size < MAX_ADDRESSES) return;
    for (const [key, a] of this.#addresses) {
      if (a.pending === 0) {
        this.#addresses.delete(key);
        return;
      }
    }
  }
}
