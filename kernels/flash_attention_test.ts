import assert from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import {
  defaultKeyPass,
  flashAttentionBackward,
  flashAttentionForward,
  type KeyPass,
} from "./flash_attention.ts";
import { flashPlan } from "./_flash_wgsl.ts";
import { attentionBackwardRef, attentionForwardRef, attentionLseRef } from "./reference.ts";
import { assertClose, noGpuErrors, randomF32, randomU32, rng, sameBits } from "./_testing.ts";
import { createModel } from "./model.ts";
import type { AttentionKind } from "./model_options.ts";
import { getConfig, type GptConfig } from "./config.ts";
import { referenceForward } from "./model_reference.ts";

// GPU f32 vs reference f64 (values are O(1)); long rows sum more terms, so they get more room.
const TOL = { rtol: 1e-5, atol: 1e-5 };
const LONG_TOL = { rtol: 1e-4, atol: 2e-5 };

interface Case {
  b: number;
  t: number;
  c: number;
  nh: number;
  seed: number;
  accumulate?: boolean;
  keyPass?: KeyPass;
  tol?: { rtol: number; atol: number };
}

/** Runs forward and backward on the GPU and checks out, lse and dqkv against the reference. */
async function runCase(gpu: Gpu, k: Case) {
  const { b, t, c, nh, seed } = k;
  const accumulate = k.accumulate ?? true;
  const tol = k.tol ?? TOL;
  const shape = { b, t, c, nh };
  const nQkv = b * t * 3 * c, nOut = b * t * c, nRow = b * nh * t;
  const qkv = randomF32(nQkv, seed, -2, 2);
  const dout = randomF32(nOut, seed + 1);
  // Written, not accumulated: every element must be overwritten, so start from NaN.
  const dqkv0 = accumulate ? randomF32(nQkv, seed + 2) : new Float32Array(nQkv).fill(NaN);
  const r = (data: Float32Array | number, length: number) => ({
    buffer: gpu.storage(data),
    length,
  });
  const g = {
    qkv: r(qkv, nQkv),
    out: r(new Float32Array(nOut).fill(NaN), nOut),
    lse: r(new Float32Array(nRow).fill(NaN), nRow),
    dout: r(dout, nOut),
    dqkv: r(dqkv0, nQkv),
    dsum: r(new Float32Array(nRow).fill(NaN), nRow),
  };
  const bw = flashAttentionBackward(gpu, g, shape, { accumulate, keyPass: k.keyPass });
  gpu.run([flashAttentionForward(gpu, g, shape), ...bw]);
  const out = new Float64Array(nOut);
  const att = new Float64Array(b * nh * t * t);
  const lse = new Float64Array(nRow);
  attentionForwardRef({ qkv, out, att }, shape);
  attentionLseRef({ qkv, lse }, shape);
  const dqkv = accumulate ? Float64Array.from(dqkv0) : new Float64Array(nQkv);
  attentionBackwardRef({ dqkv, dout, qkv, att }, shape);
  assertClose(await gpu.read(g.out.buffer, nOut), out, { ...tol, label: "out" });
  assertClose(await gpu.read(g.lse.buffer, nRow), lse, { ...tol, label: "lse" });
  const got = await gpu.read(g.dqkv.buffer, nQkv);
  assertClose(got, dqkv, { ...tol, label: "dqkv" });
  return { g, bw, nQkv, dqkv: got };
}

/** Both key passes match the reference and each other, bit for bit (same sums, same order). */
async function runBothKeyPasses(gpu: Gpu, k: Case) {
  const fused = await runCase(gpu, { ...k, keyPass: "fused" });
  const split = await runCase(gpu, { ...k, keyPass: "split" });
  assert.equal(fused.bw.length, 2);
  assert.equal(split.bw.length, 3);
  assert.ok(sameBits(fused.dqkv, split.dqkv), "fused and split key passes differ");
}

