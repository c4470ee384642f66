/**
 * A keeper's writer thread: encodes, hashes and commits a round off the
 * keeper's event loop, at the lowest CPU priority (nice 19, this thread
 * only), so that on a machine whose compute also runs on the CPU (llvmpipe)
 * the trainers' inner steps keep the cores. File operations are synchronous
 * here so that they, too, run on this thread.
 *
 * Protocol: `{ id, dir, retention, state }` in (typed arrays transferred);
 * `{ id, ok: true, manifest, files, spare }` out (file bytes and the state's
 * params and momentum arrays, for reuse, transferred back), or
 * `{ id, ok: false, code, error, write }` (`write`: a CheckpointWriteError).
 *
 * @module
 */
import { setPriority } from "node:os";
import {
  CheckpointStore,
  CheckpointWriteError,
  prepareRound,
  type Retention,
  type RoundState,
  type StoreFs,
} from "./store.ts";

/** A request to the writer. */
export interface WriteRequest {
  id: number;
  dir: string;
  retention?: Partial<Retention>;
  state: RoundState;
}

/** The real file system, through synchronous calls (on the calling thread). */
export const syncFs: StoreFs = {
  writeFile(path, bytes) {
    const f = Deno.openSync(path, { write: true, create: true, truncate: true });
    try {
      let at = 0;
      while (at < bytes.length) at += f.writeSync(bytes.subarray(at));
      f.syncSync();
    } finally {
      f.close();
    }
    return Promise.resolve();
  },
  readFile: (path) => Promise.resolve(Deno.readFileSync(path)),
  mkdir: (path) => Promise.resolve(Deno.mkdirSync(path, { recursive: true })),
  rename: (from, to) => Promise.resolve(Deno.renameSync(from, to)),
  remove(path) {
    try {
      Deno.removeSync(path, { recursive: true });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    return Promise.resolve();
  },
  syncDir(path) {
    const d = Deno.openSync(path, { read: true });
    try {
      d.syncSync();
    } finally {
      d.close();
    }
    return Promise.resolve();
  },
  symlink: (target, path) => Promise.resolve(Deno.symlinkSync(target, path)),
  readDir(path) {
    try {
      return Promise.resolve([...Deno.readDirSync(path)].map((e) => e.name));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return Promise.resolve([]);
      throw err;
    }
  },
};

interface WorkerScope {
  onmessage: ((ev: MessageEvent<WriteRequest>) => void) | null;
  postMessage(msg: unknown, options?: { transfer?: Transferable[] }): void;
}

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  try {
    // On Linux this lowers this thread only (nice values are per thread).
    setPriority(0, 19);
  } catch {
    // Not permitted here: run at the normal priority.
  }
  const scope = self as unknown as WorkerScope;
  const stores = new Map<string, CheckpointStore>();
  let queue = Promise.resolve();
  scope.onmessage = (ev: MessageEvent<WriteRequest>) => {
    const req = ev.data;
    queue = queue.then(async () => {
      try {
        let store = stores.get(req.dir);
        if (!store) {
          store = new CheckpointStore(req.dir, { retention: req.retention, fs: syncFs });
          stores.set(req.dir, store);
        }
        const p = await prepareRound(req.state);
        const manifest = await store.commit(p);
        const files = Object.fromEntries(p.files);
        // The state's arrays go back too: the keeper assembles the next rounds in them instead
        // of in fresh memory, whose first touch is slow on these machines.
        const spare = [req.state.params, req.state.momentum].filter((x) =>
          x.byteOffset === 0 && x.byteLength === x.buffer.byteLength
        );
        const transfer = new Set<ArrayBuffer>([
          ...[...p.files.values()].map((b) => b.buffer as ArrayBuffer),
          ...spare.map((x) => x.buffer as ArrayBuffer),
        ]);
        scope.postMessage({ id: req.id, ok: true, manifest, files, spare }, {
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
