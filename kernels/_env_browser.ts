/**
 * kernels/_env.ts in a browser: a tab has no process environment.
 *
 * @module
 */

/**
 * Always undefined: a browser has no environment variables.
 *
 * @example
 * ```ts
 * import { envVar } from "./_env_browser.ts";
 * console.log(envVar("DENO_WEBGPU_BACKEND")); // undefined
 * ```
 */
export function envVar(_name: string): string | undefined {
  return undefined;
}

/**
 * Nothing to do: a tab's GPU process is the browser's.
 *
 * @example
 * ```ts
 * import { ensureRuntimeDir } from "./_env_browser.ts";
 * ensureRuntimeDir(); // undefined
 * ```
 */
export function ensureRuntimeDir(): string | undefined {
  return undefined;
}
