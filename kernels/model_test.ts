/**
 * The GPU model against the plain-TypeScript oracle (kernels/model_reference.ts)
 * and against central finite differences of the oracle's float64 forward pass.
 */
import { deepEqual, equal, ok, rejects, throws } from "@std/assert";
import { getConfig, type GptConfig } from "./config.ts";
import { createModel } from "./model.ts";
import { initParams } from "./init.ts";
import { pipelinedSteps } from "./pipeline.ts";
import { referenceBackward, referenceForward } from "./model_reference.ts";
import { adamwRef, gradNormRef } from "./reference.ts";
import {
  assertClose,
  assertGradsClose,
  perturbed,
  randomU32,
  rng,
  sameBits,
  withGpu,
} from "./_testing.ts";

const tiny = getConfig("tiny").model;
/** Odd sizes: 1 layer, width 24, 3 heads (head size 8), context 7, vocabulary 13. */
const odd: GptConfig = { nLayer: 1, nHead: 3, nEmbd: 24, blockSize: 7, vocabSize: 13 };

/**
 * Odd sizes over 536 tokens: enough that the GPU family's weight gradients (k = tokens, small
 * outputs) take split-K, with T not a multiple of any attention tile.
 */
const oddLong: GptConfig = { nLayer: 1, nHead: 2, nEmbd: 40, blockSize: 67, vocabSize: 13 };

const CASES = [
  ["tiny", tiny, 2, undefined],
  ["odd shapes", odd, 3, undefined],
  // The kernels a real GPU runs (flash attention, tile and split-K matmuls), forced here.
  ["odd shapes with the GPU kernel family", oddLong, 8, "gpu"],
] as const;

for (const [label, config, batch, adapterClass] of CASES) {
  Deno.test(`GPU forward and backward match model_reference on ${label}`, async () => {
    await withGpu(async (gpu) => {
      const { model, params } = await perturbed(gpu, config, { batch, seed: 5, precision: "f32" });
      const n = batch * config.blockSize;
      const inputs = randomU32(n, 1, config.vocabSize);
      const targets = randomU32(n, 2, config.vocabSize);
      const gpuOut = await model.computeGradients(inputs, targets);
      const ref = referenceBackward(config, params, inputs, targets, { batch });
      ok(Math.abs(gpuOut.loss - ref.loss) <= 1e-5 * ref.loss, `loss ${gpuOut.loss} vs ${ref.loss}`);
      assertGradsClose(model.layout.views, gpuOut.grads, ref.grads, { rtol: 1e-3, atol: 2e-6 });
      // Padding between views gets no gradient.
      for (let i = 0; i < gpuOut.grads.length; i++) {
        if (
          ref.grads[i] === 0 &&
          !model.layout.views.some((v) => i >= v.offset && i < v.offset + v.length)
        ) {
          equal(gpuOut.grads[i], 0, `padding ${i}`);
        }
      }
      const evalLoss = await model.evalLoss(inputs, targets);
      ok(Math.abs(evalLoss - ref.loss) <= 1e-5 * ref.loss, `eval ${evalLoss} vs ${ref.loss}`);
      if (adapterClass === "gpu") {
        equal(model.attention, "flash");
        const labels = model.profileDispatches().dispatches.map((d) => d.dispatch.label);
        ok(labels.some((l) => /^matmul_tile\d+(x\d+)?s\d+_/.test(l)), `no split-K in ${labels}`);
      }
      model.dispose();
    }, adapterClass);
  });
}

