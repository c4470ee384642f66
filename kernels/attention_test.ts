import assert from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import { attentionBackward, attentionForward } from "./attention.ts";
import { attentionBackwardRef, attentionForwardRef } from "./reference.ts";
import {
  assertClose,
  centralDiff,
  dot,
  noGpuErrors,
  randomF32,
  randomF64,
  sameBits,
} from "./_testing.ts";

// GPU f32 vs reference f64: 1e-5 relative plus 1e-5 absolute (values are O(1)).
const TOL = { rtol: 1e-5, atol: 1e-5 };

async function runCase(
  gpu: Gpu,
  b: number,
  t: number,
  c: number,
  nh: number,
  seed: number,
  block?: number,
  accumulate = true,
) {
  const nQkv = b * t * 3 * c;
  const nAtt = b * nh * t * t;
  const qkv = randomF32(nQkv, seed, -2, 2);
  const dout = randomF32(b * t * c, seed + 1);
  // Written, not accumulated: every element must be overwritten, so start from NaN.
  const dqkv0 = accumulate ? randomF32(nQkv, seed + 2) : new Float32Array(nQkv).fill(NaN);
  const r = (data: Float32Array | number, length: number) => ({
    buffer: gpu.storage(data),
    length,
  });
  const g = {
    qkv: r(qkv, nQkv),
    out: r(b * t * c, b * t * c),
    att: r(randomF32(nAtt, 7), nAtt),
    dout: r(dout, b * t * c),
    dqkv: r(dqkv0, nQkv),
    // Scratch starts as NaN: entries the kernels do not write must never be used.
    datt: r(new Float32Array(nAtt).fill(NaN), nAtt),
  };
  const shape = block === undefined ? { b, t, c, nh } : { b, t, c, nh, block };
  gpu.run([attentionForward(gpu, { qkv: g.qkv, out: g.out, att: g.att }, shape)]);
  const bw = attentionBackward(
    gpu,
    {
      dqkv: g.dqkv,
      datt: g.datt,
      dout: g.dout,
      qkv: g.qkv,
      att: g.att,
    },
    shape,
    { accumulate },
  );
  gpu.run(bw);
  const out = new Float32Array(b * t * c);
  const att = new Float32Array(nAtt);
  attentionForwardRef({ qkv, out, att }, shape);
  const dqkv = accumulate ? dqkv0.slice() : new Float32Array(nQkv);
  attentionBackwardRef({ dqkv, dout, qkv, att }, shape);
  assertClose(await gpu.read(g.att.buffer, nAtt), att, { ...TOL, label: "att" });
  assertClose(await gpu.read(g.out.buffer, b * t * c), out, { ...TOL, label: "out" });
  assertClose(await gpu.read(g.dqkv.buffer, nQkv), dqkv, { ...TOL, label: "dqkv" });
  return { g, bw, nQkv };
}

Deno.test("attention forward and backward match the reference", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      await t.step("b=2, t=5, c=24, nh=3 (hs=8)", async () => {
        await runCase(gpu, 2, 5, 24, 3, 1);
      });
      await t.step("b=1, t=7, c=10, nh=1 (hs=10)", async () => {
        await runCase(gpu, 1, 7, 10, 1, 2);
      });
      await t.step("b=1, t=7, c=24, nh=3 (hs=8, t not a multiple of 4)", async () => {
        await runCase(gpu, 1, 7, 24, 3, 4);
      });
      await t.step("b=2, t=64, c=64, nh=4 (the model's shape)", async () => {
        await runCase(gpu, 2, 64, 64, 4, 5);
      });
      await t.step("b=3, t=12, c=16, nh=2, block 8 (partial vec4 block)", async () => {
        await runCase(gpu, 3, 12, 16, 2, 6, 8);
      });
      await t.step("b=2, t=9, c=12, nh=2, block 4 (hs=6, scalar loads)", async () => {
        await runCase(gpu, 2, 9, 12, 2, 7, 4);
      });
      await t.step("b=2, t=11, c=8, nh=2, block 3 (block not a multiple of 4)", async () => {
        await runCase(gpu, 2, 11, 8, 2, 8, 3);
      });
      await t.step("backward that writes dqkv: the model's shape and an odd one", async () => {
        await runCase(gpu, 2, 64, 64, 4, 9, undefined, false);
        await runCase(gpu, 2, 9, 12, 2, 10, 4, false);
      });
      await t.step("b=4, t=64, c=64, nh=4, backward deterministic", async () => {
        const { g, bw, nQkv } = await runCase(gpu, 4, 64, 64, 4, 3);
        const runs: Float32Array[] = [];
        for (let k = 0; k < 2; k++) {
          gpu.write(g.dqkv.buffer, new Float32Array(nQkv));
          gpu.run(bw);
          runs.push(await gpu.read(g.dqkv.buffer, nQkv));
        }
        assert.ok(sameBits(runs[0], runs[1]));
      });
      await t.step("c not a multiple of nh is refused", () => {
        const x = { buffer: gpu.storage(64), length: 64 };
        assert.throws(
          () => attentionForward(gpu, { qkv: x, out: x, att: x }, { b: 1, t: 2, c: 5, nh: 2 }),
          /c \(5\) must be a multiple of nh \(2\)/,
        );
      });
      await t.step("a bad block is refused", () => {
        const x = { buffer: gpu.storage(64), length: 64 };
        assert.throws(
          () =>
            attentionForward(gpu, { qkv: x, out: x, att: x }, {
              b: 1,
              t: 2,
              c: 4,
              nh: 2,
              block: 0,
            }),
          /block must be an integer in 1\.\.64, got 0/,
        );
      });
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("attention reference backward matches finite differences", () => {
  const shape = { b: 2, t: 4, c: 6, nh: 2 };
  const { b, t, c, nh } = shape;
  const qkv = randomF64(b * t * 3 * c, 11, -1.5, 1.5);
  const w = randomF64(b * t * c, 12);
  const loss = () => {
    const out = new Float64Array(b * t * c);
    attentionForwardRef({ qkv, out, att: new Float64Array(b * nh * t * t) }, shape);
    return dot(out, w);
  };
  const att = new Float64Array(b * nh * t * t);
  attentionForwardRef({ qkv, out: new Float64Array(b * t * c), att }, shape);
  const dqkv = new Float64Array(qkv.length);
  attentionBackwardRef({ dqkv, dout: w, qkv, att }, shape);
  const fd = Array.from(qkv, (_, i) => centralDiff(loss, qkv, i));
  assertClose(dqkv, fd, { rtol: 1e-5, atol: 1e-7, label: "dqkv vs finite differences" });
});
