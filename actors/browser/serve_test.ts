import { deepEqual, equal, ok, rejects } from "@std/assert";
import { Hono } from "hono";
import { mountJoin } from "./serve.ts";
import { JOIN_PATHS } from "./join.ts";
import { loadCorpus } from "../../kernels/corpus_browser.ts";
import { type Corpus, DataError } from "../../kernels/data.ts";

const CORPUS: Corpus = {
  train: new TextEncoder().encode("the training stream"),
  val: new TextEncoder().encode("held out"),
  source: "test",
  documents: 1,
};

/** Serves the join routes on a free port; `corpus` is what the host would load. */
function serveJoin(corpus: () => Promise<Corpus>, warnings: string[] = []) {
  const app = new Hono();
  mountJoin(app, { run: "r<1>", corpus, warn: (m) => warnings.push(m) });
  const { promise, resolve } = Promise.withResolvers<string>();
  const server = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    onListen: (a) => resolve(`http://127.0.0.1:${a.port}`),
  }, app.fetch);
  return { origin: promise, server };
}

Deno.test("join routes: the page names its run, the scripts are bundled, the corpus is the host's", async () => {
  const { origin, server } = serveJoin(() => Promise.resolve(CORPUS));
  try {
    const base = await origin;
    const html = await (await fetch(`${base}${JOIN_PATHS.page}`)).text();
    ok(html.includes('data-run="r&lt;1&gt;"'), "the run id, escaped");
    ok(html.includes(`src="${JOIN_PATHS.script}"`));
    for (const path of [JOIN_PATHS.script, JOIN_PATHS.worker]) {
      const res = await fetch(`${base}${path}`);
      equal(res.status, 200, path);
      equal(res.headers.get("content-type"), "text/javascript; charset=utf-8");
      ok((await res.text()).length > 1000, path);
    }
    // The browser twin of loadCorpus reads what the routes serve (fetch works in Deno too).
    const corpus = await loadCorpus({ path: `${base}${JOIN_PATHS.corpus}` });
    deepEqual([corpus.train, corpus.val], [CORPUS.train, CORPUS.val]);
    await rejects(
      () => loadCorpus({ path: `${base}/nowhere` }),
      DataError,
      `Cannot load data: ${base}/nowhere/train answered 404`,
    );
    await rejects(() => loadCorpus(), DataError, "a browser needs the URL");
  } finally {
    await server.shutdown();
  }
});

Deno.test("join routes: a corpus that cannot be loaded is a 500 naming why, and is tried again", async () => {
  const warnings: string[] = [];
  let calls = 0;
  const { origin, server } = serveJoin(() => {
    calls++;
    return Promise.reject(new DataError("Cannot load data: /nope does not exist"));
  }, warnings);
  try {
    const base = await origin;
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${base}${JOIN_PATHS.corpus}/train`);
      equal(res.status, 500);
      equal(await res.text(), "Cannot load data: /nope does not exist");
    }
    equal(calls, 2, "a failed load is not cached");
    ok(warnings.includes("Cannot load data: /nope does not exist"));
  } finally {
    await server.shutdown();
  }
});
