/**
 * The model's f16 precision (f16 matmul inputs, f32 sums, master weights,
 * gradients and AdamW) against the float64 oracle run on the same f16-rounded
 * matmul inputs, against the f32 model over a few training steps, and its
 * default, refusal and memory plan. On lavapipe, which has `shader-f16`.
 */
import { equal, ok, throws } from "@std/assert";
import type { Gpu } from "./device.ts";
import { getConfig, type GptConfig } from "./config.ts";
import { createModel } from "./model.ts";
import { resolvePrecision } from "./model_options.ts";
import { referenceBackward } from "./model_reference.ts";
import { planModel } from "./limits.ts";
import { assertGradsClose, perturbed, randomU32, withGpu } from "./_testing.ts";

/** Odd sizes: T = 67 is not a multiple of any matmul or attention tile; head size 20. */
const odd: GptConfig = { nLayer: 2, nHead: 2, nEmbd: 40, blockSize: 67, vocabSize: 13 };

// Both kernel families: CPU adapters' blocked attention, and the GPU family (flash attention,
// split-K weight gradients) forced here.
for (const adapterClass of ["cpu", "gpu"] as const) {
  Deno.test(`f16 model: loss and every gradient match model_reference on f16-rounded matmul inputs (odd shape, batch 1, ${adapterClass} kernels)`, async () => {
    await withGpu(async (gpu) => {
      if (!gpu.hasF16) {
        throw new Error("this test needs an adapter with shader-f16 (lavapipe has it)");
      }
      const { model, params: p } = await perturbed(gpu, odd, {
        seed: 3,
        batch: 1,
        precision: "f16",
      });
      equal(model.precision, "f16");
      const inputs = randomU32(odd.blockSize, 1, odd.vocabSize);
      const targets = randomU32(odd.blockSize, 2, odd.vocabSize);
      const gpuOut = await model.computeGradients(inputs, targets);
      const ref = referenceBackward(odd, p, inputs, targets, { batch: 1, halfMatmulInputs: true });
      // The GPU computes the activations in f32 before rounding them to f16, the oracle in f64:
      // where the two straddle an f16 rounding boundary they round one f16 ulp (2^-11) apart,
      // which moves a small gradient by more than the f32 model's bounds (1e-3, 2e-6). Measured
      // here: loss 9e-7 relative, the worst gradient at 0.45 of the bounds below. Against the
      // f32 oracle the loss is 6.5e-6 off and the worst gradient at 2x the bounds, so these
      // bounds tell the two apart.
      ok(Math.abs(gpuOut.loss - ref.loss) <= 3e-6 * ref.loss, `loss ${gpuOut.loss} vs ${ref.loss}`);
      assertGradsClose(model.layout.views, gpuOut.grads, ref.grads, { rtol: 5e-3, atol: 2e-5 });
      const f32 = referenceBackward(odd, p, inputs, targets, { batch: 1 });
      ok(
        Math.abs(gpuOut.loss - ref.loss) < Math.abs(gpuOut.loss - f32.loss),
        `f16 loss ${gpuOut.loss}: f16 oracle ${ref.loss}, f32 oracle ${f32.loss}`,
      );
      model.dispose();
    }, adapterClass);
  });
}

Deno.test("f16 training: a few steps' losses stay within 0.5% of the f32 model's", async () => {
  await withGpu(async (gpu) => {
    const config = getConfig("tiny").model;
    const batch = 4;
    const make = (precision: "f32" | "f16") =>
      createModel(gpu, config, { seed: 7, batch, precision });
    const m16 = await make("f16");
    const m32 = await make("f32");
    const n = batch * config.blockSize;
    const worst = { step: -1, rel: 0 };
    for (let step = 0; step < 8; step++) {
      const inputs = randomU32(n, 10 + step, 64);
      const targets = inputs.map((t) => (t * 7 + 3) % 64);
      const l16 = await m16.step(inputs, targets, { lr: 1e-2 });
      const l32 = await m32.step(inputs, targets, { lr: 1e-2 });
      const rel = Math.abs(l16 - l32) / l32;
      if (rel > worst.rel) Object.assign(worst, { step, rel });
    }
    ok(worst.rel < 5e-3, `step ${worst.step}: f16 loss ${worst.rel} relative from f32`);
    // Yet the two did not run the same arithmetic.
    const [p16, p32] = [await m16.getParams(), await m32.getParams()];
    ok(p16.some((x, i) => x !== p32[i]), "f16 and f32 parameters are bit-identical");
    m16.dispose();
    m32.dispose();
  });
});

