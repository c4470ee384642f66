import { equal, throws } from "@std/assert";
import { acquireGpu, type Dispatch, type Gpu } from "./device.ts";
import { CHUNK_ALIGN } from "./limits.ts";
import { mergeDispatches, mergeRange, mergeRangeRef } from "./overlap_merge.ts";
import { noGpuErrors, randomF32, sameBits } from "./_testing.ts";

/** The four vectors of a merge, random from `seed`, and their buffers on `gpu`. */
function mergeInputs(gpu: Gpu, n: number, seed: number) {
  const host = {
    running: randomF32(n, seed),
    global: randomF32(n, seed + 1),
    incoming: randomF32(n, seed + 2),
    delta: randomF32(n, seed + 3),
  };
  const bufs = {
    running: gpu.storage(host.running),
    global: gpu.storage(host.global),
    incoming: gpu.storage(host.incoming),
    delta: gpu.storage(host.delta),
  };
  return { host, bufs };
}

/** Runs `dispatches` and checks the running and global vectors against the twin on [lo, hi). */
async function checkMerge(
  gpu: Gpu,
  { host, bufs }: ReturnType<typeof mergeInputs>,
  range: { lo: number; hi: number },
  dispatches: Dispatch[],
): Promise<void> {
  const n = host.running.length;
  gpu.run(dispatches);
  const want = {
    ...host,
    running: new Float32Array(host.running),
    global: new Float32Array(host.global),
  };
  mergeRangeRef(want, range);
  const gotRunning = await gpu.read(bufs.running, n);
  const gotGlobal = await gpu.read(bufs.global, n);
  equal(sameBits(gotRunning, want.running), true);
  equal(sameBits(gotGlobal, want.global), true);
  // Outside [lo, hi) nothing changed.
  if (range.lo > 0) equal(gotRunning[range.lo - 1], host.running[range.lo - 1]);
  if (range.hi < n) equal(gotGlobal[range.hi], host.global[range.hi]);
}

Deno.test("mergeRange: a range of the flat vector, bit-exact with its twin", async () => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      const range = { lo: 512, hi: 1300 };
      const inputs = mergeInputs(gpu, 1536, 1);
      const at = (buffer: GPUBuffer) => ({
        buffer,
        offset: range.lo * 4,
        length: range.hi - range.lo,
      });
      const { running, global, incoming, delta } = inputs.bufs;
      await checkMerge(gpu, inputs, range, [
        mergeRange(gpu, {
          running: at(running),
          global: at(global),
          incoming: at(incoming),
          delta: at(delta),
        }, { n: range.hi - range.lo }),
      ]);
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
      const range = { lo: 512, hi: 39_000 };
      const inputs = mergeInputs(gpu, 40_000, 5);
      const dispatches = mergeDispatches(gpu, inputs.bufs, range);
      equal(dispatches.length, 3);
      await checkMerge(gpu, inputs, range, dispatches);
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
