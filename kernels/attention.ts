/**
 * Causal multi-head self-attention over qkv [B,T,3C] (q, k, v blocks in that
 * order; head h uses columns h*hs..(h+1)*hs of each block, hs = C/NH), scores
 * scaled by 1/sqrt(hs). The forward saves the softmax probabilities att
 * [B,NH,T,T] (zero above the diagonal).
 *
 * The backward avoids scatter-adds: one dispatch per query row computes the
 * score gradients (kept in the `datt` scratch, [B,NH,T,T]) and dq; a second,
 * per key row, sums over the later query rows into dk and dv.
 *
 * `datt` in attentionBackward holds the gradient of the pre-softmax scores
 * (written, not accumulated, on and below the diagonal). It is optional: when
 * absent the factory allocates it.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { checkRef, checkShape, f32Lit, grid, scratch, slice } from "./_wgsl.ts";

const WG = 64;

function sizes(kernel: string, shape: { b: number; t: number; c: number; nh: number }) {
  checkShape(kernel, shape, ["b", "t", "c", "nh"]);
  const { b, t, c, nh } = shape;
  if (c % nh !== 0) {
    throw new RangeError(`Cannot build ${kernel}: c (${c}) must be a multiple of nh (${nh})`);
  }
  const hs = c / nh;
  return { b, t, c, nh, hs, rows: b * nh * t, scale: f32Lit(1 / Math.sqrt(hs)) };
}

function header(names: string[], s: ReturnType<typeof sizes>): string {
  return `${
    names.map((n, i) => `@group(0) @binding(${i}) var<storage, read_write> ${n}: array<f32>;`)
      .join("\n")
  }
const T = ${s.t}u;
const C = ${s.c}u;
const NH = ${s.nh}u;
const HS = ${s.hs}u;
const SCALE = ${s.scale};`;
}

/**
 * The opening of every attention shader: one invocation per (batch, head,
 * position) row; binds `row`, the position under the name `pos`, `bh`, `h` and `bb`.
 */
function rowPrologue(stride: number, rows: number, pos: string): string {
  return `  let row = gid.x + gid.y * ${stride}u;
  if (row >= ${rows}u) { return; }
  let ${pos} = row % T;
  let bh = row / T;
  let h = bh % NH;
  let bb = bh / NH;`;
}

/**
 * Forward: one invocation per (b, head, query t) writes att[b,h,t,:] and
 * out[b,t,h*hs..].
 *
 * @example
 * ```ts ignore
 * gpu.run([attentionForward(gpu, { qkv, out: atty, att }, { b: B, t: T, c: C, nh: NH })]);
 * ```
 */
