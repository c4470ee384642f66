import { deepEqual, equal, match, ok, rejects, throws } from "@std/assert";
import { getConfig } from "./config.ts";
import { matmul, matmulReference } from "./matmul.ts";
import {
  adapterKey,
  attentionKey,
  MatmulTuner,
  timeMatmul,
  tuneCandidates,
  tuneKey,
  type TuneShape,
} from "./matmul_tune.ts";
import { loadTuner, saveTuner, tunedText } from "./matmul_tune_file.ts";
import { createModel } from "./model.ts";
import { assertClose, randomF32, sameBits, withGpu } from "./_testing.ts";
import type { Gpu } from "./device.ts";

Deno.test("tuneKey names layout, sizes and f16 operands", () => {
  equal(tuneKey({ m: 4096, n: 2304, k: 768, transB: true }), "NT 4096x2304x768");
  equal(
    tuneKey({ m: 768, n: 3072, k: 4096, transA: true, aType: "f16", bType: "f16" }),
    "TN 768x3072x4096 f16a f16b",
  );
  equal(tuneKey({ m: 8, n: 8, k: 8, cType: "f16" }), "NN 8x8x8 f16c");
});

Deno.test("tuneCandidates: tile sizes and split-K on GPUs, the register-blocked pair on CPUs", async () => {
  await withGpu((gpu) => {
    const shape = { m: 64, n: 64, k: 1024, transA: true };
    const list = tuneCandidates(gpu, shape);
    // The heuristic first (64 tiles of 64x64 over a long k: split-K), then the rest once each.
    ok(list[0].startsWith("tile64s"), list.join(","));
    for (
      const v of [
        "tile128",
        "tile128x64",
        "tile64x128",
        "tile64",
        "tile64s2",
        "tile64s4",
        "tile64s8",
        "tile128x64s2",
      ]
    ) {
      ok(list.includes(v), `${v} missing from ${list.join(",")}`);
    }
    ok(!list.includes("tile64s16"), "16 splits of k = 1024 leave 64 per split");
    ok(!list.includes("tile128x64s4"), "tile128x64s4 needs k >= 2048");
    equal(new Set(list).size, list.length);
    return Promise.resolve();
  }, "gpu");
  await withGpu((gpu) => {
    deepEqual(tuneCandidates(gpu, { m: 1024, n: 64, k: 64 }), ["reg32x8v", "reg32x16v"]);
    // f16 operands take the tile variants on any adapter.
    if (gpu.hasF16) {
      ok(tuneCandidates(gpu, { m: 64, n: 64, k: 64, aType: "f16" }).includes("tile64"));
    }
    return Promise.resolve();
  }, "cpu");
});

Deno.test("MatmulTuner measures each shape once, keeps the fastest and its choice computes the product", async () => {
  await withGpu(async (gpu) => {
    const seen: string[] = [];
    const tuner = new MatmulTuner({
      candidates: () => ["tile64", "tile64s2", "tile128x64"],
      sampleMs: 1,
      samples: 2,
      onResult: (r) => seen.push(r.key),
    });
    const shape: TuneShape = { m: 67, n: 40, k: 300, transB: true };
    const results = await tuner.tune(gpu, [shape, { ...shape }, { ...shape, transB: false }]);
    equal(results.length, 2, "the repeated key is measured once");
    deepEqual(seen, ["NT 67x40x300", "NN 67x40x300"]);
    for (const r of results) {
      const names = r.tried.map((t) => t.variant);
      ok(names.includes(r.heuristic) && names.includes("tile64s2"), names.join(","));
      ok(r.tried.every((t) => Number.isFinite(t.ms) && t.ms >= 0), JSON.stringify(r.tried));
      ok(r.ms <= r.heuristicMs, `${r.ms} > ${r.heuristicMs}`);
      equal(r.ms, r.tried.find((t) => t.variant === r.variant)!.ms);
    }
    equal((await tuner.tune(gpu, [shape])).length, 0, "a known shape is not measured again");
    // A variant that cannot be built is an error naming it, and leaves no error scope open.
    await rejects(
      () => timeMatmul(gpu, shape, "bogus"),
      TypeError,
      "Unknown matmul variant: bogus",
    );
    ok((await timeMatmul(gpu, shape, "tile64", { sampleMs: 1, samples: 1 })) >= 0);
    const variant = tuner.variantFor(gpu, shape)!;
    equal(variant, results[0].variant);
    equal(tuner.variantFor(gpu, { ...shape, k: 301 }), undefined);

    const a = randomF32(67 * 300, 1), b = randomF32(40 * 300, 2);
    const ga = gpu.storage(a), gb = gpu.storage(b), gc = gpu.storage(67 * 40);
    gpu.run([matmul(gpu, {
      a: { buffer: ga, length: a.length },
      b: { buffer: gb, length: b.length },
      c: { buffer: gc, length: 67 * 40 },
    }, { ...shape, variant })]);
    const want = matmulReference({ a, b, c: new Float32Array(67 * 40) }, shape);
    assertClose(await gpu.read(gc, 67 * 40), want, { rtol: 1e-5, atol: 1e-5, label: variant });
  }, "gpu");
});

