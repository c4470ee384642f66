import { equal, throws } from "@std/assert";
import { acquireGpu } from "./device.ts";
import { CHUNK_ALIGN } from "./limits.ts";
import { mergeDispatches, mergeRange, mergeRangeRef } from "./overlap_merge.ts";
import { noGpuErrors, randomF32, sameBits } from "./_testing.ts";

Deno.test("mergeRange: a range of the flat vector, bit-exact with its twin", async () => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      const n = 1536;
      const lo = 512;
      const hi = 1300;
      const running = randomF32(n, 1);
      const global = randomF32(n, 2);
      const incoming = randomF32(n, 3);
      const delta = randomF32(n, 4);
      const bufs = [running, global, incoming, delta].map((a) => gpu.storage(a));
      const at = (buffer: GPUBuffer) => ({ buffer, offset: lo * 4, length: hi - lo });
      gpu.run([mergeRange(gpu, {
        running: at(bufs[0]),
        global: at(bufs[1]),
        incoming: at(bufs[2]),
        delta: at(bufs[3]),
      }, { n: hi - lo })]);
      const gotRunning = await gpu.read(bufs[0], n);
      const gotGlobal = await gpu.read(bufs[1], n);
      const wantRunning = new Float32Array(running);
      const wantGlobal = new Float32Array(global);
      mergeRangeRef(
        { running: wantRunning, global: wantGlobal, incoming, delta },
        { lo, hi },
      );
      equal(sameBits(gotRunning, wantRunning), true);
      equal(sameBits(gotGlobal, wantGlobal), true);
      // Outside [lo, hi) nothing changed.
      equal(gotRunning[lo - 1], running[lo - 1]);
      equal(gotGlobal[hi], global[hi]);
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("mergeDispatches: a range longer than one binding goes in binding-sized pieces", async () => {
  // The smallest binding the device may be told to use: 16384 floats, so the
  // range below takes three pieces, the first starting off a chunk boundary.
  const gpu = await acquireGpu({ maxBindingBytes: CHUNK_ALIGN * 4 });
  try {
    await noGpuErrors(gpu.device, async () => {
      const n = 40_000;
      const lo = 512;
      const hi = 39_000;
      const running = randomF32(n, 5);
      const global = randomF32(n, 6);
      const incoming = randomF32(n, 7);
      const delta = randomF32(n, 8);
      const [r, g, i, d] = [running, global, incoming, delta].map((a) => gpu.storage(a));
      const dispatches = mergeDispatches(gpu, { running: r, global: g, incoming: i, delta: d }, {
        lo,
        hi,
      });
      equal(dispatches.length, 3);
      gpu.run(dispatches);
      const wantRunning = new Float32Array(running);
      const wantGlobal = new Float32Array(global);
      mergeRangeRef({ running: wantRunning, global: wantGlobal, incoming, delta }, { lo, hi });
      equal(sameBits(await gpu.read(r, n), wantRunning), true);
      equal(sameBits(await gpu.read(g, n), wantGlobal), true);
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("mergeDispatches: a range the binding offsets cannot start is refused", async () => {
  const gpu = await acquireGpu();
  try {
    const b = gpu.storage(256, "x");
    const bufs = { running: b, global: b, incoming: b, delta: b };
    throws(
      () => mergeDispatches(gpu, bufs, { lo: 10, hi: 100 }),
      /Invalid merge range \[10, 100\)/,
    );
    throws(() => mergeDispatches(gpu, bufs, { lo: 0, hi: 100 }, 1000), /Invalid merge chunk 1000/);
  } finally {
    gpu.destroy();
  }
});
