/**
 * Helpers shared by the WGSL kernels: shape and buffer checks, the 2-D grid
 * used to cover more than 65535 workgroups, exact f32 literals, and a `zero`
 * kernel.
 *
 * All kernels declare every storage binding `read_write`: a buffer used as
 * writable storage may then be bound again (another range of the same flat
 * parameter or gradient buffer) in the same dispatch, which WebGPU forbids
 * when one of the two bindings is read-only.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";

/** Workgroup size of the element-wise kernels. */
export const WG = 256;

/** Workgroup size of the tree reductions ({@linkcode treeSum}). */
export const RED = 256;

/** Largest workgroup count per dimension WebGPU guarantees. */
const MAX_GROUPS = 65535;

/** A grid of workgroups covering `n` invocations, and how to index it in WGSL. */
export interface Grid {
  /** Workgroup counts for x and y. */
  groups: [number, number];
  /** Invocations per row of the grid: `i = gid.x + gid.y * stride`. */
  stride: number;
}

/**
 * A 2-D grid of `size`-wide workgroups covering `n` invocations (1-D while
 * it fits in 65535 workgroups).
 */
export function grid(n: number, size: number = WG): Grid {
  const groups = Math.ceil(n / size);
  const x = Math.min(groups, MAX_GROUPS);
  const y = Math.max(1, Math.ceil(groups / Math.max(1, x)));
  return { groups: [x, y], stride: x * size };
}

/**
 * Throws a RangeError naming the kernel and the field unless every listed
 * shape value is a positive integer (or a non-negative one for `zeroOk`).
 */
export function checkShape(
  kernel: string,
  shape: object,
  names: string[],
  zeroOk: string[] = [],
): void {
  for (const name of names) {
    const v = (shape as Record<string, unknown>)[name];
    const min = zeroOk.includes(name) ? 0 : 1;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > 0xffffffff) {
      throw new RangeError(
        `Cannot build ${kernel}: ${name} must be an integer >= ${min}, got ${String(v)}`,
      );
    }
  }
}

/**
 * Throws a RangeError naming the kernel and the buffer unless `ref` exists,
 * holds at least `length` elements and starts at a 256-byte aligned offset.
 */
export function checkRef(
  kernel: string,
  name: string,
  ref: TensorRef | undefined,
  length: number,
): TensorRef {
  if (!ref || !ref.buffer) {
    throw new TypeError(`Cannot build ${kernel}: buffer ${name} is missing`);
  }
  const offset = ref.offset ?? 0;
  if (offset % 256 !== 0) {
    throw new RangeError(
      `Cannot build ${kernel}: ${name} offset must be a multiple of 256 bytes, got ${offset}`,
    );
  }
  if (!(ref.length >= length)) {
    throw new RangeError(
      `Cannot build ${kernel}: ${name} holds ${ref.length} elements, needs ${length}`,
    );
  }
  if (offset + ref.length * 4 > ref.buffer.size) {
    throw new RangeError(
      `Cannot build ${kernel}: ${name} range ends at byte ${offset + ref.length * 4}, ` +
        `past the buffer's ${ref.buffer.size} bytes`,
    );
  }
  return ref;
}

/** Binds `ref` with exactly `length` elements (WebGPU rejects empty bindings). */
export function slice(ref: TensorRef, length: number): TensorRef {
  return { buffer: ref.buffer, offset: ref.offset ?? 0, length: Math.max(1, length) };
}

/**
 * The f32 nearest `x` as a WGSL literal that parses back to the same f32
 * (nine significant digits always round-trip), usable in `const`.
 */
export function f32Lit(x: number): string {
  const v = Math.fround(x);
  if (!Number.isFinite(v)) throw new RangeError(`Cannot encode ${x} as a finite f32`);
  if (v === 0) return "0.0f";
  return `${v.toPrecision(9)}f`;
}

/**
 * WGSL declarations of `names` as `array<type>` storage bindings 0..n-1; an
 * entry `[name, elementType]` sets its own element type.
 */
