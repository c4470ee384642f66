/**
 * A keeper's writer thread: encodes, hashes and commits a round off the
 * keeper's event loop, at the lowest CPU priority (SCHED_IDLE, this thread
 * only) and within a CPU budget while the machine is busy (see
 * _background.ts), so that on a machine whose compute also runs on the CPU
 * (llvmpipe) the trainers' inner steps keep the cores. File operations are
 * synchronous here so that they, too, run on this thread.
 *
 * Protocol: `{ id, dir, retention, state, shared, announce, duty }` in (typed
 * arrays transferred); with `announce` (and `shared`), `{ id, op: "prepared",
 * manifest, files }` as soon as the round is encoded and hashed, before it is
 * written; then `{ id, ok: true, manifest, files, spare, yieldedMs }` out
 * (`yieldedMs`: of the write, the pauses its CPU budget took; file bytes,
 * in SharedArrayBuffers when `shared`, and the state's params and momentum
 * arrays, for reuse, transferred back), or
 * `{ id, ok: false, code, error, write }` (`write`: a CheckpointWriteError).
 * A request with `prepared` (a round another keeper's writer encoded, its
 * files in shared memory) instead of `state` is only written.
 *
 * @module
 */
import { CpuPacer, lowerThisThread } from "./_background.ts";
import {
  CheckpointStore,
  CheckpointWriteError,
  type Manifest,
  type PreparedRound,
  prepareRound,
  type Retention,
  type RoundState,
} from "./store.ts";
import { pacedSyncFs, syncFs } from "./_sync_fs.ts";

export { syncFs };

/** A request to the writer. */
export interface WriteRequest {
  id: number;
  dir: string;
  retention?: Partial<Retention>;
  /** The round to encode, hash and write (or `prepared`). */
  state?: RoundState;
  /** A round encoded already, whose files are in shared memory: only written. */
  prepared?: { manifest: Manifest; files: Record<string, Uint8Array> };
  /** Put the model and state files in SharedArrayBuffers. */
  shared?: boolean;
  /** Post the encoded round (`op: "prepared"`) before writing it; needs `shared`. */
  announce?: boolean;
  /** CPU share of one core while the machine is busy (see `CpuPacer`). */
  duty?: number;
}

interface WorkerScope {
  onmessage: ((ev: MessageEvent<WriteRequest>) => void) | null;
  postMessage(msg: unknown, options?: { transfer?: Transferable[] }): void;
}

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  lowerThisThread();
  let pacer: CpuPacer | undefined;
  const pace = () => pacer?.paceSync();
  const scope = self as unknown as WorkerScope;
  const stores = new Map<string, CheckpointStore>();
  let queue = Promise.resolve();
  scope.onmessage = (ev: MessageEvent<WriteRequest>) => {
    const req = ev.data;
    queue = queue.then(async () => {
      try {
        // A writer thread serves one keeper, whose budget does not change.
        pacer ??= new CpuPacer({ duty: req.duty });
        let store = stores.get(req.dir);
        if (!store) {
          store = new CheckpointStore(req.dir, { retention: req.retention, fs: pacedSyncFs(pace) });
          stores.set(req.dir, store);
        }
        // The files go into shared memory: the keeper and its serving thread read them without
        // a copy on the keeper's event loop.
        const slept = pacer.sleptMs;
        let p: PreparedRound;
        if (req.prepared) {
          const { manifest, files } = req.prepared;
          p = { round: manifest.round, manifest, files: new Map(Object.entries(files)) };
        } else if (req.state) {
          p = await prepareRound(req.state, {
            alloc: req.shared ? (n) => new Uint8Array(new SharedArrayBuffer(n)) : undefined,
            pace,
          });
          if (req.announce && req.shared) {
            // Shared memory: the other keepers of the process write these very bytes.
            scope.postMessage({
              id: req.id,
              op: "prepared",
              manifest: p.manifest,
              files: Object.fromEntries(p.files),
            });
          }
        } else throw new TypeError("Invalid write request: neither a state nor a prepared round");
        const manifest = await store.commit(p);
        const files = Object.fromEntries(p.files);
        // The state's arrays go back too: the keeper assembles the next rounds in them instead
        // of in fresh memory, whose first touch is slow on these machines.
        const vectors = req.state ? [req.state.params, req.state.momentum, req.state.residual] : [];
        const spare = vectors.filter((x): x is Float32Array =>
          x !== undefined && x.byteOffset === 0 && x.byteLength === x.buffer.byteLength
        );
        const transfer = new Set<ArrayBuffer>();
        for (const x of [...p.files.values(), ...spare]) {
          if (x.buffer instanceof ArrayBuffer) transfer.add(x.buffer);
        }
        const yieldedMs = pacer.sleptMs - slept;
        scope.postMessage({ id: req.id, ok: true, manifest, files, spare, yieldedMs }, {
          transfer: [...transfer],
        });
      } catch (err) {
        scope.postMessage({
          id: req.id,
          ok: false,
          write: err instanceof CheckpointWriteError,
          code: err instanceof CheckpointWriteError ? err.code : "EINVAL",
          error: err instanceof Error ? err.message : String(err),
        });
      }
    });
  };
}
