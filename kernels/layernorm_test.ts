import assert from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import { layernormBackward, layernormForward } from "./layernorm.ts";
import { layernormBackwardRef, layernormForwardRef } from "./reference.ts";
import {
  assertClose,
  centralDiff,
  dot,
  noGpuErrors,
  randomF32,
  randomF64,
  sameBits,
} from "./_testing.ts";

// Tolerance GPU (f32) vs reference (f64): 1e-5 relative plus a small absolute
// term for values near zero after cancellation.
const TOL = { rtol: 1e-5, atol: 1e-5 };

async function runCase(gpu: Gpu, rows: number, c: number, seed: number) {
  const inp = randomF32(rows * c, seed, -2, 3);
  const weight = randomF32(c, seed + 1, 0.5, 1.5);
  const bias = randomF32(c, seed + 2);
  const dout = randomF32(rows * c, seed + 3);
  const dinp0 = randomF32(rows * c, seed + 4);
  const dw0 = randomF32(c, seed + 5);
  const db0 = randomF32(c, seed + 6);
  const b = {
    inp: gpu.storage(inp),
    weight: gpu.storage(weight),
    bias: gpu.storage(bias),
    out: gpu.storage(rows * c),
    mean: gpu.storage(rows),
    rstd: gpu.storage(rows),
    dout: gpu.storage(dout),
    dinp: gpu.storage(dinp0),
    // dweight and dbias share one buffer, as views of the flat gradient buffer do.
    grads: gpu.storage(2 * 1024),
  };
  const dbOffset = Math.ceil(c / 64) * 256;
  gpu.write(b.grads, dw0, 0);
  gpu.write(b.grads, db0, dbOffset);
  const r = (buffer: GPUBuffer, length: number, offset = 0) => ({ buffer, length, offset });
  const grads = {
    dweight: r(b.grads, c),
    dbias: { buffer: b.grads, offset: dbOffset, length: c },
  };
  gpu.run([
    layernormForward(gpu, {
      inp: r(b.inp, rows * c),
      weight: r(b.weight, c),
      bias: r(b.bias, c),
      out: r(b.out, rows * c),
      mean: r(b.mean, rows),
      rstd: r(b.rstd, rows),
    }, { rows, c }),
  ]);
  const bw = layernormBackward(gpu, {
    ...grads,
    dinp: r(b.dinp, rows * c),
    dout: r(b.dout, rows * c),
    inp: r(b.inp, rows * c),
    weight: r(b.weight, c),
    mean: r(b.mean, rows),
    rstd: r(b.rstd, rows),
  }, { rows, c });
  gpu.run(bw);
  const out = new Float32Array(rows * c);
  const mean = new Float32Array(rows);
  const rstd = new Float32Array(rows);
  layernormForwardRef({ inp, weight, bias, out, mean, rstd }, { rows, c });
  const dinp = dinp0.slice();
  const dweight = dw0.slice();
  const dbias = db0.slice();
  layernormBackwardRef(
    { dinp, dweight, dbias, dout, inp, weight, mean, rstd },
    { rows, c },
  );
  assertClose(await gpu.read(b.out, rows * c), out, { ...TOL, label: "out" });
  assertClose(await gpu.read(b.mean, rows), mean, { ...TOL, label: "mean" });
  assertClose(await gpu.read(b.rstd, rows), rstd, { ...TOL, label: "rstd" });
  assertClose(await gpu.read(b.dinp, rows * c), dinp, { ...TOL, label: "dinp" });
  assertClose(await gpu.read(b.grads, c), dweight, { ...TOL, label: "dweight" });
  assertClose(await gpu.read(b.grads, c, dbOffset), dbias, { ...TOL, label: "dbias" });
  return { b, bw, c };
}

Deno.test("layernorm forward and backward match the reference", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      await t.step("rows=7, c=24", () => runCase(gpu, 7, 24, 10).then(() => {}));
      // A width that is not a multiple of 4 takes the scalar path.
      await t.step("rows=5, c=13", () => runCase(gpu, 5, 13, 15).then(() => {}));
      // Rows longer than the kernels hold in registers take the looping path.
      await t.step("rows=3, c=260", () => runCase(gpu, 3, 260, 16).then(() => {}));
      await t.step("rows=3, c=131", () => runCase(gpu, 3, 131, 17).then(() => {}));
      await t.step("rows=100, c=64", () => runCase(gpu, 100, 64, 20).then(() => {}));
      await t.step("backward is deterministic (rows=1024, c=128)", async () => {
        const rows = 1024;
        const { b, bw, c } = await runCase(gpu, rows, 128, 30);
        const snapshots: Float32Array[] = [];
        for (let k = 0; k < 2; k++) {
          gpu.write(b.dinp, new Float32Array(rows * c));
          gpu.write(b.grads, new Float32Array(2 * 1024));
          gpu.run(bw);
          const d = await gpu.read(b.dinp, rows * c);
          const g = await gpu.read(b.grads, 2 * 1024);
          snapshots.push(new Float32Array([...d, ...g]));
        }
        assert.ok(sameBits(snapshots[0], snapshots[1]));
      });
      await t.step("bad shapes are refused with the name", () => {
        const x = { buffer: gpu.storage(4), length: 4 };
        assert.throws(
          () =>
            layernormForward(gpu, { inp: x, weight: x, bias: x, out: x, mean: x, rstd: x }, {
              rows: 2,
              c: 4,
            }),
          /layernormForward: inp holds 4 elements, needs 8/,
        );
      });
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("layernorm reference backward matches finite differences", () => {
  const rows = 3;
  const c = 5;
  const inp = randomF64(rows * c, 1, -2, 2);
  const weight = randomF64(c, 2, 0.5, 1.5);
  const bias = randomF64(c, 3);
  const w = randomF64(rows * c, 4);
  const loss = () => {
    const out = new Float64Array(rows * c);
    layernormForwardRef({
      inp,
      weight,
      bias,
      out,
      mean: new Float64Array(rows),
      rstd: new Float64Array(rows),
    }, { rows, c });
    return dot(out, w);
  };
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  layernormForwardRef({ inp, weight, bias, out: new Float64Array(rows * c), mean, rstd }, {
    rows,
    c,
  });
  const dinp = new Float64Array(rows * c);
  const dweight = new Float64Array(c);
  const dbias = new Float64Array(c);
  layernormBackwardRef({ dinp, dweight, dbias, dout: w, inp, weight, mean, rstd }, { rows, c });
  const tol = { rtol: 1e-5, atol: 1e-7 };
  const fd = (x: Float64Array) => Array.from(x, (_, i) => centralDiff(loss, x, i));
  assertClose(dinp, fd(inp), { ...tol, label: "dinp vs finite differences" });
  assertClose(dweight, fd(weight), { ...tol, label: "dweight vs finite differences" });
  assertClose(dbias, fd(bias), { ...tol, label: "dbias vs finite differences" });
});