Deno.test("flash attention forward (out, lse) and backward (dqkv) match the reference", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      const cases: [string, Case][] = [
        ["b=1, t=1, hs=8 (one row)", { b: 1, t: 1, c: 8, nh: 1, seed: 1 }],
        ["b=3, t=7, hs=6 (scalar path)", { b: 3, t: 7, c: 12, nh: 2, seed: 2 }],
        ["b=1, t=33, hs=10 (scalar, two row tiles)", { b: 1, t: 33, c: 20, nh: 2, seed: 3 }],
        ["b=3, t=65, hs=16 (t one past two tiles)", { b: 3, t: 65, c: 48, nh: 3, seed: 4 }],
        ["b=1, t=100, hs=32", { b: 1, t: 100, c: 64, nh: 2, seed: 5 }],
        ["b=1, t=70, hs=64 (several staged tiles)", { b: 1, t: 70, c: 128, nh: 2, seed: 6 }],
        ["b=1, t=70, hs=128 (tiles shorter than the row tile)", {
          b: 1,
          t: 70,
          c: 128,
          nh: 1,
          seed: 11,
        }],
        ["b=2, t=9, hs=6, written", { b: 2, t: 9, c: 12, nh: 2, seed: 7, accumulate: false }],
        ["b=3, t=65, hs=8, written", { b: 3, t: 65, c: 32, nh: 4, seed: 8, accumulate: false }],
      ];
      for (const [name, k] of cases) await t.step(name, () => runBothKeyPasses(gpu, k));
      await t.step("b=1, nh=2, t=1024, hs=8: long context without a T×T buffer", async () => {
        await runBothKeyPasses(gpu, { b: 1, t: 1024, c: 16, nh: 2, seed: 9, tol: LONG_TOL });
      });
      await t.step("two runs give identical bits", async () => {
        const { g, bw, nQkv } = await runCase(gpu, {
          b: 2,
          t: 77,
          c: 40,
          nh: 2,
          seed: 10,
          accumulate: false,
        });
        const fw = flashAttentionForward(gpu, g, { b: 2, t: 77, c: 40, nh: 2 });
        const runs: Float32Array[] = [];
        for (let i = 0; i < 2; i++) {
          gpu.write(g.dqkv.buffer, new Float32Array(nQkv));
          gpu.run([fw, ...bw]);
          const o = await gpu.read(g.out.buffer, 2 * 77 * 40);
          const d = await gpu.read(g.dqkv.buffer, nQkv);
          runs.push(new Float32Array([...o, ...d]));
        }
        assert.ok(sameBits(runs[0], runs[1]));
      });
      await t.step("bad shapes are refused by name", () => {
        const x = { buffer: gpu.storage(64), length: 64 };
        const bufs = { qkv: x, out: x, lse: x };
        assert.throws(
          () => flashAttentionForward(gpu, bufs, { b: 1, t: 2, c: 5, nh: 2 }),
          /Cannot build flashAttentionForward: c \(5\) must be a multiple of nh \(2\)/,
        );
        assert.throws(
          () => flashAttentionForward(gpu, bufs, { b: 1, t: 0, c: 4, nh: 2 }),
          /t must be an integer >= 1, got 0/,
        );
        assert.throws(
          () => flashAttentionForward(gpu, bufs, { b: 1, t: 2, c: 512, nh: 1 }),
          /head size 512 exceeds 256/,
        );
        assert.throws(
          () => flashAttentionForward(gpu, bufs, { b: 70000, t: 1, c: 4, nh: 1 }),
          /b·nh = 70000 \(batch, head\) pairs, more than the 65535 workgroups a dispatch dimension allows/,
        );
        assert.throws(
          () => flashAttentionForward(gpu, bufs, { b: 1, t: 8, c: 8, nh: 2 }),
          /Cannot build flashAttentionForward: qkv holds 64 elements, needs 192/,
        );
        const big = { buffer: gpu.storage(192), length: 192 };
        assert.throws(
          () =>
            flashAttentionBackward(
              gpu,
              { dqkv: big, dout: x, qkv: big, out: x, lse: x },
              { b: 1, t: 8, c: 8, nh: 2 },
              { keyPass: "both" as KeyPass },
            ),
          /Cannot build flashAttentionBackward: keyPass both \(expected "fused" or "split"\)/,
        );
      });
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("flash attention tiles follow the head size and the workgroup-memory limit", () => {
  const shape = (t: number, hs: number) => ({ b: 1, t, c: 2 * hs, nh: 2 });
  const at = (t: number, hs: number, bytes: number) => {
    const p = flashPlan("k", shape(t, hs), bytes);
    return [p.rows, p.keyTile, p.queryTile, p.w];
  };
  assert.deepEqual(at(256, 64, 32768), [64, 64, 32, 4]);
  assert.deepEqual(at(256, 64, 49152), [64, 64, 64, 4]);
  assert.deepEqual(at(256, 128, 32768), [64, 32, 16, 4]);
  assert.deepEqual(at(256, 128, 49152), [64, 32, 32, 4]);
  assert.deepEqual(at(7, 6, 32768), [32, 64, 64, 1]);
  // The key pass is split once its 4 head rows pass 192 floats of registers.
  assert.deepEqual([8, 32, 48, 64, 128].map(defaultKeyPass), [
    "fused",
    "fused",
    "fused",
    "split",
    "split",
  ]);
  assert.throws(
    () => flashPlan("flashAttentionForward", shape(8, 256), 4096),
    /Cannot build flashAttentionForward: K and V tiles of head size 256 need 8192 bytes of workgroup memory, the device allows 4096/,
  );
});

/** Loss and gradients of `config` with GPT-2 init plus noise, run with `attention`. */
async function modelGradients(
  gpu: Gpu,
  config: GptConfig,
  batch: number,
  attention: AttentionKind,
) {
  const model = await createModel(gpu, config, { seed: 5, batch, attention });
  try {
    assert.equal(model.attention, attention);
    const p = await model.getParams();
    const r = rng(105);
    for (const v of model.layout.views) {
      for (let i = v.offset; i < v.offset + v.length; i++) p[i] += r(-0.1, 0.1);
    }
    model.setParams(p);
    const n = batch * config.blockSize;
    const inputs = randomU32(n, 1, config.vocabSize);
    const targets = randomU32(n, 2, config.vocabSize);
    return { ...(await model.computeGradients(inputs, targets)), p, inputs, targets, model };
  } finally {
    model.dispose();
  }
}

for (const name of ["tiny", "small"]) {
  Deno.test(`the model with flash attention matches blocked attention (${name})`, async () => {
    const gpu = await acquireGpu();
    try {
      const config = getConfig(name).model;
      const blocked = await modelGradients(gpu, config, 2, "blocked");
      const flash = await modelGradients(gpu, config, 2, "flash");
      assert.ok(
        Math.abs(flash.loss - blocked.loss) <= 1e-6 * blocked.loss,
        `loss ${flash.loss} vs ${blocked.loss}`,
      );
      for (const v of flash.model.layout.views) {
        assertClose(
          flash.grads.subarray(v.offset, v.offset + v.length),
          blocked.grads.subarray(v.offset, v.offset + v.length),
          { rtol: 1e-3, atol: 1e-6, label: `grad ${v.name}` },
        );
      }
    } finally {
      gpu.destroy();
    }
  });
}

Deno.test("gradient check: the model with flash attention agrees with central finite differences (tiny)", async () => {
  const gpu = await acquireGpu();
  try {
    const config = getConfig("tiny").model;
    const batch = 2;
    const { grads, p, inputs, targets, model } = await modelGradients(gpu, config, batch, "flash");
    const p64 = Float64Array.from(p);
    const h = 1e-5;
    const pick = rng(77);
    let sumSqDiff = 0, sumSq = 0;
    for (const v of model.layout.views) {
      // 4 elements per tensor; the attention weights' gradients all pass through flash attention.
      for (let e = 0; e < Math.min(4, v.length); e++) {
        const i = v.offset + Math.floor(pick(0, v.length));
        const save = p64[i];
        p64[i] = save + h;
        const lp = referenceForward(config, p64, inputs, targets, { batch }).loss;
        p64[i] = save - h;
        const lm = referenceForward(config, p64, inputs, targets, { batch }).loss;
        p64[i] = save;
        const fd = (lp - lm) / (2 * h);
        assert.ok(
          Math.abs(grads[i] - fd) <= 2e-6 + 1e-3 * Math.abs(fd),
          `${v.name}[${i - v.offset}]: GPU ${grads[i]} vs fd ${fd}`,
        );
        sumSqDiff += (grads[i] - fd) ** 2;
        sumSq += fd ** 2;
      }
    }
    const rel = Math.sqrt(sumSqDiff / sumSq);
    assert.ok(rel < 1e-4, `relative L2 error of GPU gradients vs finite differences: ${rel}`);
  } finally {
    gpu.destroy();
  }
});

Deno.test("the model picks blocked attention on CPU adapters and flash on GPUs", async () => {
  const config = getConfig("tiny").model;
  for (const [adapterClass, want] of [["cpu", "blocked"], ["gpu", "flash"]] as const) {
    const gpu = await acquireGpu({ adapterClass });
    try {
      const model = await createModel(gpu, config, { batch: 1 });
      assert.equal(model.attention, want);
      model.dispose();
      await assert.rejects(
        () => createModel(gpu, config, { attention: "fast" as AttentionKind }),
        /Invalid attention: fast \(expected "blocked" or "flash"\)/,
      );
    } finally {
      gpu.destroy();
    }
  }
});

Deno.test("the model's flash backward uses the key pass asked for, with the same gradients", async () => {
  const gpu = await acquireGpu();
  try {
    const config = getConfig("tiny").model;
    const labels = async (flashKeyPass?: KeyPass) => {
      const model = await createModel(gpu, config, { attention: "flash", flashKeyPass });
      try {
        const names = model.profileDispatches().dispatches.map((d) => d.dispatch.label);
        return {
          pass: model.flashKeyPass,
          kernels: model.describeKernels(),
          names: names.filter((n) => n.startsWith("flash")),
        };
      } finally {
        model.dispose();
      }
    };
    const count = (names: string[], suffix: string) =>
      names.filter((n) => n === `flashAttentionBackward ${suffix}`).length;
    // Head size 8: fused by default, one key dispatch per layer; split makes it a dv and a dk pass.
    const byDefault = await labels();
    assert.equal(byDefault.pass, "fused");
    assert.deepEqual(["keys", "dv", "dk"].map((s) => count(byDefault.names, s)), [2, 0, 0]);
    const split = await labels("split");
    assert.equal(split.pass, "split");
    assert.equal(split.kernels, "flash attention (split key pass), f32 matmul inputs");
    assert.deepEqual(["keys", "dv", "dk"].map((s) => count(split.names, s)), [0, 2, 2]);
    const grads = async (flashKeyPass: KeyPass) => {
      const model = await createModel(gpu, config, {
        seed: 3,
        batch: 2,
        flashKeyPass,
        attention: "flash",
      });
      try {
        const n = 2 * config.blockSize;
        const r = await model.computeGradients(randomU32(n, 1, 256), randomU32(n, 2, 256));
        return r.grads;
      } finally {
        model.dispose();
      }
    };
    assert.ok(sameBits(await grads("fused"), await grads("split")), "gradients differ");
    await assert.rejects(
      () => createModel(gpu, config, { flashKeyPass: "half" as KeyPass }),
      /Invalid flashKeyPass: half \(expected "fused" or "split"\)/,
    );
  } finally {
    gpu.destroy();
  }
});
