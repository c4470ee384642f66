/**
 * One ask's settlement, whichever way it travels: the promise settles
 * exactly once, by the answer, the timeout or the abort signal, and the
 * timer and the abort listener go with it. On a timeout or an abort the
 * asker is told to give up, so that a remote ask's late reply is dropped.
 *
 * @module
 */

import { AskTimeoutError } from "./ref.ts";

/** Options of {@linkcode openAsk}. */
export interface OpenAskOptions {
  /** Reply timeout in ms, already checked (`Infinity` waits forever). */
  timeoutMs: number;
  /** Aborting settles the ask with the signal's reason (checked not aborted yet). */
  signal?: AbortSignal;
  /** Called when the timeout or the abort settles the ask. */
  giveUp(): void;
}

/** An ask waiting for its answer. */
export interface OpenAsk {
  /** Resolves with the answer; rejects with the failure, timeout or abort reason. */
  promise: Promise<unknown>;
  /** Settles the ask (a defined `error` rejects it); later calls do nothing. */
  settle(error: unknown, value?: unknown): void;
}

/** Opens an ask to `target`, starting its timeout and listening to its signal. */
export function openAsk(target: string, options: OpenAskOptions): OpenAsk {
  const { timeoutMs, signal, giveUp } = options;
  const { promise, resolve, reject } = Promise.withResolvers<unknown>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let done = false;
  const onAbort = () => {
    giveUp();
    settle(signal!.reason);
  };
  const settle = (error: unknown, value?: unknown) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
    if (error !== undefined) reject(error);
    else resolve(value);
  };
  if (timeoutMs !== Infinity) {
    timer = setTimeout(() => {
      giveUp();
      settle(new AskTimeoutError(target, timeoutMs));
    }, timeoutMs);
  }
  signal?.addEventListener("abort", onAbort, { once: true });
  return { promise, settle };
}
