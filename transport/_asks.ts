/**
 * Ask correlation on one channel: each ask gets an id, its reply or error
 * envelope names that id in `corr`, and the ask settles exactly once, by
 * that answer, its timeout, its abort signal, or the channel closing. Kept
 * apart from the channel because the bookkeeping of a pending ask (timer,
 * abort listener) is the same whatever carries the envelopes.
 *
 * @module
 */
import { AskTimeoutError } from "../actors/runtime/ref.ts";
import type { Envelope, ErrorPayload } from "./envelope.ts";
import { RemoteError } from "./errors.ts";
import type { AskOptions } from "./_channel_options.ts";

type Timer = ReturnType<typeof setTimeout>;

interface PendingAsk {
  to: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer?: Timer;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** The asks of one channel still waiting for their answer. */
export class PendingAsks {
  #pending = new Map<number, PendingAsk>();
  #askId = 0;

  /**
   * Registers an ask to `to` and calls `post` with its id to send it. Resolves
   * with the answer's payload; rejects with {@linkcode RemoteError} for an
   * error answer, {@linkcode AskTimeoutError} after the timeout (default
   * `defaultTimeoutMs`), the signal's reason on abort, and whatever `post`
   * throws.
   */
  ask<R>(
    to: string,
    options: AskOptions,
    defaultTimeoutMs: number,
    post: (id: number) => void,
  ): Promise<R> {
    // An ask aborted before it starts must leave nothing behind: no timer
    // that would later reject unheard and hold the process open.
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    const id = this.#askId++;
    const { promise, resolve, reject } = Promise.withResolvers<R>();
    const pending: PendingAsk = { to, resolve: resolve as (v: unknown) => void, reject };
    const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
    if (Number.isFinite(timeoutMs)) {
      pending.timer = setTimeout(() => {
        this.#settle(id, pending);
        reject(new AskTimeoutError(to, timeoutMs));
      }, timeoutMs);
    }
    if (options.signal) {
      pending.signal = options.signal;
      pending.onAbort = () => {
        this.#settle(id, pending);
        reject(options.signal!.reason);
      };
      options.signal.addEventListener("abort", pending.onAbort, { once: true });
    }
    this.#pending.set(id, pending);
    try {
      post(id);
    } catch (err) {
      this.#settle(id, pending);
      return Promise.reject(err);
    }
    return promise;
  }

  /**
   * Settles the ask a reply or error envelope answers. False when it answers
   * none still pending (not an answer, or one to an ask that timed out).
   */
  answer(env: Envelope): boolean {
    if ((env.kind !== "reply" && env.kind !== "error") || env.corr === undefined) return false;
    const pending = this.#pending.get(env.corr);
    if (!pending) return false;
    this.#settle(env.corr, pending);
    if (env.kind === "reply") pending.resolve(env.payload);
    else {
      const p = env.payload as ErrorPayload;
      pending.reject(new RemoteError(p.code, `Ask to ${pending.to} failed: ${p.message}`));
    }
    return true;
  }

  /** Rejects every pending ask with the error `failure` makes for its target. */
  failAll(failure: (to: string) => Error): void {
    const pending = [...this.#pending.entries()];
    for (const [id, p] of pending) {
      this.#settle(id, p);
      p.reject(failure(p.to));
    }
  }

  #settle(id: number, pending: PendingAsk): void {
    this.#pending.delete(id);
    if (pending.timer !== undefined) clearTimeout(pending.timer);
    if (pending.onAbort) pending.signal!.removeEventListener("abort", pending.onAbort);
  }
}
