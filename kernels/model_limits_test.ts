/**
 * Models beyond one binding and gradient accumulation: the chunked
 * whole-vector kernels give the unchunked bits, shapes that cannot fit are
 * refused before anything is allocated, and N micro-batches make the step
 * one N-times-larger batch makes.
 */
import { deepEqual, equal, ok, rejects, throws } from "@std/assert";
import type { Gpu } from "./device.ts";
import { getConfig, type GptConfig } from "./config.ts";
import { buildLayout } from "./layout.ts";
import { type BufferLimits, checkBindingOverride, CHUNK_ALIGN, planModel } from "./limits.ts";
import { createModel, GptModel } from "./model.ts";
import { assertClose, randomU32, sameBits, withGpu } from "./_testing.ts";

/** 3 layers, width 32, 2 heads, context 16: ~47k parameters, small activations. */
const narrow: GptConfig = { nLayer: 3, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 256 };
const LLVMPIPE: BufferLimits = { maxBindingBytes: 128 * 2 ** 20, maxBufferBytes: 2 ** 31 - 1 };

Deno.test("a model cut into 64 KiB bindings trains to the bits of the unchunked one", async () => {
  await withGpu(async (gpu) => {
    const batch = 2;
    const n = batch * narrow.blockSize;
    const run = async (maxBindingBytes?: number) => {
      const model = await createModel(gpu, narrow, { seed: 3, batch, maxBindingBytes });
      const losses: number[] = [];
      const norms: number[] = [];
      for (let s = 0; s < 4; s++) {
        losses.push(
          await model.step(randomU32(n, 10 + s, 256), randomU32(n, 20 + s, 256), { lr: 1e-2 }),
        );
        norms.push(model.lastGradNorm);
      }
      const out = { chunks: model.plan.chunks, params: await model.getParams(), losses, norms };
      model.dispose();
      return out;
    };
    const whole = await run();
    const cut = await run(CHUNK_ALIGN * 4);
    equal(whole.chunks, 1);
    ok(cut.chunks >= 3, `the vector is cut into ${cut.chunks} chunks`);
    deepEqual(cut.losses, whole.losses);
    deepEqual(cut.norms, whole.norms);
    ok(whole.norms.some((x) => x > 1), `clipping was active in some step: ${whole.norms}`);
    ok(sameBits(cut.params, whole.params), "parameters differ between chunked and unchunked");
  });
});

/** A Gpu that fails the test if anything is allocated on it. */
function noAllocGpu(limits: BufferLimits): Gpu {
  const fail = () => {
    throw new Error("allocated a buffer");
  };
  return {
    limits,
    isCpu: true,
    storage: fail,
    uniform: fail,
    device: { createBuffer: fail, pushErrorScope() {}, popErrorScope: () => Promise.resolve(null) },
  } as unknown as Gpu;
}

Deno.test("shapes over a binding or a buffer are refused before anything is allocated", async () => {
  const gpt2 = getConfig("gpt2-small").model;
  const t1024 = { ...gpt2, blockSize: 1024 };
  const gpu = noAllocGpu(LLVMPIPE);
  throws(
    () => new GptModel(gpu, t1024, { batch: 16 }),
    new RegExp(
      "^RangeError: Cannot build model L12 C768 H12 T1024 V256 at batch 16: activation att \\(the CPU " +
        "attention's T·T scratch\\) \\[16, 12, 1024, 1024\\] needs 768 MiB, more than the 128 MiB " +
        "binding limit \\(maxStorageBufferBindingSize\\); the largest batch that fits is 2$",
    ),
  );
  await rejects(() => createModel(gpu, t1024, { batch: 16 }), /largest batch that fits is 2/);
  // Flash attention keeps no T·T scratch: the same shape is bounded by the MLP activation instead.
  throws(
    () => new GptModel(gpu, t1024, { batch: 16, attention: "flash" }),
    /activation fch \[16, 1024, 3072\] needs 192 MiB.*the largest batch that fits is 10$/,
  );
  // Even batch 1 over the binding: the largest block size at batch 1.
  throws(
    () => new GptModel(gpu, { ...gpt2, blockSize: 4096 }, { batch: 1 }),
    /att .*\[1, 12, 4096, 4096\] needs 768 MiB.*the largest block size that fits is 1672 at batch 1$/,
  );
  // One tensor over a binding: wte [V, C] at a vocabulary of 2^17 and width 768.
  throws(
    () => new GptModel(gpu, { ...gpt2, vocabSize: 1 << 17 }, { batch: 1 }),
    /tensor wte.weight \[131072, 768\] needs 384 MiB.*largest n_embd that fits is 252$/,
  );
  // The whole vectors over maxBufferSize.
  throws(
    () => new GptModel(noAllocGpu({ ...LLVMPIPE, maxBufferBytes: 256 * 2 ** 20 }), gpt2),
    /flat parameter vector .* needs 326 MiB, more than the 256 MiB buffer limit \(maxBufferSize\); the largest n_layer that fits is 9$/,
  );
  // What fits plans chunks of at most one binding.
  const plan = planModel(gpt2, { batch: 16, attentionScratch: true }, LLVMPIPE);
  equal(plan.chunk, 32 * 2 ** 20);
  equal(plan.vectorLength, buildLayout(gpt2).totalLength);
  equal(plan.chunks, Math.ceil(plan.vectorLength / plan.chunk));
  for (const c of [narrow, getConfig("small").model, { ...narrow, nEmbd: 30, nHead: 3 }]) {
    equal(planModel(c, { batch: 1 }, LLVMPIPE).vectorLength, buildLayout(c).totalLength);
  }
  throws(() => checkBindingOverride(1000, 2 ** 27), /Invalid maxBindingBytes: 1000/);
  throws(
    () => new GptModel(gpu, narrow, { maxBindingBytes: 2 ** 30 }),
    /Invalid maxBindingBytes: 1073741824 \(expected an integer in \[1, 134217728\]\)/,
  );
});

