/**
 * LayerNorm over the last dimension (eps 1e-5), saving each row's mean and
 * rstd for the backward pass. The parameter-gradient reduction over rows runs
 * in two deterministic stages (per chunk of rows, then per channel over the
 * chunks in order), with no atomics.
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
  scratch,
  slice,
  vec4Access,
} from "./_wgsl.ts";
import { LN_EPS } from "./reference.ts";

/** Rows per chunk in the first stage of the dweight/dbias reduction. */
const CHUNK = 32;
const WG = 64;

/**
 * Rows of at most this many elements (vec4s or scalars) are read once into
 * named values and the passes over them reuse those: a reload from the stack
 * is one SIMD load, a reload from storage a gather of one element per lane.
 */
const HELD_MAX = 32;

/** WGSL lines for `count` elements: `each(i)` with i the element index as a literal or loop variable. */
function perElement(count: number, held: boolean, each: (i: string, k: number) => string): string {
  if (held) return Array.from({ length: count }, (_, k) => each(`${k}u`, k)).join("\n  ");
  return `for (var i = 0u; i < ${count}u; i++) { ${each("i", -1)} }`;
}

/**
 * Per row r of inp [rows, c]: out = (x - mean) * rstd * weight + bias, with
 * mean[r] and rstd[r] = 1 / sqrt(var + 1e-5) saved.
 *
 * @example
 * ```ts ignore
 * gpu.run([layernormForward(gpu, { inp, weight, bias, out, mean, rstd }, { rows: B * T, c: C })]);
 * ```
 */
export function layernormForward(
  gpu: Gpu,
  bufs: {
    inp: TensorRef;
    weight: TensorRef;
    bias: TensorRef;
    out: TensorRef;
    mean: TensorRef;
    rstd: TensorRef;
  },
  shape: { rows: number; c: number },
): Dispatch {
  const kernel = "layernormForward";
  checkShape(kernel, shape, ["rows", "c"]);
  const { rows, c } = shape;
  const refs = [
    slice(checkRef(kernel, "inp", bufs.inp, rows * c), rows * c),
    slice(checkRef(kernel, "weight", bufs.weight, c), c),
    slice(checkRef(kernel, "bias", bufs.bias, c), c),
    slice(checkRef(kernel, "out", bufs.out, rows * c), rows * c),
    slice(checkRef(kernel, "mean", bufs.mean, rows), rows),
    slice(checkRef(kernel, "rstd", bufs.rstd, rows), rows),
  ];
  const g = grid(rows, WG);
  const a = vec4Access(c);
  const held = a.n <= HELD_MAX;
  /** Element i of the row: a held value, or a load. */
  const x = (i: string) => (held ? `x${parseInt(i)}` : `inp[base + ${i}]`);
  const code = `${
    bindings([
      ["inp", a.t],
      ["weight", a.t],
      ["bias", a.t],
      ["o", a.t],
      ["mean", "f32"],
      ["rstd", "f32"],
    ])
  }
const C = ${c}u;
const CV = ${a.n}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x + gid.y * ${g.stride}u;
  if (r >= ${rows}u) { return; }
  let base = r * CV;
  ${held ? perElement(a.n, true, (i, k) => `let x${k} = inp[base + ${i}];`) : ""}
  var s = ${a.t}(0.0);
  ${perElement(a.n, held, (i) => `s += ${x(i)};`)}
  let m = ${a.sum("s")} / f32(C);
  var v = ${a.t}(0.0);
  ${perElement(a.n, held, (i) => `{ let d = ${x(i)} - m; v += d * d; }`)}
  let rs = 1.0 / sqrt(${a.sum("v")} / f32(C) + ${f32Lit(LN_EPS)});
  ${
    perElement(a.n, held, (i) =>
      `o[base + ${i}] = (${x(i)} - m) * rs * weight[${i}] + bias[${i}];`)
  }
  mean[r] = m;
  rstd[r] = rs;
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * Accumulates the gradients of layernormForward: dinp [rows, c], dweight [c]
 * and dbias [c] (+=), from dout and the saved mean/rstd. Three dispatches:
 * dinp per row, then dweight/dbias partial sums per chunk of 32 rows into a
 * scratch buffer the factory allocates, then the sum of the chunks in order.
 *
 * @example
 * ```ts ignore
 * const ds = layernormBackward(gpu, { dinp, dweight, dbias, dout, inp, weight, mean, rstd },
 *   { rows: B * T, c: C });
 * gpu.run(ds);
 * ```
 */
export function layernormBackward(
  gpu: Gpu,
  bufs: {
    dinp: TensorRef;
    dweight: TensorRef;
    dbias: TensorRef;
    dout: TensorRef;
    inp: TensorRef;
    weight: TensorRef;
    mean: TensorRef;
    rstd: TensorRef;
  },
  shape: { rows: number; c: number },
): Dispatch[] {
  const kernel = "layernormBackward";
  checkShape(kernel, shape, ["rows", "c"]);
  const { rows, c } = shape;
  const dinp = slice(checkRef(kernel, "dinp", bufs.dinp, rows * c), rows * c);
  const dweight = slice(checkRef(kernel, "dweight", bufs.dweight, c), c);
  const dbias = slice(checkRef(kernel, "dbias", bufs.dbias, c), c);
  const dout = slice(checkRef(kernel, "dout", bufs.dout, rows * c), rows * c);
  const inp = slice(checkRef(kernel, "inp", bufs.inp, rows * c), rows * c);
  const weight = slice(checkRef(kernel, "weight", bufs.weight, c), c);
  const mean = slice(checkRef(kernel, "mean", bufs.mean, rows), rows);
  const rstd = slice(checkRef(kernel, "rstd", bufs.rstd, rows), rows);
  const chunks = Math.ceil(rows / CHUNK);
  const partial = scratch(gpu, chunks * 2 * c, "layernormBackward partial sums");

  const gRows = grid(rows, WG);
  const a = vec4Access(c);
  const held = a.n <= HELD_MAX;
  /** Binds n and dn of element i: held values, or loads. */
  const nAt = (i: string) =>
    held
      ? `let n = n${parseInt(i)}; let dn = dn${parseInt(i)};`
      : `let n = (inp[base + ${i}] - m) * rs; let dn = weight[${i}] * dout[base + ${i}];`;
  const dinpCode = `${
    bindings([
      ["dinp", a.t],
      ["dout", a.t],
      ["inp", a.t],
      ["weight", a.t],
      ["mean", "f32"],
      ["rstd", "f32"],
    ])
  }
const C = ${c}u;
const CV = ${a.n}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x + gid.y * ${gRows.stride}u;
  if (r >= ${rows}u) { return; }
  let base = r * CV;
  let m = mean[r];
  let rs = rstd[r];
  ${
    held
      ? perElement(a.n, true, (i, k) =>
        `let n${k} = (inp[base + ${i}] - m) * rs;\n  let dn${k} = weight[${i}] * dout[base + ${i}];`)
      : ""
  }
  var dms = ${a.t}(0.0);
  var dnms = ${a.t}(0.0);
  ${perElement(a.n, held, (i) => `{ ${nAt(i)} dms += dn; dnms += dn * n; }`)}
  let dm = ${a.sum("dms")} / f32(C);
  let dnm = ${a.sum("dnms")} / f32(C);
  ${
    perElement(a.n, held, (i) =>
      `{ ${nAt(i)} dinp[base + ${i}] = dinp[base + ${i}] + (dn - dm - n * dnm) * rs; }`)
  }
}`;

  // Lanes take neighbouring channels here, so their loads are contiguous already; vec4s
  // still quarter the count of invocations and loads.
  const gPart = grid(chunks * a.n, WG);
  const partCode = `${
    bindings([["partial", a.t], ["dout", a.t], ["inp", a.t], ["mean", "f32"], ["rstd", "f32"]])
  }
