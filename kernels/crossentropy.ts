/**
 * Fused softmax + cross-entropy (llm.c's fused classifier) and the mean of
 * the per-row losses.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import {
  bindings,
  checkRef,
  checkShape,
  f32Lit,
  grid,
  RED,
  slice,
  treeSum,
  vec4Access,
} from "./_wgsl.ts";

const WG = 64;

/**
 * Per row r of logits [rows, v]: losses[r] = -log softmax(logits[r])[targets[r]]
 * and dlogits[r] = (softmax(logits[r]) - onehot(targets[r])) / rows, WRITTEN
 * (not accumulated); with `scale`, times `scale` instead of / rows (a
 * micro-batch of a step over more rows: 1 / all of the step's rows). Max-subtracted, so large logits do not overflow. A target
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
  shape: { rows: number; v: number; scale?: number },
): Dispatch {
  const kernel = "crossEntropyForwardBackward";
  checkShape(kernel, shape, ["rows", "v"]);
  if (shape.scale !== undefined && !(Number.isFinite(shape.scale) && shape.scale > 0)) {
    throw new RangeError(
      `Cannot build ${kernel}: scale must be a positive finite number, got ${shape.scale}`,
    );
  }
  const { rows, v } = shape;
  const refs = [
    slice(checkRef(kernel, "logits", bufs.logits, rows * v), rows * v),
    slice(checkRef(kernel, "targets", bufs.targets, rows), rows),
    slice(checkRef(kernel, "losses", bufs.losses, rows), rows),
    slice(checkRef(kernel, "dlogits", bufs.dlogits, rows * v), rows * v),
  ];
  const g = grid(rows, WG);
  // Rows are read as vec4s when v allows: each invocation walks a whole row, so on CPU
  // adapters every load is a gather, and vec4s make a quarter as many.
  const a = vec4Access(v);
  const vec = a.w === 4;
  const code = `${bindings([["logits", a.t], ["targets", "u32"], "losses", ["dlogits", a.t]])}
const V = ${v}u;
const VW = ${a.n}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x + gid.y * ${g.stride}u;
  if (r >= ${rows}u) { return; }
  let base = r * VW;
  var mxw = logits[base];
  for (var i = 1u; i < VW; i++) { mxw = max(mxw, logits[base + i]); }
  let mx = ${vec ? "max(max(mxw.x, mxw.y), max(mxw.z, mxw.w))" : "mxw"};
  var sumw = ${a.t}(0.0);
  for (var i = 0u; i < VW; i++) { sumw += exp(logits[base + i] - mx); }
  let sum = ${a.sum("sumw")};
  let tgt = targets[r];
  if (tgt < V) {
    let lt = ${vec ? "logits[base + tgt / 4u][tgt % 4u]" : "logits[base + tgt]"};
    losses[r] = log(sum) - (lt - mx);
  } else {
    losses[r] = bitcast<f32>(0x7fc00000u | (tgt & 0xffu));
  }
  let inv = 1.0 / sum;
  let k = ${shape.scale === undefined ? `1.0 / f32(${rows}u)` : f32Lit(shape.scale)};
  for (var i = 0u; i < VW; i++) {
    let p = exp(logits[base + i] - mx) * inv;
    ${
    vec
      ? "let hot = select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(tgt));"
      : "let hot = select(0.0, 1.0, i == tgt);"
  }
    dlogits[base + i] = (p - hot) * k;
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
