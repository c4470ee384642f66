/**
 * Bundles the dashboard's browser script (`page.ts` and what it imports) with
 * esbuild (actors/browser/bundle.ts), once per process, in memory: a fresh
 * clone serves the page with no build step. esbuild is loaded only when a
 * dashboard is served.
 *
 * @module
 */
import { bundleForBrowser } from "../browser/bundle.ts";

let cached: Promise<string> | undefined;

/**
 * The page script, bundled on the first call and cached (a failed bundle is
 * retried on the next call). Needs read and run permissions: esbuild runs as
 * a child process.
 *
 * @example
 * ```ts ignore
 * const js = await dashboardScript();
 * ```
 */
export function dashboardScript(): Promise<string> {
  cached ??= bundle().catch((err) => {
    cached = undefined;
    throw err;
  });
  return cached;
}

async function bundle(): Promise<string> {
  const { scripts } = await bundleForBrowser(
    { page: new URL("./page.ts", import.meta.url) },
    { format: "iife" },
  );
  return scripts.page;
}
