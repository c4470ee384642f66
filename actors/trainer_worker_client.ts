/**
 * The trainer's side of its compute Worker (actors/trainer_worker.ts): it
 * starts the Worker, numbers each request and matches the answer to it,
 * notes the OS thread the Worker reports, and retires the Worker so that the
 * process can exit right after (actors/_worker_thread.ts). The trainer
 * (actors/trainer.ts) decides what to ask; the Worker's death reaches it
 * through `onError`, as a failure for its supervisor.
 *
 * @module
 */
import type { SpareArraysMsg, ThreadHello } from "./trainer_worker.ts";
import { retireWorker } from "./_worker_thread.ts";
import { ensureRuntimeDir } from "../kernels/_env.ts";

/** An answer of the compute Worker: `ok`, or the error it met, and the op's fields. */
export interface WorkerReply {
  /** The request it answers. */
  id: number;
  ok: boolean;
  error?: string;
  [k: string]: unknown;
}

/** Options of a {@linkcode TrainerWorkerClient}. */
export interface TrainerWorkerClientOptions {
  /** Called once if the Worker dies of an uncaught error, with its message. */
  onError(message: string): void;
  /** Takes the arrays the Worker is done with ({@linkcode SpareArraysMsg}; theirs to reuse). */
  onSpare?(arrays: Float32Array[]): void;
  /**
   * The Worker's module (default actors/trainer_worker.ts beside this file;
   * a browser tab gives the URL its host serves the bundled Worker at).
   */
  url?: string | URL;
}

/**
 * A started compute Worker and the requests in flight to it.
 *
 * @example
 * ```ts ignore
 * import { TrainerWorkerClient } from "./trainer_worker_client.ts";
 * const worker = new TrainerWorkerClient({ onError: (m) => console.error(m) });
 * const init = await worker.call({ op: "init", ...engine, dataShard: { index: 0, count: 1 } });
 * await worker.retire();
 * ```
 */
export class TrainerWorkerClient {
  #worker: Worker;
  /** The Worker's OS thread (its first message), waited on when it retires. */
  #thread: number | undefined;
  /** The Worker died of an uncaught error: it cannot answer a close. */
  #dead = false;
  #next = 0;
  #pending = new Map<number, { resolve(v: WorkerReply): void; reject(e: Error): void }>();

  /** Starts the Worker; it loads the engine only when asked ("init"). */
  constructor(options: TrainerWorkerClientOptions) {
    const url = options.url ?? new URL("./trainer_worker.ts", import.meta.url);
    // Before the Worker's driver can read the environment on its own thread.
    ensureRuntimeDir();
    this.#worker = new Worker(String(url), { type: "module" });
    this.#worker.onmessage = (ev: MessageEvent<WorkerReply | ThreadHello | SpareArraysMsg>) => {
      const m = ev.data;
      if (m.op === "thread") {
        this.#thread = (m as ThreadHello).thread;
        return;
      }
      if (m.op === "spare") {
        options.onSpare?.((m as SpareArraysMsg).arrays);
        return;
      }
      const reply = m as WorkerReply;
      const p = this.#pending.get(reply.id);
      this.#pending.delete(reply.id);
      p?.resolve(reply);
    };
    this.#worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.#dead = true;
      options.onError(ev.message);
    };
  }

  /**
   * Sends a request (its `id` is set here) and resolves with the answer.
   *
   * @throws {Error} when the Worker answers that the request failed, or when
   * the Worker is retired before it answers
   */
  call(req: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<WorkerReply> {
    const reqId = ++this.#next;
    return new Promise<WorkerReply>((resolve, reject) => {
      this.#pending.set(reqId, { resolve, reject });
      this.#worker.postMessage({ ...req, id: reqId }, { transfer });
    }).then((r) => {
      if (!r.ok) throw new Error(`Trainer worker failed: ${r.error}`);
      return r;
    });
  }

  /**
   * Sends a message that has no answer (a "merge", taken by the Worker as it
   * arrives, between the requests it is working through).
   */
  post(msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): void {
    this.#worker.postMessage(msg, { transfer });
  }

  /**
   * Fails the requests in flight, then retires the Worker: it releases its
   * model and device, and its thread must be gone before this resolves, since
   * a process exiting while a Worker thread tears down its GL context crashes
   * (see _worker_thread.ts). Bounded well below the trainer's shutdown time.
   */
  async retire(): Promise<void> {
    for (const p of this.#pending.values()) p.reject(new Error("trainer stopped"));
    this.#pending.clear();
    await retireWorker(this.#worker, {
      ...(this.#dead ? {} : { close: () => this.call({ op: "close" }) }),
      ...(this.#thread !== undefined ? { thread: this.#thread } : {}),
    });
  }
}
