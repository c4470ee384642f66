import { deepEqual, equal, throws } from "@std/assert";
import { getConfig } from "./config.ts";
import { hasOverrides, resolveShape, shapeFlags } from "./shape.ts";
import { parseTrainArgs } from "./train_main.ts";
import { UsageError } from "./cli.ts";

Deno.test("gpt2-small: 12 layers, width 768, 12 heads, context 256, byte vocabulary", () => {
  deepEqual(getConfig("gpt2-small").model, {
    nLayer: 12,
    nHead: 12,
    nEmbd: 768,
    blockSize: 256,
    vocabSize: 256,
  });
});

Deno.test("shape overrides replace the named config's fields and nothing else", () => {
  deepEqual(resolveShape("small", {}), getConfig("small").model);
  deepEqual(resolveShape("small", { nLayer: 4, nEmbd: 128, blockSize: 256 }), {
    nLayer: 4,
    nHead: 4,
    nEmbd: 128,
    blockSize: 256,
    vocabSize: 256,
  });
  deepEqual(shapeFlags({ "n-head": "8", "block-size": "32", other: "x" }), {
    nHead: 8,
    blockSize: 32,
  });
  equal(hasOverrides({}), false);
  equal(hasOverrides({ nLayer: 1 }), true);
});

Deno.test("each bad shape value is refused with a one-line message naming the flag or field", () => {
  const cases: [() => unknown, string][] = [
    [
      () => resolveShape("small", { nHead: 5, nEmbd: 64 }),
      "Invalid --n-head: 5 does not divide --n-embd 64",
    ],
    [
      () => resolveShape("small", { nHead: 5 }),
      "Invalid --n-head: 5 does not divide the n-embd 64 of config small",
    ],
    [
      () => resolveShape("small", { nEmbd: 66 }),
      "Invalid --n-embd: 66 is not a multiple of the n-head 4 of config small",
    ],
    [
      () => resolveShape("small", { nHead: 5 }, "field"),
      "Invalid nHead: 5 does not divide the nEmbd 64 of config small",
    ],
    [
      () => resolveShape("small", { nLayer: 0 }, "field"),
      "Invalid nLayer: 0 (expected an integer in [1, 256])",
    ],
    [
      () => resolveShape("small", { nLayer: 0 }),
      "Invalid --n-layer: 0 (expected an integer in [1, 256])",
    ],
    [
      () => resolveShape("small", { depth: 3 } as never),
      'Invalid model shape: unknown field "depth" (known: nLayer, nHead, nEmbd, blockSize)',
    ],
    [
      () => resolveShape("huge", {}),
      'Unknown model config: "huge" (known: tiny, small, medium, large, gpt2-small)',
    ],
    [
      () => shapeFlags({ "n-embd": "abc" }),
      'Invalid --n-embd: "abc" (expected an integer in [1, 16384])',
    ],
    [
      () => shapeFlags({ "block-size": "0" }),
      'Invalid --block-size: "0" (expected an integer in [1, 16384])',
    ],
    [
      () => shapeFlags({ "block-size": "16385" }),
      'Invalid --block-size: "16385" (expected an integer in [1, 16384])',
    ],
    [
      () => shapeFlags({ "n-head": "-2" }),
      'Invalid --n-head: "-2" (expected an integer in [1, 256])',
    ],
  ];
  for (const [fn, message] of cases) {
    throws(fn, (err: Error) => err instanceof RangeError && err.message === message, message);
  }
});

Deno.test("train flags: the shape flags and --grad-accum, refused as usage errors by name", () => {
  const a = parseTrainArgs([
    "--n-layer",
    "4",
    "--n-embd",
    "128",
    "--n-head",
    "4",
    "--block-size",
    "256",
  ]);
  deepEqual(a.config, { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 256, vocabSize: 256 });
  equal(a.configName, "small");
  equal(a.gradAccum, 1);
  equal(a.batch, 16);
  const b = parseTrainArgs([
    "--config",
    "gpt2-small",
    "--block-size",
    "1024",
    "--grad-accum",
    "4",
    "--batch",
    "2",
  ]);
  deepEqual(b.config, { ...getConfig("gpt2-small").model, blockSize: 1024 });
  equal(b.gradAccum, 4);
  equal(b.batch, 2);
  deepEqual(parseTrainArgs([]).config, getConfig("small").model);
  for (
    const [argv, message] of [
      [["--n-head", "5", "--n-embd", "64"], "Invalid --n-head: 5 does not divide --n-embd 64"],
      [["--grad-accum", "0"], 'Invalid --grad-accum: "0" (expected an integer >= 1)'],
      [["--n-layer", "x"], 'Invalid --n-layer: "x" (expected an integer in [1, 256])'],
    ] as const
  ) {
    throws(
      () => parseTrainArgs([...argv]),
      (err: Error) => err instanceof UsageError && err.message === message,
      message,
    );
  }
});
