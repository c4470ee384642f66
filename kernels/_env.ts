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
