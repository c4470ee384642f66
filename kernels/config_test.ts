import { deepEqual, equal, ok, throws } from "@std/assert";
import { CONFIGS, DEFAULT_CONFIG, getConfig, sameConfig, validateConfig } from "./config.ts";
import { countParams } from "./layout.ts";

Deno.test("default config is small: 2 layers, width 64, 4 heads, context 64, batch 16, vocab 256", () => {
  const c = getConfig(DEFAULT_CONFIG);
  equal(c.name, "small");
  deepEqual(c.model, { nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: 256 });
  equal(c.train.batch, 16);
  // ~120k parameters, as the PyTorch baseline of PLATFORM.md.
  ok(Math.abs(countParams(c.model) - 120_000) < 5_000, String(countParams(c.model)));
});

Deno.test("every named config validates", () => {
  for (const c of Object.values(CONFIGS)) validateConfig(c.model);
  ok(CONFIGS.tiny);
});

Deno.test("getConfig rejects an unknown name and lists the known ones", () => {
  throws(() => getConfig("huge"), /Unknown model config: "huge" \(known: tiny, small/);
  throws(() => getConfig("__proto__"), RangeError);
});

Deno.test("validateConfig names the bad field", () => {
  const good = { nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: 256 };
  throws(
    () => validateConfig({ ...good, nHead: 3 }),
    /nEmbd \(64\) must be divisible by nHead \(3\)/,
  );
  throws(() => validateConfig({ ...good, nLayer: 0 }), /nLayer must be an integer/);
  throws(() => validateConfig({ ...good, blockSize: 1.5 }), /blockSize must be an integer/);
  throws(() => validateConfig({ ...good, vocabSize: NaN }), /vocabSize/);
  ok(sameConfig(good, { ...good }));
  ok(!sameConfig(good, { ...good, nHead: 2 }));
});
