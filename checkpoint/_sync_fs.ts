/**
 * The store's file operations as synchronous calls, so that they run on the
 * calling thread: a keeper's low-priority writer and serving threads keep
 * their disk work (and its CPU) at their own priority instead of handing it
 * to the runtime's blocking pool at the normal one.
 *
 * @module
 */
import type { StoreFs } from "./store.ts";
import { PACE_BYTES } from "./_background.ts";

/** Writes, fsyncs and closes a file; `pace` after every {@linkcode PACE_BYTES}. */
function writeFileSync(path: string, bytes: Uint8Array, pace?: () => void): Promise<void> {
  const f = Deno.openSync(path, { write: true, create: true, truncate: true });
  try {
    let at = 0;
    while (at < bytes.length) {
      at += f.writeSync(bytes.subarray(at, pace ? at + PACE_BYTES : bytes.length));
      pace?.();
    }
    f.syncSync();
  } finally {
    f.close();
  }
  return Promise.resolve();
}

/** The real file system, through synchronous calls (on the calling thread). */
export const syncFs: StoreFs = {
  writeFile: (path, bytes) => writeFileSync(path, bytes),
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

/**
 * {@linkcode syncFs}, except that files are read into SharedArrayBuffers,
 * which other threads read without a copy.
 */
export const sharedReadFs: StoreFs = {
  ...syncFs,
  readFile(path) {
    const f = Deno.openSync(path, { read: true });
    try {
      const size = f.statSync().size;
      const out = new Uint8Array(new SharedArrayBuffer(size));
      let at = 0;
      while (at < size) {
        const n = f.readSync(out.subarray(at));
        if (n === null) break;
        at += n;
      }
      return Promise.resolve(at === size ? out : out.subarray(0, at));
    } finally {
      f.close();
    }
  },
};

/**
 * {@linkcode syncFs} whose file writes call `pace` after every
 * {@linkcode PACE_BYTES} (a background thread's CPU budget: copying into the
 * page cache is most of a write's CPU).
 */
export function pacedSyncFs(pace: () => void): StoreFs {
  return { ...syncFs, writeFile: (path, bytes) => writeFileSync(path, bytes, pace) };
}
