/**
 * kernels/corpus.ts in a browser: a tab reads no files, so its host serves
 * the run's corpus already split, and `path` is the URL it serves it under
 * (`<path>/train` and `<path>/val`, the bytes of kernels/corpus.ts's
 * `loadCorpus` on the host). A browser bundle puts this module in place of
 * kernels/corpus.ts (see actors/browser/bundle.ts).
 *
 * @module
 */
import { type Corpus, DataError } from "./data.ts";

/** Options for {@linkcode loadCorpus} in a browser. */
export interface LoadCorpusOptions {
  /** The URL the host serves the corpus under (required: a tab has no default corpus). */
  path?: string;
  /** Unused: the host split the corpus already. */
  valFraction?: number;
}

async function fetchBytes(url: string): Promise<Uint8Array> {
  let res: Response;
  try {
    res = await fetch(url);
  } catch (err) {
    throw new DataError(`Cannot load data: ${url}: ${err instanceof Error ? err.message : err}`);
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new DataError(`Cannot load data: ${url} answered ${res.status}`);
  }
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * Fetches the training and validation streams the host serves under `path`.
 *
 * @example
 * ```ts ignore
 * import { loadCorpus } from "./corpus_browser.ts";
 * const corpus = await loadCorpus({ path: "/join/corpus" });
 * console.log(corpus.train.length, corpus.val.length);
 * ```
 *
 * @throws {DataError} when no URL is given, or the host does not serve it
 */
export async function loadCorpus(options: LoadCorpusOptions = {}): Promise<Corpus> {
  const base = options.path;
  if (!base) throw new DataError("Cannot load data: a browser needs the URL its host serves it at");
  const root = base.replace(/\/$/, "");
  const [train, val] = await Promise.all([fetchBytes(`${root}/train`), fetchBytes(`${root}/val`)]);
  if (train.length === 0) throw new DataError(`Cannot load data: ${root}/train is empty`);
  return { train, val, source: base, documents: 1 };
}