Deno.test("MatmulTuner tables round-trip through JSON and a file; a bad table is refused by what is wrong", async () => {
  await withGpu(async (gpu) => {
    const tuner = new MatmulTuner({ candidates: () => ["tile64"], sampleMs: 1, samples: 1 });
    const shape = { m: 16, n: 16, k: 16 };
    await tuner.tune(gpu, [shape]);
    const json = tuner.toJSON();
    deepEqual(Object.keys(json.adapters), [adapterKey(gpu)]);
    const back = MatmulTuner.fromJSON(JSON.parse(JSON.stringify(json)));
    equal(back.variantFor(gpu, shape), tuner.variantFor(gpu, shape));
    deepEqual(back.results(), [], "loaded choices are not measurements");

    // A choice that cannot run here (an unknown name) is measured again and replaced.
    const edited = MatmulTuner.fromJSON({
      version: 1,
      adapters: { [adapterKey(gpu)]: { [tuneKey(shape)]: "bogus7" } },
    }, {
      candidates: () => ["tile64"],
      sampleMs: 1,
      samples: 1,
    });
    equal(edited.variantFor(gpu, shape), "bogus7");
    equal((await edited.tune(gpu, [shape])).length, 1);
    equal(edited.variantFor(gpu, shape), "tile64");

    const dir = await Deno.makeTempDir();
    try {
      const path = `${dir}/sub/tuning.json`;
      equal((await loadTuner(path)).variantFor(gpu, shape), undefined, "no file: an empty table");
      await saveTuner(path, tuner);
      equal((await loadTuner(path)).variantFor(gpu, shape), tuner.variantFor(gpu, shape));
      await Deno.writeTextFile(path, "{ not json");
      await rejects(() => loadTuner(path), Error, `Cannot use matmul tuning file ${path}`);
      await Deno.writeTextFile(path, JSON.stringify({ version: 2, adapters: {} }));
      await rejects(() => loadTuner(path), Error, "version 2 (expected 1)");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }, "gpu");
  throws(() => MatmulTuner.fromJSON([]), TypeError, "expected an object");
  throws(
    () => MatmulTuner.fromJSON({ version: 1, adapters: [] }),
    TypeError,
    "adapters is not an object",
  );
  throws(
    () => MatmulTuner.fromJSON({ version: 1, adapters: { x: { "NN 1x1x1": "a b" } } }),
    TypeError,
    `adapters["x"]["NN 1x1x1"] is not a variant name`,
  );
  throws(() => new MatmulTuner({ samples: 0 }), RangeError, "Invalid tuner samples: 0");
});

Deno.test("createModel with a tuner measures the model's shapes, builds with the choices and trains like the default", async () => {
  await withGpu(async (gpu) => {
    const config = getConfig("tiny").model;
    const tuner = new MatmulTuner({
      candidates: () => ["tile64", "tile64s2"],
      sampleMs: 1,
      samples: 1,
    });
    const tuned = await createModel(gpu, config, { seed: 3, batch: 2, matmulTuner: tuner });
    // The matmul shapes, then (a GPU-class adapter: flash attention) the attention shape.
    const all = tuner.results();
    equal(all.at(-1)!.key, attentionKey({ b: 2, t: config.blockSize, c: 16, nh: 2 }));
    const results = all.filter((r) => !r.key.startsWith("flash "));
    ok(results.length >= 6, `${results.length} shapes measured`);
    // Every matmul of the step runs the tuner's choice for its shape.
    const labels = tuned.profileDispatches().dispatches.map((d) => d.dispatch.label).filter((l) =>
      l.startsWith("matmul_")
    );
    ok(labels.length > 0);
    const chosen = new Set(results.map((r) => r.variant));
    for (const label of labels) ok(chosen.has(label.split("_")[1]), label);

    const plain = await createModel(gpu, config, { seed: 3, batch: 2 });
    const inputs = Uint8Array.from({ length: 2 * config.blockSize }, (_, i) => (i * 7) % 256);
    const targets = inputs.map((t) => (t + 1) % 256);
    for (let s = 0; s < 3; s++) {
      const a = await tuned.step(inputs, targets, { lr: 1e-3 });
      const b = await plain.step(inputs, targets, { lr: 1e-3 });
      ok(Math.abs(a - b) <= 1e-5 * Math.abs(b), `step ${s}: tuned ${a} vs default ${b}`);
    }
    const again = await createModel(gpu, config, { seed: 3, batch: 2, matmulTuner: tuner });
    equal(tuner.results().length, all.length, "a second model of the same shapes measures nothing");

    // A table whose choices the heuristic never makes: the model builds with them (head size 8
    // is fused by default; the table says split).
    const forced = MatmulTuner.fromJSON({
      version: 1,
      adapters: {
        [adapterKey(gpu)]: Object.fromEntries([
          ...results.map((r) => [r.key, "tile64x128"]),
          [all.at(-1)!.key, "split"],
        ]),
      },
    });
    const other = await createModel(gpu, config, { seed: 3, batch: 2, matmulTuner: forced });
    const otherLabels = other.profileDispatches().dispatches.map((d) => d.dispatch.label)
      .filter((l) => l.startsWith("matmul_"));
    ok(otherLabels.every((l) => l.startsWith("matmul_tile64x128_")), otherLabels.join(", "));
    equal(other.flashKeyPass, "split");
    deepEqual(forced.results(), []);
    const c = await other.step(inputs, targets, { lr: 1e-3 });
    ok(Number.isFinite(c));
    for (const m of [tuned, plain, again, other]) m.dispose();
  }, "gpu");
});

Deno.test("MatmulTuner measures flash attention's key pass both ways and keeps the faster", async () => {
  await withGpu(async (gpu) => {
    const shape = { b: 2, t: 40, c: 128, nh: 2 }; // head size 64: split by default
    const tuner = new MatmulTuner({ sampleMs: 1, samples: 1 });
    equal(tuner.keyPassFor(gpu, shape), undefined);
    const r = (await tuner.tuneAttention(gpu, shape))!;
    equal(r.key, "flash 2x40x128x2");
    equal(r.heuristic, "split");
    match(
      tunedText(r),
      /^tuning attention: flash 2x40x128x2: (fused|split) [\d.]+ ms \(default split /,
    );
    deepEqual(r.tried.map((t) => t.variant), ["fused", "split"]);
    for (const t of r.tried) ok(Number.isFinite(t.ms) && t.ms > 0, `${t.variant}: ${t.ms}`);
    // The heuristic unless the other is more than 2% faster.
    const [fused, split] = r.tried.map((t) => t.ms);
    equal(r.variant, fused < split * 0.98 ? "fused" : "split");
    equal(tuner.keyPassFor(gpu, shape), r.variant);
    equal(await tuner.tuneAttention(gpu, shape), undefined, "measured once");
    // Through JSON, and a value that is not a key pass is measured again.
    const copy = MatmulTuner.fromJSON(JSON.parse(JSON.stringify(tuner.toJSON())));
    equal(copy.keyPassFor(gpu, shape), r.variant);
    const odd = MatmulTuner.fromJSON({
      version: 1,
      adapters: { [adapterKey(gpu)]: { [r.key]: "tile64" } },
    }, { sampleMs: 1, samples: 1 });
    equal(odd.keyPassFor(gpu, shape), undefined);
    ok((await odd.tuneAttention(gpu, shape)) !== undefined);
  }, "gpu");
});

Deno.test("a tuned choice changes bits only through split-K: the unsplit variants sum in k order alike", async () => {
  const product = async (gpu: Gpu, shape: TuneShape, variant: string) => {
    const a = randomF32(shape.m * shape.k, 1), b = randomF32(shape.k * shape.n, 2);
    const c = gpu.storage(shape.m * shape.n);
    gpu.run([matmul(gpu, {
      a: { buffer: gpu.storage(a), length: a.length },
      b: { buffer: gpu.storage(b), length: b.length },
      c: { buffer: c, length: shape.m * shape.n },
    }, { ...shape, variant })]);
    return await gpu.read(c, shape.m * shape.n);
  };
  const shapes: TuneShape[] = [{ m: 96, n: 192, k: 256 }, { m: 64, n: 64, k: 1024, transA: true }];
  await withGpu(async (gpu) => {
    for (const shape of shapes) {
      const base = await product(gpu, shape, "tile64");
      for (const v of ["tile128", "tile128x64", "tile64x128"]) {
        ok(sameBits(await product(gpu, shape, v), base), `${v} at ${tuneKey(shape)}`);
      }
      const split = await product(gpu, shape, "tile64s2");
      ok(!sameBits(split, base), "split-K sums in another order");
      assertClose(split, base, { rtol: 1e-5, atol: 1e-5, label: "tile64s2" });
    }
  }, "gpu");
  await withGpu(async (gpu) => {
    for (const shape of shapes) {
      ok(sameBits(await product(gpu, shape, "reg32x8v"), await product(gpu, shape, "reg32x16v")));
    }
  }, "cpu");
});
