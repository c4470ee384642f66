/**
 * The routes a host serves for browser trainers, next to its dashboard:
 * `GET /join` (the page), `/join/page.js` and `/join/worker.js` (bundled on
 * first use, actors/browser/assets.ts), and the run's corpus, already split as
 * every trainer splits it, at `/join/corpus/train` and `/join/corpus/val`
 * (nothing comes from the internet).
 *
 * @module
 */
import type { Hono } from "../../transport/_deps.ts";
import type { Corpus } from "../../kernels/data.ts";
import { joinScripts } from "./assets.ts";
import { JOIN_PATHS } from "./join.ts";
import { joinPageHtml } from "./shell.ts";

/** Options of {@linkcode mountJoin}. */
export interface JoinRouteOptions {
  /** The run's id, written into the page (the handshake signs it). */
  run: string;
  /** The run's corpus (loaded on the first request for it). */
  corpus: () => Promise<Corpus>;
  /** Where a bundling or corpus failure is told. */
  warn?: (message: string) => void;
}

const JS = { "content-type": "text/javascript; charset=utf-8" };
const BYTES = { "content-type": "application/octet-stream" };

/**
 * Mounts the join routes on `app` and starts bundling, so that the first page
 * load is quick and a bundling failure shows in the run's log at once.
 *
 * @example
 * ```ts ignore
 * mountJoin(app, { run: "demo", corpus: () => loadCorpus() });
 * ```
 */
export function mountJoin(app: Hono, options: JoinRouteOptions): void {
  const warn = (err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    options.warn?.(message);
    return message;
  };
  joinScripts().catch(warn);
  let corpus: Promise<Corpus> | undefined;
  const stream = async (part: "train" | "val") => {
    corpus ??= options.corpus().catch((err) => {
      corpus = undefined;
      throw err;
    });
    return (await corpus)[part];
  };
  app.get(JOIN_PATHS.page, (c) => c.html(joinPageHtml(options.run)));
  for (const name of ["page", "worker"] as const) {
    app.get(JOIN_PATHS[name === "page" ? "script" : "worker"], async (c) => {
      try {
        return c.body((await joinScripts()).scripts[name], 200, JS);
      } catch (err) {
        return c.text(warn(err), 500);
      }
    });
  }
  for (const part of ["train", "val"] as const) {
    app.get(`${JOIN_PATHS.corpus}/${part}`, async (c) => {
      try {
        const bytes = await stream(part);
        return c.body(bytes as Uint8Array<ArrayBuffer>, 200, BYTES);
      } catch (err) {
        return c.text(warn(err), 500);
      }
    });
  }
}