Deno.test("gradient check: GPU and reference gradients agree with central finite differences (tiny)", async () => {
  await withGpu(async (gpu) => {
    const batch = 2;
    const { model, params } = await perturbed(gpu, tiny, { batch, seed: 9 });
    const n = batch * tiny.blockSize;
    const inputs = randomU32(n, 3, tiny.vocabSize);
    const targets = randomU32(n, 4, tiny.vocabSize);
    const { grads: gpuGrads } = await model.computeGradients(inputs, targets);
    const p64 = Float64Array.from(params);
    const ref = referenceBackward(tiny, p64, inputs, targets, { batch });
    const h = 1e-5;
    const pick = rng(77);
    let checked = 0;
    let sumSqDiff = 0;
    let sumSq = 0;
    for (const v of model.layout.views) {
      // 6 elements per tensor; for wte, rows of tokens that occur get real gradients too.
      const idx = new Set<number>();
      while (idx.size < Math.min(6, v.length)) idx.add(v.offset + Math.floor(pick(0, v.length)));
      if (v.name === "wte.weight") idx.add(v.offset + inputs[0] * tiny.nEmbd + 1);
      for (const i of idx) {
        const save = p64[i];
        p64[i] = save + h;
        const lp = referenceForward(tiny, p64, inputs, targets, { batch }).loss;
        p64[i] = save - h;
        const lm = referenceForward(tiny, p64, inputs, targets, { batch }).loss;
        p64[i] = save;
        const fd = (lp - lm) / (2 * h);
        const refErr = Math.abs(ref.grads[i] - fd);
        ok(
          refErr <= 1e-8 + 1e-6 * Math.abs(fd),
          `${v.name}[${i - v.offset}]: reference ${ref.grads[i]} vs fd ${fd}`,
        );
        const gpuErr = Math.abs(gpuGrads[i] - fd);
        ok(
          gpuErr <= 2e-6 + 1e-3 * Math.abs(fd),
          `${v.name}[${i - v.offset}]: GPU ${gpuGrads[i]} vs fd ${fd}`,
        );
        sumSqDiff += (gpuGrads[i] - fd) ** 2;
        sumSq += fd ** 2;
        checked++;
      }
    }
    ok(checked >= 6 * model.layout.views.length);
    const rel = Math.sqrt(sumSqDiff / sumSq);
    ok(rel < 1e-4, `relative L2 error of GPU gradients vs finite differences: ${rel}`);
    model.dispose();
  });
});

Deno.test("a step applies clipped AdamW to the GPU gradients (decay on 2-D tensors only)", async () => {
  await withGpu(async (gpu) => {
    const batch = 2;
    const model = await createModel(gpu, tiny, {
      seed: 3,
      batch,
      weightDecay: 0.1,
      maxGradNorm: 0.5,
    });
    const n = batch * tiny.blockSize;
    const inputs = randomU32(n, 5, 256);
    const targets = randomU32(n, 6, 256);
    const before = await model.getParams();
    const { loss, grads } = await model.computeGradients(inputs, targets);
    const stepLoss = await model.step(inputs, targets, { lr: 1e-2 });
    equal(stepLoss, loss);
    const after = await model.getParams();
    const norm = new Float64Array(1);
    gradNormRef({ grads, out: norm }, { n: grads.length });
    ok(Math.abs(model.lastGradNorm - norm[0]) <= 1e-5 * norm[0]);
    ok(norm[0] > 0.5, "the test needs clipping to be active");
    const expected = Float64Array.from(before);
    const m = new Float64Array(before.length);
    const v = new Float64Array(before.length);
    const hyper = [1e-2, 0.9, 0.95, 1e-8, 1, 0.5];
    const L = model.layout;
    adamwRef({ params: expected, grads, m, v, norm, hyper }, {
      n: L.decayRegion.length,
      weightDecay: 0.1,
    });
    adamwRef({ params: expected, grads, m, v, norm, hyper }, {
      n: L.noDecayRegion.length,
      offset: L.noDecayRegion.offset,
      weightDecay: 0,
    });
    assertClose(after, expected, { rtol: 1e-5, atol: 1e-6, label: "params after one step" });
    equal(model.optimizerStep, 1);
    model.resetOptimizer();
    equal(model.optimizerStep, 0);
    model.dispose();
  });
});

Deno.test("training is deterministic: same seed and batches give bit-identical parameters", async () => {
  await withGpu(async (gpu) => {
    const batch = 2;
    const n = batch * tiny.blockSize;
    const run = async () => {
      const model = await createModel(gpu, tiny, { seed: 11, batch });
      const losses: number[] = [];
      for (let s = 0; s < 15; s++) {
        losses.push(await model.step(randomU32(n, 1, 256), randomU32(n, 2, 256), { lr: 1e-2 }));
      }
      const p = await model.getParams();
      model.dispose();
      return { p, losses };
    };
    const a = await run();
    const b = await run();
    ok(sameBits(a.p, b.p), "parameters differ between identical runs");
    deepEqual(a.losses, b.losses);
    ok(a.losses[14] < a.losses[0] - 0.5, `loss did not fall on a repeated batch: ${a.losses}`);
  });
});

