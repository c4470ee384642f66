/**
 * Token + position embedding. The backward pass is a deterministic
 * scatter-add without atomics: one pass lists, for every vocabulary row, the
 * positions that hold it (in position order), and the next sums dout over that
 * list per (row, channel). The position table's gradient sums over the batch
 * per (position, channel).
 *
 * Superset of the contract: `embeddingForward`'s shape takes an optional `v`
 * (default wte.length / c); a token >= v writes NaN into its output row so
 * that a bad token shows up in the loss instead of reading another row.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { bindings, checkRef, checkShape, grid, scratch, slice } from "./_wgsl.ts";

const WG = 64;

/**
 * out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]; tokens are u32 [b*t], wte
 * [v,c], wpe [>=t, c], out [b,t,c].
 *
 * @example
 * ```ts ignore
 * gpu.run([embeddingForward(gpu, { tokens, wte, wpe, out: encoded }, { b: B, t: T, c: C })]);
 * ```
 */
export function embeddingForward(
  gpu: Gpu,
  bufs: { tokens: TensorRef; wte: TensorRef; wpe: TensorRef; out: TensorRef },
  shape: { b: number; t: number; c: number; v?: number },
): Dispatch {
  const kernel = "embeddingForward";
  checkShape(kernel, shape, ["b", "t", "c"]);
  const { b, t, c } = shape;
  const v = shape.v ?? Math.floor((bufs.wte?.length ?? 0) / c);
  checkShape(kernel, { v }, ["v"]);
  const n = b * t * c;
  const refs = [
    slice(checkRef(kernel, "tokens", bufs.tokens, b * t), b * t),
    slice(checkRef(kernel, "wte", bufs.wte, v * c), v * c),
    slice(checkRef(kernel, "wpe", bufs.wpe, t * c), t * c),
    slice(checkRef(kernel, "out", bufs.out, n), n),
  ];
  const g = grid(n, 256);
  const code = `${bindings(["tokens"], "u32")}
@group(0) @binding(1) var<storage, read_write> wte: array<f32>;
@group(0) @binding(2) var<storage, read_write> wpe: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
const C = ${c}u;
const T = ${t}u;
const V = ${v}u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  let p = i / C;
  let ch = i % C;
  let tok = tokens[p];
  if (tok >= V) {
    o[i] = bitcast<f32>(0x7fc00000u | (tok & 0xffu));
    return;
  }
  o[i] = wte[tok * C + ch] + wpe[(p % T) * C + ch];
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * Accumulates dwte [v,c] and dwpe [t,c] (+=) from dout [b,t,c]. Three
 * dispatches: the per-token position lists (into scratch buffers the factory
 * allocates), the dwte sums, the dwpe sums. Tokens >= v are skipped.
 *
 * @example
 * ```ts ignore
 * gpu.run(embeddingBackward(gpu, { tokens, dout: dencoded, dwte, dwpe }, { b: B, t: T, c: C, v: V }));
 * ```
 */
export function embeddingBackward(
  gpu: Gpu,
  bufs: { tokens: TensorRef; dout: TensorRef; dwte: TensorRef; dwpe: TensorRef },
  shape: { b: number; t: number; c: number; v: number },
): Dispatch[] {
  const kernel = "embeddingBackward";
  checkShape(kernel, shape, ["b", "t", "c", "v"]);
  const { b, t, c, v } = shape;
  const bt = b * t;
  const tokens = slice(checkRef(kernel, "tokens", bufs.tokens, bt), bt);
  const dout = slice(checkRef(kernel, "dout", bufs.dout, bt * c), bt * c);
  const dwte = slice(checkRef(kernel, "dwte", bufs.dwte, v * c), v * c);
  const dwpe = slice(checkRef(kernel, "dwpe", bufs.dwpe, t * c), t * c);
  // spans[2v] = first list slot of token v, spans[2v+1] = its count.
  const spans = scratch(gpu, 2 * v, "embeddingBackward spans");
  const list = scratch(gpu, bt, "embeddingBackward positions");

  const gV = grid(v, WG);
  const listCode = `${bindings(["tokens", "spans", "list"], "u32")}
const BT = ${bt}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let tv = gid.x + gid.y * ${gV.stride}u;
  if (tv >= ${v}u) { return; }
  var before = 0u;
  var count = 0u;
  for (var p = 0u; p < BT; p++) {
    let tk = tokens[p];
    before += select(0u, 1u, tk < tv);
    count += select(0u, 1u, tk == tv);
  }
  spans[2u * tv] = before;
  spans[2u * tv + 1u] = count;
  if (count == 0u) { return; }
  var k = before;
  for (var p = 0u; p < BT; p++) {
    if (tokens[p] == tv) {
      list[k] = p;
      k++;
    }
  }
}`;

  const gW = grid(v * c, WG);
  const wteCode = `@group(0) @binding(0) var<storage, read_write> spans: array<u32>;
@group(0) @binding(1) var<storage, read_write> list: array<u32>;
@group(0) @binding(2) var<storage, read_write> dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> dwte: array<f32>;
const C = ${c}u;
const BT = ${bt}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${gW.stride}u;
  if (i >= ${v * c}u) { return; }
  let tv = i / C;
  let ch = i % C;
  let start = spans[2u * tv];
  let count = min(spans[2u * tv + 1u], BT);
  if (count == 0u) { return; }
  var acc = 0.0;
  for (var j = 0u; j < count; j++) {
    acc += dout[list[start + j] * C + ch];
  }
  dwte[i] = dwte[i] + acc;
}`;

  const gP = grid(t * c, WG);
  const wpeCode = `${bindings(["dout", "dwpe"])}
const C = ${c}u;
const T = ${t}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${gP.stride}u;
  if (i >= ${t * c}u) { return; }
  var acc = 0.0;
  for (var bb = 0u; bb < ${b}u; bb++) {
    acc += dout[bb * T * C + i];
  }
  dwpe[i] = dwpe[i] + acc;
}`;
  return [
    gpu.dispatch(
      `${kernel} lists`,
      gpu.pipeline(listCode, "main", `${kernel} lists`),
      [tokens, spans, list],
      gV.groups,
    ),
    gpu.dispatch(
      `${kernel} dwte`,
      gpu.pipeline(wteCode, "main", `${kernel} dwte`),
      [spans, list, dout, dwte],
      gW.groups,
    ),
    gpu.dispatch(
      `${kernel} dwpe`,
      gpu.pipeline(wpeCode, "main", `${kernel} dwpe`),
      [dout, dwpe],
      gP.groups,
    ),
  ];
}
