/**
 * The browser trainer's scripts: the page (actors/browser/page.ts) and its
 * compute Worker (actors/trainer_worker.ts, the same module a Deno trainer
 * runs), bundled together once per process by actors/browser/bundle.ts.
 *
 * @module
 */
import { type BundledScripts, bundleForBrowser } from "./bundle.ts";

let cached: Promise<BundledScripts> | undefined;

/**
 * The page and Worker scripts (`scripts.page`, `scripts.worker`) and the
 * project modules they hold, bundled on the first call and cached (a failed
 * bundle is retried on the next call).
 *
 * @example
 * ```ts ignore
 * import { joinScripts } from "./assets.ts";
 * const { scripts } = await joinScripts();
 * console.log(scripts.page.length, scripts.worker.length);
 * ```
 */
export function joinScripts(): Promise<BundledScripts> {
  cached ??= bundleForBrowser({
    page: new URL("./page.ts", import.meta.url),
    worker: new URL("../trainer_worker.ts", import.meta.url),
  }).catch((err) => {
    cached = undefined;
    throw err;
  });
  return cached;
}
