/**
 * Sampling: the token picker alone, the model's forward-only logits against
 * the TypeScript oracle (kernels/model_reference.ts), and generation's
 * determinism under a seed.
 */
import { deepEqual, equal, notDeepEqual, ok, rejects, throws } from "@std/assert";
import { acquireGpu } from "./device.ts";
import type { GptConfig } from "./config.ts";
import { createModel, type GptModel } from "./model.ts";
import { initParams } from "./init.ts";
import { referenceForward } from "./model_reference.ts";
import {
  bytesToText,
  DEFAULT_TEXT_SAMPLE,
  generate,
  pickToken,
  Sampler,
  sampleText,
  textSample,
  type TextSampleSpec,
} from "./sample.ts";
import { assertClose, randomU32 } from "./_testing.ts";

/** Large enough that several attention heads and a 2-row batch are exercised. */
const config: GptConfig = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 256 };

/**
 * Runs `fn` on a model of `batch` rows whose parameters are GPT-2 init scaled
 * up, so that the logits spread over a few nats (init alone is near uniform).
 */
async function withModel(
  batch: number,
  fn: (model: GptModel, params: Float32Array) => Promise<void>,
): Promise<void> {
  const gpu = await acquireGpu();
  try {
    const model = await createModel(gpu, config, { batch });
    const params = initParams(config, 3).map((x) => x * 3);
    model.setParams(params);
    await fn(model, params);
    model.dispose();
  } finally {
    gpu.destroy();
  }
}

Deno.test("pickToken: temperature 0 takes the first largest logit; top-k draws only among the k largest", () => {
  const logits = new Float32Array([0.5, 2, -1, 2, 1.5]);
  equal(pickToken(logits, { temperature: 0, topK: 0 }, 0.9), 1);
  for (let i = 0; i < 50; i++) {
    const t = pickToken(logits, { temperature: 1, topK: 2 }, i / 50);
    ok(t === 1 || t === 3, `top-2 drew ${t}`);
  }
  // u walks the cumulative softmax in token order: 0 is the first token, just under 1 the last.
  equal(pickToken(logits, { temperature: 1, topK: 0 }, 0), 0);
  equal(pickToken(logits, { temperature: 1, topK: 0 }, 0.999999), 4);
  throws(() => pickToken(new Float32Array([0, NaN]), { temperature: 1, topK: 0 }, 0.5), /NaN/);
  throws(() => new Sampler({ temperature: -0.5 }), /Invalid temperature: -0.5/);
  throws(() => new Sampler({ topK: 1.5 }), /Invalid topK/);
});

Deno.test("Sampler: a high temperature draws near-uniformly, a low one near-greedily", () => {
  const logits = new Float32Array([0, 1, 2, 3]);
  const count = (temperature: number) => {
    const s = new Sampler({ temperature, seed: 9 });
    const c = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) c[s.next(logits)]++;
    return c;
  };
  const hot = count(100);
  ok(hot.every((c) => c > 850 && c < 1150), `temperature 100: ${hot}`);
  const cold = count(0.05);
  ok(cold[3] > 3990, `temperature 0.05: ${cold}`);
});

Deno.test("forwardLogits matches the TypeScript reference model at chosen positions of a 2-row batch", async () => {
  await withModel(2, async (model, params) => {
    const T = config.blockSize;
    const V = config.vocabSize;
    const inputs = randomU32(2 * T, 4, V);
    const ref = referenceForward(config, params, inputs, new Uint32Array(2 * T), { batch: 2 });
    const positions = [0, 5, T - 1, T + 3, 2 * T - 1];
    const got = await model.forwardLogits(inputs, positions);
    equal(got.length, positions.length * V);
    positions.forEach((p, i) => {
      assertClose(got.subarray(i * V, (i + 1) * V), ref.acts.logits.subarray(p * V, (p + 1) * V), {
        rtol: 1e-4,
        atol: 1e-4,
        label: `logits at ${p}`,
      });
    });
    await rejects(() => model.forwardLogits(inputs, [2 * T]), /Invalid logits positions/);
    await rejects(() => model.forwardLogits(inputs, []), /Invalid logits positions/);
  });
});

Deno.test("generate: the same seed gives the same bytes, another seed others; greedy follows the reference argmax", async () => {
  await withModel(1, async (model, params) => {
    const prompt = new TextEncoder().encode("Hi");
    // 24 new bytes from a 2-byte prompt: the context slides past T = 16.
    const run = async (options: { seed?: number; temperature?: number }) =>
      (await generate(model, prompt, { tokens: 24, ...options })).tokens;
    const a = await run({ seed: 1 });
    deepEqual(await run({ seed: 1 }), a);
    notDeepEqual(await run({ seed: 2 }), a);
    const greedy = await run({ temperature: 0 });
    const seq = [...prompt, ...greedy];
    for (let n = prompt.length; n < seq.length; n++) {
      const context = seq.slice(Math.max(0, n - config.blockSize), n);
      const T = context.length;
      const { acts } = referenceForward(config, params, context, new Uint32Array(T), { batch: 1 });
      const last = acts.logits.subarray((T - 1) * 256, T * 256);
      equal(seq[n], last.indexOf(Math.max(...last)), `greedy byte ${n - prompt.length}`);
    }
    await rejects(() => generate(model, new Uint8Array(0), { tokens: 1 }), /Invalid prompt: empty/);
    await rejects(() => generate(model, prompt, { tokens: 0 }), /Invalid tokens: 0/);
  });
});

Deno.test("textSample: the run's sample settings over the defaults, each bad field named", () => {
  deepEqual(textSample(), { ...DEFAULT_TEXT_SAMPLE });
  deepEqual(textSample({ tokens: 0, prompt: "Fellow" }), {
    ...DEFAULT_TEXT_SAMPLE,
    tokens: 0,
    prompt: "Fellow",
  });
  const bad: [unknown, RegExp][] = [
    ["The ", /^RangeError: Invalid text sample: expected an object, got string$/],
    [null, /^RangeError: Invalid text sample: expected an object/],
    [{ prompt: "" }, /^RangeError: Invalid text sample prompt: expected a non-empty string$/],
    [{ prompt: 7 }, /^RangeError: Invalid text sample prompt/],
    [{ prompt: "é".repeat(2049) }, /^RangeError: Invalid text sample prompt: 4098 bytes > 4096$/],
    [{ tokens: 4097 }, /^RangeError: Invalid text sample tokens: 4097/],
    [{ tokens: 1.5 }, /^RangeError: Invalid text sample tokens: 1.5/],
    [{ temperature: -1 }, /^RangeError: Invalid temperature: -1/],
    [{ topK: -2 }, /^RangeError: Invalid topK: -2/],
    [{ seed: NaN }, /^RangeError: Invalid seed: NaN/],
  ];
  for (const [spec, re] of bad) {
    throws(() => textSample(spec as Partial<TextSampleSpec>), re, JSON.stringify(spec));
  }
});

Deno.test("sampleText: the prompt's continuation as text, the same for the same parameters; none for 0 tokens", async () => {
  await withModel(2, async (model) => {
    const spec = textSample({ prompt: "ab", tokens: 12, seed: 3 });
    const text = await sampleText(model, spec);
    equal(text, await sampleText(model, spec));
    const prompt = new TextEncoder().encode("ab");
    equal(text, bytesToText((await generate(model, prompt, spec)).tokens));
    equal(await sampleText(model, { ...spec, tokens: 0 }), "");
  });
});
