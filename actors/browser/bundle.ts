/**
 * Bundles the project's own modules for a browser with esbuild, in memory:
 * the dashboard's script (actors/dashboard/bundle.ts) and the browser
 * trainer's page and compute Worker (actors/browser/assets.ts).
 *
 * Two things esbuild does not know are resolved here:
 *
 * - `npm:name@version[/sub]` specifiers (transport/_deps.ts): the package's
 *   folder in Deno's npm cache, and in it the entry a browser takes (the
 *   `browser`, `import` or `default` condition of its `exports`, else
 *   `module`, else `main`);
 * - {@linkcode BROWSER_SUBSTITUTES}: the few modules that reach Deno's APIs
 *   (files, the environment, `/proc`, an HTTP client with extra roots) have a
 *   browser twin with the same exports, bundled in their place, as a
 *   package's `browser` field does.
 *
 * {@linkcode BundledScripts.modules} lists every project module that went
 * into a bundle, and {@linkcode denoApiUses} holds each of them to "no
 * `Deno.*`" (tests/browser_join_test.ts, `deno task bundle`).
 *
 * @module
 */

/** Project modules (paths from the repository root) and the browser twin bundled in their place. */
export const BROWSER_SUBSTITUTES: Readonly<Record<string, string>> = {
  "actors/_sha256.ts": "actors/_sha256_browser.ts",
  "actors/_worker_thread.ts": "actors/_worker_thread_browser.ts",
  "kernels/_env.ts": "kernels/_env_browser.ts",
  "kernels/corpus.ts": "kernels/corpus_browser.ts",
  "transport/_socket.ts": "transport/_socket_browser.ts",
};

// The repository root, two folders up (a path spelt in one string reads as an import to
// the layering test).
const ROOT = new URL("../", new URL("../", import.meta.url));

/** What {@linkcode bundleForBrowser} made. */
export interface BundledScripts {
  /** Each entry's script, by the name it was given. */
  scripts: Record<string, string>;
  /** The project modules bundled (paths from the repository root), sorted. */
  modules: string[];
}

/** Options of {@linkcode bundleForBrowser}. */
export interface BundleOptions {
  /** "esm" for `<script type="module">` and module Workers (default), "iife" for a plain script. */
  format?: "esm" | "iife";
}

/**
 * Bundles each entry (a name and a module URL inside this repository) with
 * everything it imports into one self-contained script. Needs read and run
 * permissions: esbuild runs as a child process, loaded on first use.
 *
 * @example
 * ```ts ignore
 * import { bundleForBrowser } from "./bundle.ts";
 * const { scripts } = await bundleForBrowser({ page: new URL("./page.ts", import.meta.url) });
 * console.log(scripts.page.length);
 * ```
 *
 * @throws {Error} naming the entry or the import esbuild could not bundle
 */
export function bundleForBrowser(
  entries: Record<string, URL>,
  options: BundleOptions = {},
): Promise<BundledScripts> {
  // One build at a time: each stops esbuild's service when done, which would cut another off.
  const next = queue.then(() => build(entries, options));
  queue = next.catch(() => {});
  return next;
}

let queue: Promise<unknown> = Promise.resolve();

async function build(
  entries: Record<string, URL>,
  options: BundleOptions,
): Promise<BundledScripts> {
  for (const [name, url] of Object.entries(entries)) {
    if (url.protocol !== "file:") {
      throw new Error(`Cannot bundle ${name}: its source ${url.href} is not a local file`);
    }
  }
  // The full specifier, as the library's other npm imports (transport/_deps.ts): the
  // version is deno.json's `esbuild` entry (actors/dashboard/dashboard_test.ts keeps them equal).
  // deno-lint-ignore no-import-prefix
  const esbuild = await import("npm:esbuild@0.28.2");
  try {
    const result = await esbuild.build({
      entryPoints: Object.entries(entries).map(([out, url]) => ({ in: filePath(url), out })),
      outdir: "/",
      absWorkingDir: filePath(ROOT),
      bundle: true,
      write: false,
      metafile: true,
      platform: "browser",
      format: options.format ?? "esm",
      target: "es2022",
      minify: true,
      logLevel: "silent",
      plugins: [projectResolver()],
    });
    const scripts: Record<string, string> = {};
    for (const file of result.outputFiles) {
      scripts[file.path.replace(/^\/|\.js$/g, "")] = file.text;
    }
    // Input paths are relative to the working directory, the repository root.
    const modules = Object.keys(result.metafile.inputs)
      .filter((p) => !p.startsWith("../") && !p.startsWith("/") && !p.includes("node_modules/"))
      .sort();
    return { scripts, modules };
  } catch (err) {
    throw new Error(
      `Cannot bundle ${Object.keys(entries).join(", ")} with esbuild: ${
        err instanceof Error ? err.message : err
      }`,
    );
  } finally {
    await esbuild.stop();
  }
}

