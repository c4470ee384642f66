import assert from "@std/assert";
import { acquireGpu } from "./device.ts";
import { accumulate, residualForward } from "./residual.ts";
import { accumulateRef, residualForwardRef } from "./reference.ts";
import { zeroFill } from "./_wgsl.ts";
import { noGpuErrors, randomF32, sameBits } from "./_testing.ts";

Deno.test("residual kernels match the TypeScript reference bit for bit", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      for (const n of [7, 1000, 70_001]) {
        await t.step(`residualForward and accumulate, n=${n}`, async () => {
          const a = randomF32(n, 1);
          const b = randomF32(n, 2);
          const ga = gpu.storage(a);
          const gb = gpu.storage(b);
          const go = gpu.storage(n + 5);
          gpu.run([
            residualForward(gpu, {
              a: { buffer: ga, length: n },
              b: { buffer: gb, length: n },
              out: { buffer: go, length: n },
            }, { n }),
          ]);
          const out = new Float32Array(n);
          residualForwardRef({ a, b, out }, { n });
          // A tail beyond n stays untouched.
          const got = await gpu.read(go, n + 5);
          assert.ok(sameBits(got.subarray(0, n), out));
          assert.deepEqual(Array.from(got.subarray(n)), [0, 0, 0, 0, 0]);

          gpu.run([
            accumulate(gpu, { dst: { buffer: ga, length: n }, src: { buffer: gb, length: n } }, {
              n,
            }),
          ]);
          accumulateRef({ dst: a, src: b }, { n });
          assert.ok(sameBits(await gpu.read(ga, n), a));

          gpu.run([zeroFill(gpu, { buf: { buffer: ga, length: n } }, { n })]);
          assert.ok((await gpu.read(ga, n)).every((x) => x === 0));
        });
      }
      await t.step("bad shapes and short buffers are refused with the name", () => {
        const small = gpu.storage(4);
        assert.throws(
          () =>
            residualForward(gpu, {
              a: { buffer: small, length: 4 },
              b: { buffer: small, length: 4 },
              out: { buffer: small, length: 4 },
            }, { n: 8 }),
          /residualForward: a holds 4 elements, needs 8/,
        );
        assert.throws(
          () =>
            accumulate(
              gpu,
              { dst: { buffer: small, length: 4 }, src: { buffer: small, length: 4 } },
              { n: -1 },
            ),
          /n must be/,
        );
      });
    });
  } finally {
    gpu.destroy();
  }
});