const C = ${a.n}u;
const ROWS = ${rows}u;
const CHUNK = ${CHUNK}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let idx = gid.x + gid.y * ${gPart.stride}u;
  if (idx >= ${chunks * a.n}u) { return; }
  let ch = idx / C;
  let i = idx % C;
  var sw = ${a.t}(0.0);
  var sb = ${a.t}(0.0);
  for (var k = 0u; k < CHUNK; k++) {
    let r = ch * CHUNK + k;
    if (r >= ROWS) { break; }
    let d = dout[r * C + i];
    sb += d;
    sw += (inp[r * C + i] - mean[r]) * rstd[r] * d;
  }
  partial[ch * 2u * C + i] = sw;
  partial[ch * 2u * C + C + i] = sb;
}`;

  const gCol = grid(a.n, WG);
  const sumCode = `${bindings([["dweight", a.t], ["dbias", a.t], ["partial", a.t]])}
const C = ${a.n}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${gCol.stride}u;
  if (i >= C) { return; }
  var sw = ${a.t}(0.0);
  var sb = ${a.t}(0.0);
  for (var ch = 0u; ch < ${chunks}u; ch++) {
    sw += partial[ch * 2u * C + i];
    sb += partial[ch * 2u * C + C + i];
  }
  dweight[i] = dweight[i] + sw;
  dbias[i] = dbias[i] + sb;
}`;
  return [
    gpu.dispatch(
      `${kernel} dinp`,
      gpu.pipeline(dinpCode, "main", `${kernel} dinp`),
      [dinp, dout, inp, weight, mean, rstd],
      gRows.groups,
    ),
    gpu.dispatch(
      `${kernel} partial`,
      gpu.pipeline(partCode, "main", `${kernel} partial`),
      [partial, dout, inp, mean, rstd],
      gPart.groups,
    ),
    gpu.dispatch(
      `${kernel} dweight dbias`,
      gpu.pipeline(sumCode, "main", `${kernel} dweight dbias`),
      [dweight, dbias, partial],
      gCol.groups,
    ),
  ];
}