Deno.test("2 micro-batches of 2 make the step of one batch of 4", async () => {
  await withGpu(async (gpu) => {
    const config = { ...narrow, nLayer: 2 };
    const T = config.blockSize;
    const inputs = randomU32(4 * T, 5, 256);
    const targets = randomU32(4 * T, 6, 256);
    const big = await createModel(gpu, config, { seed: 9, batch: 4 });
    const accum = await createModel(gpu, config, { seed: 9, batch: 2, gradAccum: 2 });
    equal(accum.tokensPerStep, big.tokensPerStep);
    const gBig = await big.computeGradients(inputs, targets);
    const gAcc = await accum.computeGradients(inputs, targets);
    assertClose(new Float32Array([gAcc.loss]), new Float32Array([gBig.loss]), {
      rtol: 1e-6,
      atol: 0,
      label: "loss",
    });
    assertClose(gAcc.grads, gBig.grads, { rtol: 1e-4, atol: 1e-7, label: "summed gradients" });
    // The halves' gradients differ from the whole's: the test can tell a wrong scale or sum.
    const half = await createModel(gpu, config, { seed: 9, batch: 2 });
    const gHalf = await half.computeGradients(
      inputs.subarray(0, 2 * T),
      targets.subarray(0, 2 * T),
    );
    half.dispose();
    throws(() => assertClose(gHalf.grads, gBig.grads, { rtol: 1e-2, atol: 1e-5, label: "half" }));
    const lBig = await big.step(inputs, targets, { lr: 1e-2 });
    const lAcc = await accum.step(inputs, targets, { lr: 1e-2 });
    assertClose(new Float32Array([lAcc]), new Float32Array([lBig]), {
      rtol: 1e-6,
      atol: 0,
      label: "step loss",
    });
    assertClose(new Float32Array([accum.lastGradNorm]), new Float32Array([big.lastGradNorm]), {
      rtol: 1e-5,
      atol: 0,
      label: "gradient norm",
    });
    // AdamW's first step moves each parameter by about lr·g/(|g| + eps): where |g| is near the
    // rounding noise of the two summation orders, the move differs by a fraction of lr.
    assertClose(await accum.getParams(), await big.getParams(), {
      rtol: 1e-5,
      atol: 1e-2 * 1e-3,
      label: "parameters after one AdamW step",
    });
    await rejects(
      () => accum.step(inputs.subarray(0, 2 * T), targets.subarray(0, 2 * T), { lr: 1e-2 }),
      /Invalid step inputs: 2 rows, a step takes 4 rows \(batch 2 × 2 micro-batches\)/,
    );
    // Eval takes micro-batches of at most `batch` rows.
    equal(
      (await accum.evalLosses(inputs.subarray(0, 2 * T), targets.subarray(0, 2 * T))).length,
      2 * T,
    );
    big.dispose();
    accum.dispose();
    throws(() => new GptModel(gpu, config, { gradAccum: 0 }), /Invalid gradAccum: 0/);
  });
});