Deno.test("pipelined steps give the losses and bits of one-at-a-time steps; a failure stops them", async () => {
  await withGpu(async (gpu) => {
    const batch = 2;
    const n = batch * tiny.blockSize;
    const batches = Array.from({ length: 9 }, (_, s) => ({
      inputs: randomU32(n, 10 + s, 256),
      targets: randomU32(n, 40 + s, 256),
      lr: 1e-2 * (1 + (s % 3)),
    }));
    const sequential = await createModel(gpu, tiny, { seed: 5, batch });
    const want: number[] = [];
    for (const b of batches) want.push(await sequential.step(b.inputs, b.targets, { lr: b.lr }));
    for (const depth of [2, 3]) {
      const piped = await createModel(gpu, tiny, { seed: 5, batch });
      const got: number[] = [];
      let most = 0;
      await pipelinedSteps(piped, batches.length, (i) => {
        most = Math.max(most, piped.stepsInFlight + 1);
        return batches[i];
      }, (i, loss) => {
        equal(i, got.length);
        got.push(loss);
      }, depth);
      deepEqual(got, want);
      equal(most, depth, `at most ${depth} steps should be in flight`);
      equal(piped.stepsInFlight, 0);
      ok(sameBits(await piped.getParams(), await sequential.getParams()), `depth ${depth} differs`);
      piped.dispose();
    }
    // Without `done` the steps still run (and are awaited) in order.
    const quiet = await createModel(gpu, tiny, { seed: 5, batch });
    await pipelinedSteps(quiet, batches.length, (i) => batches[i]);
    equal(quiet.stepsInFlight, 0);
    ok(sameBits(await quiet.getParams(), await sequential.getParams()), "no-done run differs");
    quiet.dispose();
    // A throwing `done` stops submitting: only the steps already in flight run after it.
    const stopped = await createModel(gpu, tiny, { seed: 5, batch });
    let submitted = 0;
    await rejects(
      pipelinedSteps(stopped, batches.length, (i) => {
        submitted++;
        return batches[i];
      }, (i) => {
        if (i === 2) throw new Error("diverged at 2");
      }, 2),
      /diverged at 2/,
    );
    equal(submitted, 4);
    equal(stopped.stepsInFlight, 0);
    await rejects(
      pipelinedSteps(stopped, 1, () => batches[0], undefined, 0),
      /Invalid pipeline depth/,
    );
    stopped.dispose();
    sequential.dispose();
  });
});

Deno.test("model API: params round trip, partial-batch eval, and clear errors on bad input", async () => {
  await withGpu(async (gpu) => {
    const batch = 3;
    const model = await createModel(gpu, tiny, { seed: 2, batch });
    equal(model.paramLength, model.layout.totalLength);
    ok(model.paramCount < model.paramLength);
    const p = initParams(tiny, 42);
    model.setParams(p);
    deepEqual(await model.getParams(), p);
    ok(model.paramBuffer.size >= p.byteLength);
    const T = tiny.blockSize;
    const inputs = randomU32(batch * T, 8, 256);
    const targets = randomU32(batch * T, 9, 256);
    const all = await model.evalLosses(inputs, targets);
    const first = await model.evalLosses(inputs.subarray(0, T), targets.subarray(0, T));
    deepEqual(first, all.subarray(0, T));
    const ref = referenceForward(tiny, p, inputs.subarray(0, T), targets.subarray(0, T), {
      batch: 1,
    });
    assertClose(first, ref.acts.losses, { rtol: 1e-5, atol: 1e-6, label: "row losses" });
    const bytes = new Uint8Array(inputs);
    equal(
      await model.evalLoss(bytes, new Uint8Array(targets)),
      await model.evalLoss(inputs, targets),
    );
    const bad = inputs.slice();
    bad[4] = 256;
    await rejects(() => model.step(bad, targets, { lr: 1e-3 }), /token 256 at 4 >= vocabulary 256/);
    await rejects(
      () => model.step(inputs.subarray(1), targets, { lr: 1e-3 }),
      /Invalid step inputs/,
    );
    await rejects(
      () => model.step(inputs.subarray(0, T), targets.subarray(0, T), { lr: 1e-3 }),
      /the model's batch is 3/,
    );
    await rejects(() => model.step(inputs, targets, { lr: NaN }), /Invalid learning rate/);
    throws(
      () => model.setParams(new Float32Array(5)),
      /expected a Float32Array of \d+ floats, got 5/,
    );
    model.dispose();
    await rejects(() => model.evalLoss(inputs, targets), /disposed/);
  });
});