export function bindings(names: (string | [string, string])[], type: string = "f32"): string {
  return names
    .map((e, i) => {
      const [n, t] = typeof e === "string" ? [e, type] : e;
      return `@group(0) @binding(${i}) var<storage, read_write> ${n}: array<${t}>;`;
    })
    .join("\n");
}

/**
 * How a kernel reads n consecutive f32: as n/4 vec4s when n is a multiple of
 * 4, else as n scalars. On CPU adapters (llvmpipe) a load costs about the same
 * at any width, so vec4s make a quarter as many.
 */
export interface Vec4Access {
  /** WGSL element type: "vec4<f32>" or "f32". */
  t: string;
  /** f32 per element: 4 or 1. */
  w: number;
  /** Elements of type `t`. */
  n: number;
  /** WGSL expression summing the components of a `t` value `x`. */
  sum(x: string): string;
}

/** The {@linkcode Vec4Access} for `n` consecutive f32. */
export function vec4Access(n: number): Vec4Access {
  return n % 4 === 0
    ? { t: "vec4<f32>", w: 4, n: n / 4, sum: (x) => `dot(${x}, vec4<f32>(1.0))` }
    : { t: "f32", w: 1, n, sum: (x) => x };
}

/** A storage buffer sized for `length` elements, owned by a kernel as scratch. */
export function scratch(gpu: Gpu, length: number, label: string): TensorRef {
  return { buffer: gpu.storage(Math.max(4, length), label), length: Math.max(1, length) };
}

/**
 * `buf[0..n) = 0` as a dispatch, for zeroing gradients inside a compute pass
 * (encoder.clearBuffer needs the pass closed).
 *
 * @example
 * ```ts ignore
 * const z = zeroFill(gpu, { buf: grads }, { n: grads.length });
 * gpu.run([z]);
 * ```
 */
export function zeroFill(gpu: Gpu, bufs: { buf: TensorRef }, shape: { n: number }): Dispatch {
  const kernel = "zeroFill";
  checkShape(kernel, shape, ["n"], ["n"]);
  const { n } = shape;
  const buf = checkRef(kernel, "buf", bufs.buf, n);
  const g = grid(n);
  const code = `${bindings(["buf"])}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  buf[i] = 0.0;
}`;
  return gpu.dispatch(
    kernel,
    gpu.pipeline(code, "main", kernel),
    [slice(buf, n)],
    n ? g.groups : [0],
  );
}

/**
 * WGSL for `fn reduce(l, w) -> f32` (l the local invocation index, w free for
 * the caller, e.g. the workgroup index): each of the 256 invocations of a
 * workgroup runs `body` (adding into `acc`), then a fixed-order tree sums the
 * workgroup.
 * Call it from uniform control flow; every invocation gets the total.
 */
export function treeSum(body: string): string {
  return `var<workgroup> red: array<f32, ${RED}>;
fn reduce(l: u32, w: u32) -> f32 {
  var acc = 0.0;
  ${body}
  red[l] = acc;
  workgroupBarrier();
  for (var s = ${RED / 2}u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] = red[l] + red[l + s]; }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&red[0]);
}`;
}

/**
 * An element-wise kernel over n: one invocation per index `i` runs `body`
 * with the named buffers bound in order (each checked to hold n elements);
 * `prelude` holds helper functions the body calls.
 */
export function elementwise(
  gpu: Gpu,
  kernel: string,
  refs: [string, TensorRef | undefined][],
  n: number,
  body: string,
  prelude = "",
): Dispatch {
  checkShape(kernel, { n }, ["n"], ["n"]);
  const g = grid(n);
  const code = `${bindings(refs.map(([name]) => name))}
${prelude}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  ${body}
}`;
  const bound = refs.map(([name, ref]) => slice(checkRef(kernel, name, ref, n), n));
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), bound, n ? g.groups : [0]);
}