function filePath(url: URL): string {
  return decodeURIComponent(url.pathname);
}

/** The esbuild plugin that resolves `npm:` specifiers and puts browser twins in place. */
function projectResolver() {
  const root = filePath(ROOT);
  return {
    name: "decentra-browser",
    setup(build: {
      onResolve(
        o: { filter: RegExp },
        f: (a: { path: string; resolveDir: string }) => Promise<{ path: string } | undefined>,
      ): void;
    }) {
      build.onResolve({ filter: /^npm:/ }, async (a) => ({ path: await npmEntry(a.path) }));
      build.onResolve({ filter: /^\.\.?\// }, (a) => {
        const abs = filePath(new URL(a.path, `file://${a.resolveDir}/`));
        const twin = BROWSER_SUBSTITUTES[abs.slice(root.length)];
        return Promise.resolve(abs.startsWith(root) && twin ? { path: root + twin } : undefined);
      });
    },
  };
}

/** `npm:name@version[/sub]` → the file a browser loads, in Deno's npm cache. */
async function npmEntry(specifier: string): Promise<string> {
  const m = /^npm:\/?((?:@[^/@]+\/)?[^/@]+)@([^/]+)(\/.*)?$/.exec(specifier);
  if (!m) throw new Error(`Cannot bundle ${specifier}: expected npm:name@version[/path]`);
  const [, name, version, sub] = m;
  const dir = await packageDir(`npm:${name}@${version}`, name);
  const pkg = JSON.parse(await Deno.readTextFile(`${dir}/package.json`));
  const key = sub ? `.${sub}` : ".";
  const target = pkg.exports
    ? browserTarget(pkg.exports[key] ?? (key === "." ? pkg.exports : undefined))
    : undefined;
  const entry = target ?? (sub ? `.${sub}` : pkg.module ?? pkg.main ?? "index.js");
  return `${dir}/${entry.replace(/^\.\//, "")}`;
}

/** The target of an `exports` entry under the conditions a browser bundle meets. */
function browserTarget(entry: unknown): string | undefined {
  if (typeof entry === "string") return entry;
  if (!entry || typeof entry !== "object") return undefined;
  for (const condition of ["browser", "import", "default"]) {
    const t = browserTarget((entry as Record<string, unknown>)[condition]);
    if (t) return t;
  }
  return undefined;
}

/** The package's folder in Deno's npm cache (the package is loaded first when it is not yet). */
async function packageDir(specifier: string, name: string): Promise<string> {
  let resolved = import.meta.resolve(specifier);
  if (!resolved.startsWith("file:")) {
    // Until this process loads the package, the specifier resolves to itself.
    await import(specifier);
    resolved = import.meta.resolve(specifier);
  }
  if (!resolved.startsWith("file:")) {
    throw new Error(`Cannot bundle ${specifier}: not in Deno's npm cache`);
  }
  let dir = new URL("./", resolved);
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(await Deno.readTextFile(new URL("package.json", dir)));
      if (pkg.name === name) return filePath(dir).replace(/\/$/, "");
    } catch {
      // No package.json here: try the parent folder.
    }
    dir = new URL("../", dir);
  }
  throw new Error(`Cannot bundle ${specifier}: no package.json of ${name} above ${resolved}`);
}

/** A module's code without its comments (a doc example may well name `Deno.*`). */
export function codeOf(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
}

/**
 * Each of `modules` (paths from the repository root) whose code uses a Deno
 * API, as `path: Deno.x, Deno.y`; empty when a browser can run them all.
 *
 * @example
 * ```ts ignore
 * import { bundleForBrowser, denoApiUses } from "./bundle.ts";
 * const { modules } = await bundleForBrowser({ page: new URL("./page.ts", import.meta.url) });
 * console.log(await denoApiUses(modules)); // []
 * ```
 */
export async function denoApiUses(modules: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const m of modules) {
    const uses = codeOf(await Deno.readTextFile(new URL(m, ROOT))).match(/\bDeno\.\w+/g);
    if (uses) out.push(`${m}: ${[...new Set(uses)].join(", ")}`);
  }
  return out;
}
