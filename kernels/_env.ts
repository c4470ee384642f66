/**
 * The process environment, read where the runtime has one (Deno). A browser
 * bundle replaces this module with kernels/_env_browser.ts (see
 * actors/browser/bundle.ts), so that the engine carries no Deno API into a tab.
 *
 * @module
 */

/**
 * The value of environment variable `name`, or undefined when it is unset.
 *
 * @example
 * ```ts
 * import { envVar } from "./_env.ts";
 * console.log(envVar("DENO_WEBGPU_BACKEND") ?? "(unset)");
 * ```
 */
export function envVar(name: string): string | undefined {
  return Deno.env.get(name);
}

/**
 * Gives the GPU drivers a runtime directory when `XDG_RUNTIME_DIR` is unset
 * (Linux only), so that their probe for a Wayland display fails quietly.
 * wgpu opens its GL backend beside Vulkan, Mesa's EGL then asks libwayland for
 * a display, and libwayland prints "error: XDG_RUNTIME_DIR is invalid or not
 * set in the environment." for every WebGPU instance (one per isolate: ten
 * lines in a default `deno task node` on a server or container without a
 * login session). The directory is `$TMPDIR/decentra-runtime-UID` (or /tmp),
 * created mode 0700 and used only while it is this user's and private, as
 * systemd's per-user runtime directory is; otherwise nothing changes.
 *
 * Setting a variable races with a driver reading the environment on another
 * thread, so this runs before any thread may start a driver: at the start of
 * `acquireGpu` and before a trainer starts its compute Worker.
 * Best effort: without `--allow-env`/`--allow-sys` or a writable temp
 * directory it does nothing. Returns the directory set, or undefined.
 *
 * @example
 * ```ts
 * import { ensureRuntimeDir } from "./_env.ts";
 * ensureRuntimeDir();
 * ```
 */
export function ensureRuntimeDir(): string | undefined {
  try {
    if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return undefined;
    const uid = Deno.uid();
    if (uid === null) return undefined;
    const dir = `${Deno.env.get("TMPDIR") || "/tmp"}/decentra-runtime-${uid}`;
    try {
      Deno.mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) return undefined;
    }
    // Another user's directory (or a shared one) could hold a socket we would connect to.
    const st = Deno.lstatSync(dir);
    if (!st.isDirectory || st.uid !== uid || ((st.mode ?? 0o777) & 0o077) !== 0) return undefined;
    Deno.env.set("XDG_RUNTIME_DIR", dir);
    return dir;
  } catch {
    return undefined;
  }
}
