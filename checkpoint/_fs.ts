/**
 * The file operations the store uses ({@linkcode StoreFs}; tests inject
 * failing ones), the real ones ({@linkcode denoFs}), and how a failed
 * operation is named in a {@linkcode CheckpointWriteError}: its OS code and
 * a short hint.
 *
 * @module
 */

/**
 * The file operations the store uses; tests inject failing ones. Every
 * `writeFile` must be durable when it resolves (written and fsynced).
 */
export interface StoreFs {
  /** Creates `path` with `bytes`, fsyncs and closes it. */
  writeFile(path: string, bytes: Uint8Array): Promise<void>;
  /** Reads a whole file. */
  readFile(path: string): Promise<Uint8Array>;
  /** Creates a folder (and its parents). */
  mkdir(path: string): Promise<void>;
  /** Renames (atomically replaces files and symlinks). */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file, symlink or folder tree; missing is fine. */
  remove(path: string): Promise<void>;
  /** Fsyncs a folder, making renames and creations inside it durable. */
  syncDir(path: string): Promise<void>;
  /** Creates a symlink at `path` pointing at `target`. */
  symlink(target: string, path: string): Promise<void>;
  /** Names in a folder (empty when it does not exist). */
  readDir(path: string): Promise<string[]>;
}

/** The real file system. */
export const denoFs: StoreFs = {
  async writeFile(path, bytes) {
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    try {
      let at = 0;
      while (at < bytes.length) at += await f.write(bytes.subarray(at));
      await f.sync();
    } finally {
      f.close();
    }
  },
  readFile: (path) => Deno.readFile(path),
  mkdir: (path) => Deno.mkdir(path, { recursive: true }),
  rename: (from, to) => Deno.rename(from, to),
  async remove(path) {
    try {
      await Deno.remove(path, { recursive: true });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  },
  async syncDir(path) {
    const d = await Deno.open(path, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  },
  symlink: (target, path) => Deno.symlink(target, path),
  async readDir(path) {
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(path)) names.push(e.name);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return [];
      throw err;
    }
    return names;
  },
};

/** The OS error code of a failed file operation ("ENOSPC", "EACCES", ...), "EIO" when unknown. */
export function errCode(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "string" && code) return code;
  if (err instanceof Deno.errors.PermissionDenied) return "EACCES";
  if (err instanceof Deno.errors.NotFound) return "ENOENT";
  return "EIO";
}

/** A short word for the codes a full, read-only or forbidden disk gives. */
export const WRITE_HINT: Readonly<Record<string, string>> = {
  ENOSPC: "disk full",
  EDQUOT: "disk quota exceeded",
  EACCES: "permission denied",
  EPERM: "permission denied",
  EROFS: "read-only file system",
};
