/**
 * Bundles the dashboard's browser script (`page.ts` and what it imports) with
 * esbuild, once per process, in memory: a fresh clone serves the page with no
 * build step. esbuild is loaded only when a dashboard is served.
 *
 * @module
 */

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
  const entry = new URL("./page.ts", import.meta.url);
  if (entry.protocol !== "file:") {
    throw new Error(
      `Cannot bundle the dashboard page: its source ${entry.href} is not a local file`,
    );
  }
  // The full specifier, as the library's other npm imports (transport/_deps.ts): the
  // version is deno.json's `esbuild` entry (bundle_test.ts keeps them equal).
  // deno-lint-ignore no-import-prefix
  const esbuild = await import("npm:esbuild@0.28.2");
  try {
    const result = await esbuild.build({
      entryPoints: [decodeURIComponent(entry.pathname)],
      bundle: true,
      write: false,
      format: "iife",
      target: "es2020",
      minify: true,
      logLevel: "silent",
    });
    return result.outputFiles[0].text;
  } catch (err) {
    throw new Error(
      `Cannot bundle the dashboard page with esbuild: ${err instanceof Error ? err.message : err}`,
    );
  } finally {
    await esbuild.stop();
  }
}
