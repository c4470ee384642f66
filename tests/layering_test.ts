/**
 * The folders' layer order, checked against every non-test source file's
 * imports. A layer may import itself and the layers it names in `may`;
 * anything else is an import that runs back up, and the test names the file
 * and the import. README.md ("Architecture") draws the same order.
 *
 * Tools sit on top of every layer wherever they stand: tests/, examples/,
 * mod.ts, and the commands and benchmarks of a folder (`*_main.ts`,
 * `bench*.ts`, `_bench_*.ts`), because a command or a benchmark drives the
 * whole stack under it.
 *
 * @module
 */
import { deepEqual } from "@std/assert";

/** One layer: the folder it is, and the layers it may import. */
interface Layer {
  name: string;
  folder: string;
  may: readonly string[];
}

/** The layer order, lowest first (kernels/ is an engine apart: it imports only itself). */
export const LAYERS: readonly Layer[] = [
  { name: "kernels", folder: "kernels/", may: [] },
  { name: "runtime", folder: "actors/runtime/", may: [] },
  { name: "transport", folder: "transport/", may: ["runtime"] },
  { name: "checkpoint", folder: "checkpoint/", may: ["kernels"] },
  { name: "roles", folder: "actors/", may: ["kernels", "runtime", "transport", "checkpoint"] },
];

const ROOT = new URL("../", import.meta.url);

function isTool(path: string): boolean {
  const base = path.slice(path.lastIndexOf("/") + 1);
  return path.startsWith("tests/") || path.startsWith("examples/") || !path.includes("/") ||
    /_main\.ts$/.test(base) || /^_?bench(_[a-z0-9_]+)?\.ts$/.test(base);
}

/** The layer of a path, the longest folder first; undefined for tools and outside files. */
function layerOf(path: string): Layer | undefined {
  if (isTool(path)) return undefined;
  return [...LAYERS].sort((a, b) => b.folder.length - a.folder.length)
    .find((l) => path.startsWith(l.folder));
}

/** Relative module references of a source: imports, re-exports, dynamic imports, Worker URLs. */
export function relativeImports(source: string): string[] {
  // JSDoc examples import from the module they document; they are no dependency of the code.
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "");
  const found: string[] = [];
  const pattern = /(?:\bfrom\s*|\bimport\s*\(?\s*|new URL\(\s*)(["'])(\.\.?\/[^"']+)\1/g;
  for (const m of code.matchAll(pattern)) found.push(m[2]);
  return found;
}

function resolve(from: string, spec: string): string {
  const url = new URL(spec, new URL(from, ROOT));
  return decodeURIComponent(url.pathname.slice(ROOT.pathname.length));
}

/** Every import of `files` that its layer may not make, as "file imports target (layer -> layer)". */
export function violations(files: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [path, source] of files) {
    const from = layerOf(path);
    if (!from) continue;
    for (const spec of relativeImports(source)) {
      const target = resolve(path, spec);
      // A folder's own commands and Worker entries are part of it for its own files.
      const to =
        target.startsWith(from.folder) && layerOf(target.replace(/[^/]*$/, "x.ts")) === from
          ? from
          : layerOf(target);
      const toName = to?.name ?? (isTool(target) ? "tools" : "outside");
      if (to?.name === from.name || from.may.includes(toName)) continue;
      out.push(`${path} imports ${spec} (${from.name} may not import ${toName})`);
    }
  }
  return out.sort();
}

async function sources(): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(new URL(dir, ROOT))) {
      const path = `${dir}${e.name}`;
      if (e.isDirectory && !["node_modules", "runs", ".git"].includes(e.name)) {
        await walk(`${path}/`);
      } else if (e.isFile && path.endsWith(".ts") && !path.endsWith("_test.ts")) {
        files.set(path, await Deno.readTextFile(new URL(path, ROOT)));
      }
    }
  };
  for (const l of LAYERS) if (l.folder.split("/").length === 2) await walk(l.folder);
  return files;
}

Deno.test("layering: no source file imports a layer above its own", async () => {
  const files = await sources();
  deepEqual(violations(files), []);
});

Deno.test("layering: an import that runs back up is caught and named", () => {
  const files = new Map([
    ["actors/runtime/system.ts", 'import { x } from "../../transport/codec.ts";'],
    ["checkpoint/store.ts", 'import type { A } from "../actors/aggregation.ts";\n'],
    ["transport/remote.ts", 'import { ActorSystem } from "../actors/runtime/system.ts";'],
    ["checkpoint/bench.ts", 'import { run } from "../actors/embedded.ts";'],
    ["kernels/model.ts", '/** ```ts\n import { y } from "../actors/embedded.ts";\n``` */'],
  ]);
  deepEqual(violations(files), [
    "actors/runtime/system.ts imports ../../transport/codec.ts (runtime may not import transport)",
    "checkpoint/store.ts imports ../actors/aggregation.ts (checkpoint may not import roles)",
  ]);
});
