/**
 * Fused softmax + cross-entropy (llm.c's fused classifier) and the mean of
 * the per-row losses.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { bindings, checkRef, checkShape, grid, RED, slice, treeSum } from "./_wgsl.ts";

const WG = 64;

/**
 * Per row r of logits [rows, v]: losses[r] = -log softmax(logits[r])[targets[r]]
 * and dlogits[r] = (softmax(logits[r]) - onehot(targets[r])) / rows, WRITTEN
 * (not accumulated). Max-subtracted, so large logits do not overflow. A target
 * >= v gives a NaN loss (and no onehot term).
 *
 * @example
 * ```ts ignore
 * gpu.run([crossEntropyForwardBackward(gpu, { logits, targets, losses, dlogits },
 *   { rows: B * T, v: V })]);
 * ```
 */
export function crossEntropyForwardBackward(
  gpu: Gpu,
  bufs: { logits: TensorRef; targets: TensorRef; losses: TensorRef; dlogits: TensorRef },
  shape: { rows: number; v: number },
): Dispatch {
  const kernel = "crossEntropyForwardBackward";
  checkShape(kernel, shape, ["rows", "v"]);
  const { rows, v } = shape;
  const refs = [
    slice(checkRef(kernel, "logits", bufs.logits, rows * v), rows * v),
    slice(checkRef(kernel, "targets", bufs.targets, rows), rows),
    slice(checkRef(kernel, "losses", bufs.losses, rows), rows),
    slice(checkRef(kernel, "dlogits", bufs.dlogits, rows * v), rows * v),
  ];
  const g = grid(rows, WG);
  const code = `@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> losses: array<f32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
const V = ${v}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x + gid.y * ${g.stride}u;
  if (r >= ${rows}u) { return; }
  let base = r * V;
  var mx = logits[base];
  for (var i = 1u; i < V; i++) { mx = max(mx, logits[base + i]); }
  var sum = 0.0;
  for (var i = 0u; i < V; i++) { sum += exp(logits[base + i] - mx); }
  let tgt = targets[r];
  if (tgt < V) {
    losses[r] = log(sum) - (logits[base + tgt] - mx);
  } else {
    losses[r] = bitcast<f32>(0x7fc00000u | (tgt & 0xffu));
  }
  let inv = 1.0 / sum;
  let k = 1.0 / f32(${rows}u);
  for (var i = 0u; i < V; i++) {
    let p = exp(logits[base + i] - mx) * inv;
    dlogits[base + i] = (p - select(0.0, 1.0, i == tgt)) * k;
  }
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * out[0] = mean of losses[0..rows), by one workgroup: each invocation sums a
 * fixed strided subset, then a fixed-order tree. Deterministic.
 *
 * @example
 * ```ts ignore
 * gpu.run([meanLoss(gpu, { losses, out: lossOut }, { rows: B * T })]);
 * ```
 */
export function meanLoss(
  gpu: Gpu,
  bufs: { losses: TensorRef; out: TensorRef },
  shape: { rows: number },
): Dispatch {
  const kernel = "meanLoss";
  checkShape(kernel, shape, ["rows"]);
  const { rows } = shape;
  const refs = [
    slice(checkRef(kernel, "losses", bufs.losses, rows), rows),
    slice(checkRef(kernel, "out", bufs.out, 1), 1),
  ];
  const code = `${bindings(["losses", "o"])}
${
    treeSum(`
  for (var k = 0u; k < ${Math.ceil(rows / RED)}u; k++) {
    let i = k * ${RED}u + l;
    if (i < ${rows}u) { acc += losses[i]; }
  }`)
  }
@compute @workgroup_size(${RED})
fn main(@builtin(local_invocation_index) l: u32) {
  let total = reduce(l, 0u);
  if (l == 0u) { o[0] = total / f32(${rows}u); }
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, [1]);
}
