/**
 * The overlapped outer step's merge (actors/overlap.ts): on a range of the
 * flat parameter vector, the trainer's running parameters take the global
 * move of a round in place of their own:
 *
 *   running += (incoming − global) + delta;  global = incoming
 *
 * with `global` θ_r, `incoming` θ_{r+1} and `delta` Δ_r = θ_r − (running
 * parameters at the end of round r). Two f32 adds and no product, so no
 * fused multiply-add can change the rounding: the kernel is bit-exact with
 * its TypeScript twin {@linkcode mergeRangeRef} on every adapter.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { bindingChunk, CHUNK_ALIGN } from "./limits.ts";
import { bindings, checkRef, checkShape, grid, slice, WG } from "./_wgsl.ts";

/**
 * The merge over n floats of each ref (refs may start at an offset, a
 * multiple of 256 bytes, to cover one range of the flat vector).
 *
 * @example
 * ```ts ignore
 * gpu.run([mergeRange(gpu, { running, global, incoming, delta }, { n })]);
 * ```
 */
export function mergeRange(
  gpu: Gpu,
  bufs: { running: TensorRef; global: TensorRef; incoming: TensorRef; delta: TensorRef },
  shape: { n: number },
): Dispatch {
  const kernel = "mergeRange";
  checkShape(kernel, shape, ["n"]);
  const { n } = shape;
  const refs = (["running", "global", "incoming", "delta"] as const).map((k) =>
    slice(checkRef(kernel, k, bufs[k], n), n)
  );
  const g = grid(n);
  const code = `${bindings(["par", "glob", "inc", "dlt"])}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  let x = inc[i];
  par[i] = par[i] + ((x - glob[i]) + dlt[i]);
  glob[i] = x;
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * The merge on [lo, hi) of four whole vectors, as dispatches over pieces of
 * at most one binding (maxStorageBufferBindingSize) each: a GPT-2-small θ
 * (340 MB) is more than WebGPU's default 128 MiB binding. `lo` must be a
 * multiple of 64 floats (a binding's offset is 256-byte aligned); the pieces
 * after the first start at lo + k·chunk, chunk a multiple of
 * {@linkcode CHUNK_ALIGN} floats.
 *
 * @example
 * ```ts ignore
 * gpu.run(mergeDispatches(gpu, { running, global, incoming, delta }, { lo: 0, hi: n }));
 * ```
 */
export function mergeDispatches(
  gpu: Gpu,
  bufs: { running: GPUBuffer; global: GPUBuffer; incoming: GPUBuffer; delta: GPUBuffer },
  range: { lo: number; hi: number },
  chunk: number = bindingChunk(gpu.limits.maxBindingBytes),
): Dispatch[] {
  const { lo, hi } = range;
  if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || lo < 0 || hi < lo || lo % 64) {
    throw new RangeError(
      `Invalid merge range [${lo}, ${hi}): expected integers 0 <= lo <= hi, lo a multiple of 64`,
    );
  }
  if (!Number.isSafeInteger(chunk) || chunk <= 0 || chunk % CHUNK_ALIGN !== 0) {
    throw new RangeError(`Invalid merge chunk ${chunk}: expected a multiple of ${CHUNK_ALIGN}`);
  }
  const out: Dispatch[] = [];
  for (let start = lo; start < hi; start += chunk) {
    const n = Math.min(chunk, hi - start);
    const at = (buffer: GPUBuffer) => ({ buffer, offset: start * 4, length: n });
    out.push(mergeRange(gpu, {
      running: at(bufs.running),
      global: at(bufs.global),
      incoming: at(bufs.incoming),
      delta: at(bufs.delta),
    }, { n }));
  }
  return out;
}

/**
 * The TypeScript twin of {@linkcode mergeRange} on [lo, hi) of whole vectors.
 *
 * @example
 * ```ts
 * import { mergeRangeRef } from "./overlap_merge.ts";
 * const running = new Float32Array([0.5]), global = new Float32Array([1]);
 * mergeRangeRef({ running, global, incoming: new Float32Array([2]), delta: new Float32Array([0.5]) },
 *   { lo: 0, hi: 1 });
 * console.log(running[0], global[0]); // 2 2
 * ```
 */
export function mergeRangeRef(
  v: { running: Float32Array; global: Float32Array; incoming: Float32Array; delta: Float32Array },
  range: { lo: number; hi: number },
): void {
  const { running, global, incoming, delta } = v;
  for (let i = range.lo; i < range.hi; i++) {
    running[i] = running[i] + Math.fround(Math.fround(incoming[i] - global[i]) + delta[i]);
    global[i] = incoming[i];
  }
}