Deno.test("f16 precision: f32 unless asked for, on every adapter class; a device without shader-f16 refuses it by name", async () => {
  // lavapipe has shader-f16: still f32 by default, as the CPU adapter it is and taken for a GPU.
  for (const [adapterClass, want] of [["cpu", "f32"], ["gpu", "f32"]] as const) {
    await withGpu(async (gpu) => {
      const model = await createModel(gpu, getConfig("tiny").model, { batch: 1 });
      equal(model.precision, want);
      model.dispose();
    }, adapterClass);
  }
  const adapter = { description: "test adapter", backend: "gl" } as Gpu["adapter"];
  equal(resolvePrecision({ isCpu: false, hasF16: true, adapter }, undefined), "f32");
  equal(resolvePrecision({ isCpu: true, hasF16: true, adapter }, undefined), "f32");
  equal(resolvePrecision({ isCpu: false, hasF16: false, adapter }, undefined), "f32");
  equal(resolvePrecision({ isCpu: true, hasF16: true, adapter }, "f16"), "f16");
  throws(
    () => resolvePrecision({ isCpu: false, hasF16: false, adapter }, "f16"),
    Error,
    "Cannot use precision f16: the device lacks the shader-f16 feature (adapter test adapter, backend gl)",
  );
  throws(
    () => resolvePrecision({ isCpu: false, hasF16: true, adapter }, "bf16" as "f16"),
    RangeError,
    'Invalid precision: bf16 (expected "f32" or "f16")',
  );
});

Deno.test("f16 memory: planModel's halfBytes is what the f16 model allocates for its f16 copies", async () => {
  await withGpu(async (gpu) => {
    const batch = 3;
    const plan = (precision: "f32" | "f16") =>
      planModel(odd, { batch, attentionScratch: true, precision }, gpu.limits);
    equal(plan("f32").halfBytes, 0);
    // Count the bytes of the buffers the model labels as f16 copies.
    let counted = 0;
    const storage = gpu.storage.bind(gpu);
    gpu.storage = (data, label) => {
      const b = storage(data, label);
      if (label?.endsWith("_f16")) counted += b.size;
      return b;
    };
    const model = await createModel(gpu, odd, { batch, precision: "f16" });
    equal(model.plan.halfBytes, plan("f16").halfBytes);
    equal(counted, plan("f16").halfBytes);
    model.dispose();
  });
});

Deno.test("f16 with 2 micro-batches of 2 gives the gradient of one batch of 4; the weight copies follow AdamW and setParams", async () => {
  await withGpu(async (gpu) => {
    const T = odd.blockSize;
    const inputs = randomU32(4 * T, 5, odd.vocabSize);
    const targets = randomU32(4 * T, 6, odd.vocabSize);
    const make = (batch: number, gradAccum: number) =>
      createModel(gpu, odd, { seed: 9, batch, gradAccum, precision: "f16" });
    const big = await make(4, 1);
    const accum = await make(2, 2);
    // After a step, big's f16 weight copies must follow its AdamW and accum's its setParams.
    await big.step(inputs, targets, { lr: 1e-2 });
    await accum.step(inputs, targets, { lr: 1e-2 });
    accum.setParams(await big.getParams());
    const gBig = await big.computeGradients(inputs, targets);
    const gAcc = await accum.computeGradients(inputs, targets);
    // The same f16 inputs row by row; only the summation order over rows differs.
    ok(Math.abs(gAcc.loss - gBig.loss) <= 1e-6 * gBig.loss, `loss ${gAcc.loss} vs ${gBig.loss}`);
    assertGradsClose(big.layout.views, gAcc.grads, Float64Array.from(gBig.grads), {
      rtol: 1e-4,
      atol: 1e-7,
    });
    big.dispose();
    accum.dispose();
  });
});