export function attentionForward(
  gpu: Gpu,
  bufs: { qkv: TensorRef; out: TensorRef; att: TensorRef },
  shape: { b: number; t: number; c: number; nh: number },
): Dispatch {
  const kernel = "attentionForward";
  const s = sizes(kernel, shape);
  const { b, t, c, nh } = s;
  const refs = [
    slice(checkRef(kernel, "qkv", bufs.qkv, b * t * 3 * c), b * t * 3 * c),
    slice(checkRef(kernel, "out", bufs.out, b * t * c), b * t * c),
    slice(checkRef(kernel, "att", bufs.att, b * nh * t * t), b * nh * t * t),
  ];
  const g = grid(s.rows, WG);
  const code = `${header(["qkv", "o", "att"], s)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
${rowPrologue(g.stride, s.rows, "t")}
  var q: array<f32, HS>;
  let qo = (bb * T + t) * 3u * C + h * HS;
  for (var i = 0u; i < HS; i++) { q[i] = qkv[qo + i] * SCALE; }
  var sc: array<f32, T>;
  var mx = -3.4028234e38;
  for (var t2 = 0u; t2 <= t; t2++) {
    let ko = (bb * T + t2) * 3u * C + C + h * HS;
    var d = 0.0;
    for (var i = 0u; i < HS; i++) { d += q[i] * qkv[ko + i]; }
    sc[t2] = d;
    mx = max(mx, d);
  }
  var sum = 0.0;
  for (var t2 = 0u; t2 <= t; t2++) {
    let e = exp(sc[t2] - mx);
    sc[t2] = e;
    sum += e;
  }
  let inv = 1.0 / sum;
  let ao = row * T;
  var acc: array<f32, HS>;
  for (var t2 = 0u; t2 < T; t2++) {
    if (t2 > t) {
      att[ao + t2] = 0.0;
      continue;
    }
    let p = sc[t2] * inv;
    att[ao + t2] = p;
    let vo = (bb * T + t2) * 3u * C + 2u * C + h * HS;
    for (var i = 0u; i < HS; i++) { acc[i] += p * qkv[vo + i]; }
  }
  let oo = (bb * T + t) * C + h * HS;
  for (var i = 0u; i < HS; i++) { o[oo + i] = acc[i]; }
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * Backward: accumulates dqkv (+=) from dout [B,T,C], qkv and the saved att.
 * Two dispatches (query rows, then key rows); see the module comment.
 *
 * @example
 * ```ts ignore
 * gpu.run(attentionBackward(gpu, { dqkv, dout: datty, qkv, att }, { b: B, t: T, c: C, nh: NH }));
 * ```
 */
export function attentionBackward(
  gpu: Gpu,
  bufs: { dqkv: TensorRef; datt?: TensorRef; dout: TensorRef; qkv: TensorRef; att: TensorRef },
  shape: { b: number; t: number; c: number; nh: number },
): Dispatch[] {
  const kernel = "attentionBackward";
  const s = sizes(kernel, shape);
  const { b, t, c, nh } = s;
  const nAtt = b * nh * t * t;
  const dqkv = slice(checkRef(kernel, "dqkv", bufs.dqkv, b * t * 3 * c), b * t * 3 * c);
  const datt = slice(
    bufs.datt
      ? checkRef(kernel, "datt", bufs.datt, nAtt)
      : scratch(gpu, nAtt, "attentionBackward datt"),
    nAtt,
  );
  const dout = slice(checkRef(kernel, "dout", bufs.dout, b * t * c), b * t * c);
  const qkv = slice(checkRef(kernel, "qkv", bufs.qkv, b * t * 3 * c), b * t * 3 * c);
  const att = slice(checkRef(kernel, "att", bufs.att, nAtt), nAtt);
  const g = grid(s.rows, WG);
  const queryCode = `${header(["dqkv", "datt", "dout", "qkv", "att"], s)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
${rowPrologue(g.stride, s.rows, "t")}
  var d: array<f32, HS>;
  let oo = (bb * T + t) * C + h * HS;
  for (var i = 0u; i < HS; i++) { d[i] = dout[oo + i]; }
  let ao = row * T;
  var da: array<f32, T>;
  var dsum = 0.0;
  for (var t2 = 0u; t2 <= t; t2++) {
    let vo = (bb * T + t2) * 3u * C + 2u * C + h * HS;
    var x = 0.0;
    for (var i = 0u; i < HS; i++) { x += qkv[vo + i] * d[i]; }
    da[t2] = x;
    dsum += att[ao + t2] * x;
  }
  var dq: array<f32, HS>;
  for (var t2 = 0u; t2 <= t; t2++) {
    let dp = att[ao + t2] * (da[t2] - dsum);
    datt[ao + t2] = dp;
    let ko = (bb * T + t2) * 3u * C + C + h * HS;
    for (var i = 0u; i < HS; i++) { dq[i] += dp * qkv[ko + i]; }
  }
  let qo = (bb * T + t) * 3u * C + h * HS;
  for (var i = 0u; i < HS; i++) { dqkv[qo + i] = dqkv[qo + i] + dq[i] * SCALE; }
}`;
  const keyCode = `${header(["dqkv", "datt", "dout", "qkv", "att"], s)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
${rowPrologue(g.stride, s.rows, "t2")}
  var dk: array<f32, HS>;
  var dv: array<f32, HS>;
  for (var t = t2; t < T; t++) {
    let a = (bh * T + t) * T + t2;
    let dp = datt[a];
    let p = att[a];
    let qo = (bb * T + t) * 3u * C + h * HS;
    let oo = (bb * T + t) * C + h * HS;
    for (var i = 0u; i < HS; i++) {
      dk[i] += dp * qkv[qo + i];
      dv[i] += p * dout[oo + i];
    }
  }
  let ko = (bb * T + t2) * 3u * C + C + h * HS;
  for (var i = 0u; i < HS; i++) {
    dqkv[ko + i] = dqkv[ko + i] + dk[i] * SCALE;
    dqkv[ko + C + i] = dqkv[ko + C + i] + dv[i];
  }
}`;
  return [
    gpu.dispatch(
      `${kernel} queries`,
      gpu.pipeline(queryCode, "main", `${kernel} queries`),
      [dqkv, datt, dout, qkv, att],
      g.groups,
    ),
    gpu.dispatch(
      `${kernel} keys`,
      gpu.pipeline(keyCode, "main", `${kernel} keys`),
      [dqkv, datt, dout, qkv, att],
      g.groups,
    ),
  ];
}
