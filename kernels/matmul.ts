/**
 * Matrix multiply kernels: C[m,n] (+)= op(A)·op(B) (+ bias), in three layouts
 * (plain, A transposed, B transposed), and the bias gradient.
 *
 * Several variants share one API. Each is generated WGSL; the sizes live in a
 * small uniform buffer, so one compiled pipeline per variant, layout and
 * accumulate/bias combination serves every shape (llvmpipe needs up to
 * seconds to compile the larger register-blocked kernels):
 * - `naive`: one output per invocation, the baseline.
 * - `reg{R}x{C}` (e.g. `reg8x8`): each invocation keeps an R×C block of C in
 *   registers, so every value it loads from A or B is used C (or R) times.
 *   Software rasterizers (llvmpipe) are bound by storage-buffer loads, not by
 *   arithmetic, so this reuse is what makes them fast.
 *   The invocations of a workgroup share their R rows and take neighbouring
 *   column blocks.
 * - `lane{R}x{C}` (e.g. `lane16x8`): like `reg`, but the columns of the
 *   workgroup's invocations interleave, so neighbouring lanes load neighbouring
 *   elements of B.
 * - `tiled`, `tile128`, `tile128x64`, `tile64`, and split-K `tile64s{S}`:
 *   workgroup-tiled kernels for real GPUs, in `matmul_gpu.ts`. The `tile`
 *   variants also take A, B or C stored as f16 (`aType`, `bType`, `cType`),
 *   on devices with the `shader-f16` feature; the sums are f32.
 *
 * Suffixes on `reg`/`lane`, in this order: `w{W}` sets the workgroup width
 * (default 8, llvmpipe's SIMD width); `k{U}` unrolls the k loop U times; `v`
 * loads 4 consecutive elements at once where layout and sizes allow: along k,
 * 4 steps at once, for A not transposed and B transposed (k a multiple of 4);
 * along the block, for B's columns when B is not transposed and A's rows when
 * A is. On llvmpipe a load costs about the same at any width, so `v` took
 * 0.55-0.8x the time at most of the model's shapes; `k{U}` measured no faster.
 *
 * The CPU default `reg32x16v` measured fastest in all three layouts on
 * llvmpipe for large matrices (32x32 spills 32 KiB of accumulators per SIMD
 * group and compiles for >10 s); outputs at most 64 wide get `reg32x8v`
 * ({@linkcode defaultVariant}).
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { extras, type Layout, type MatmulEpilogue, type Plan, u, usesF16 } from "./_matmul_wgsl.ts";
import { cpuPlan } from "./matmul_cpu.ts";
import {
  GPU_VARIANTS,
  gpuDefaultVariant,
  gpuPlan,
  hasF16Form,
  type MatmulPlan,
} from "./matmul_gpu.ts";
import { halfWords } from "./half.ts";

export { biasBackwardReference, matmulReference } from "./matmul_reference.ts";

/**
 * The buffers of {@linkcode matmul}. The optional ones fuse the work of a
 * separate element-wise kernel into the matmul's loads or stores, saving that
 * kernel's pass over memory (on CPU adapters, where such passes are bound by
 * per-element overhead, a whole dispatch's time).
 */
export interface MatmulBuffers {
  /** A stored [m,k], or [k,m] with `transA` (f16 with `aType: "f16"`: see `halfWords`). */
  a: TensorRef;
  /** B stored [k,n], or [n,k] with `transB` (f16 with `bType: "f16"`). */
  b: TensorRef;
  /** C [m,n], written (or accumulated into); f16 with `cType: "f16"`. */
  c: TensorRef;
  /** Optional bias [n] added to every row of C. */
  bias?: TensorRef;
  /** Optional R [m,n] added to C (a residual connection: C = A·B + bias + R). */
  residual?: TensorRef;
  /**
   * [m,n], with `epilogue`: `"gelu"` writes the pre-activation A·B + bias
   * here and gelu of it to C; `"geluBackward"` reads the pre-activation here
   * and writes C = (A·B) · gelu'(pre).
   */
  pre?: TensorRef;
  /**
   * Optional [n]: colSum[j] += Σ_k op(B)[k,j], summed in k order. With B the
   * gradient of a linear layer's output, that is its bias gradient, taken
   * from the loads the weight gradient already makes.
   */
  colSum?: TensorRef;
}

/** What {@linkcode matmul} applies to each output before storing it (see `pre`). */
export type { MatmulEpilogue };

/**
 * How a matmul operand is stored. An f16 tensor of e elements is bound as
 * ceil(e/2) 4-byte words (its {@linkcode TensorRef} length counts those words:
 * `halfWords` in half.ts), two values to a word, the first in the low half.
 */
export type MatmulStorage = "f32" | "f16";

/** The shape and options of {@linkcode matmul}. */
export interface MatmulShape {
  /** Rows of C. */
  m: number;
  /** Columns of C. */
  n: number;
  /** The contracted dimension. */
  k: number;
  /** A is stored [k,m]. */
  transA?: boolean;
  /** B is stored [n,k]. */
  transB?: boolean;
  /** C += op(A)·op(B) instead of C = op(A)·op(B). */
  accumulate?: boolean;
  /** A variant name from {@linkcode matmulVariants}; default by adapter class. */
  variant?: string;
  /** Applied to each output after bias and residual; needs `pre` (default "none"). */
  epilogue?: MatmulEpilogue;
  /**
   * How A is stored (default "f32"). "f16" needs a device with `shader-f16`
   * and a `tile` variant; the products are summed in f32.
   */
  aType?: MatmulStorage;
  /** How B is stored (default "f32"); "f16" as `aType`. */
  bType?: MatmulStorage;
  /** How C is stored (default "f32"); "f16" as `aType`. Bias, residual, pre, colSum stay f32. */
  cType?: MatmulStorage;
}

/** The default variant for CPU adapters (llvmpipe, lavapipe), chosen by measurement. */
export const CPU_DEFAULT_VARIANT = "reg32x16v";
/** The CPU variant for outputs at most 64 columns wide (see {@linkcode defaultVariant}). */
export const CPU_NARROW_VARIANT = "reg32x8v";

/**
 * The variant {@linkcode matmul} uses when none is given. On GPUs, by the
 * number of tiles the output makes (`tile128`, `tile128x64`, `tile64`, or
 * split-K `tile64s{S}`: see `gpuDefaultVariant` in `matmul_gpu.ts`), or
 * `tiled` where the device's workgroup storage cannot hold the choice.
 * On CPU adapters, `reg32x16v`, or `reg32x8v` for outputs at most 64 columns
 * wide: a `reg32x16` workgroup covers 8 × 16 = 128 columns, so at n = 64 half
 * its lanes would multiply clamped duplicates. Measured on llvmpipe at the
 * small model's shapes (m or k = 1024 tokens, n = 64), `reg32x8v` took
 * 0.6-0.8x the time of `reg32x16v` in all three layouts; at n = 192 the wider
 * block was faster despite its idle quarter.
 *
 * @example
 * ```ts ignore
 * defaultVariant(gpu, { m: 1024, n: 64, k: 256 }); // "reg32x8v" on llvmpipe
 * defaultVariant(gpu, { m: 1024, n: 256, k: 64 }); // "reg32x16v"
 * defaultVariant(gpu, { m: 256, n: 1024, k: 4096 }); // "tile64s9" on a GPU
 * ```
 */
export function defaultVariant(
  gpu: { isCpu: boolean; device?: { limits: { maxComputeWorkgroupStorageSize: number } } },
  shape: Pick<MatmulShape, "m" | "n" | "k" | "aType" | "bType" | "cType">,
): string {
  const l = layoutOf(shape, {});
  const f16 = usesF16(l);
  // Only the tile variants have an f16 form, so f16 takes them on CPU adapters too.
  if (gpu.isCpu && !f16) return shape.n <= 64 ? CPU_NARROW_VARIANT : CPU_DEFAULT_VARIANT;
  const choice = gpuDefaultVariant(shape);
  const limit = gpu.device?.limits.maxComputeWorkgroupStorageSize ?? Infinity;
  const p = gpuPlan(choice, l);
  // `tiled` has no f16 form: where the f16 tile does not fit, matmul says so.
  return p && (p.workgroupBytes <= limit || f16) ? choice : "tiled";
}

const CPU_VARIANTS = [
  "naive",
  "reg32x16v",
  "reg32x8v",
  "reg4x4",
  "reg4x4v",
  "reg8x8",
  "reg16x16",
  "reg32x16",
  "reg32x8",
  "lane16x8",
];

/**
 * The variant names {@linkcode matmul} accepts on this adapter, the default
 * first (on GPUs the default depends on the shape: `tile128` is the choice
 * for large outputs). Other `reg{R}x{C}[w{W}][k{U}][v]`, `lane{R}x{C}[w{W}]`
 * and `tile{64|128}[x{64|128}][s{S}]` names are accepted too.
 *
 * @example
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * import { matmulVariants } from "./matmul.ts";
 * const gpu = await acquireGpu();
 * console.log(matmulVariants(gpu)); // e.g. ["reg32x16", "naive", ...]
 * gpu.destroy();
 * ```
 */
export function matmulVariants(gpu: Gpu): string[] {
  if (!gpu.isCpu) return [...GPU_VARIANTS, ...CPU_VARIANTS];
  return [
    CPU_DEFAULT_VARIANT,
    ...CPU_VARIANTS.filter((v) => v !== CPU_DEFAULT_VARIANT),
    ...GPU_VARIANTS,
  ];
}

function checkDim(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1 || v > 1 << 24) {
    throw new RangeError(`Invalid matmul shape: ${name} must be an integer in 1..2^24, got ${v}`);
  }
}

function checkRef(name: string, ref: TensorRef, need: number): void {
  if (!ref || !ref.buffer) throw new TypeError(`Invalid matmul buffers: ${name} is missing`);
  if (ref.length < need) {
    throw new RangeError(`Invalid matmul buffers: ${name} holds ${ref.length} < ${need} elements`);
  }
  if ((ref.offset ?? 0) % 256 !== 0) {
    throw new RangeError(`Invalid matmul buffers: ${name} offset ${ref.offset} is not 256-aligned`);
  }
}

/** The passes of `variant` at shape `l`. */
function plan(variant: string, l: Layout): MatmulPlan {
  if (usesF16(l) && !hasF16Form(variant)) {
    throw new TypeError(
      `Invalid matmul variant: ${variant} has no f16 form (f16 storage needs ` +
        `tile{64|128}[x{64|128}][s{S}])`,
    );
  }
  const gpuVariant = gpuPlan(variant, l);
  if (gpuVariant) return gpuVariant;
  const one = (p: Plan): MatmulPlan => ({
    passes: [{ ...p, role: "matmul" }],
    scratch: 0,
    workgroupBytes: 0,
  });
  const cpu = cpuPlan(variant, l);
  if (cpu) return one(cpu);
  throw new TypeError(
    `Unknown matmul variant: ${variant} (known: ${
      [...CPU_VARIANTS, ...GPU_VARIANTS].join(", ")
    }, reg{R}x{C}[w{W}][k{U}][v], ` +
      `lane{R}x{C}[w{W}], tile{64|128}[x{64|128}][s{S}])`,
  );
}

/**
 * The generated WGSL of a variant at a shape, for inspection and tests. A
 * split-K variant has two passes: their modules, one after the other, the
 * second after a `// next pass` line.
 *
 * @example
 * ```ts
 * import { matmulShader } from "./matmul.ts";
 * const code = matmulShader("reg4x4", { m: 8, n: 8, k: 8 });
 * console.log(code.includes("fn main")); // true
 * ```
 */
export function matmulShader(
  variant: string,
  shape: MatmulShape & { bias?: boolean; residual?: boolean; colSum?: boolean },
): string {
  return plan(variant, layoutOf(shape, shape)).passes.map((p) => p.code).join("\n// next pass\n");
}

/** Which optional buffers a matmul has. */
interface Extras {
  bias?: unknown;
  residual?: unknown;
  colSum?: unknown;
  pre?: unknown;
}

function layoutOf(shape: MatmulShape, has: Extras): Layout {
  checkDim("m", shape.m);
  checkDim("n", shape.n);
  checkDim("k", shape.k);
  const epilogue = shape.epilogue ?? "none";
  if (!["none", "gelu", "geluBackward"].includes(epilogue)) {
    throw new TypeError(`Invalid matmul epilogue: ${epilogue} (known: none, gelu, geluBackward)`);
  }
  for (const key of ["aType", "bType", "cType"] as const) {
    const v = shape[key] ?? "f32";
    if (v !== "f32" && v !== "f16") {
      throw new TypeError(`Invalid matmul ${key}: ${v} (known: f32, f16)`);
    }
  }
  return {
    m: shape.m,
    n: shape.n,
    k: shape.k,
    transA: shape.transA ?? false,
    transB: shape.transB ?? false,
    accumulate: shape.accumulate ?? false,
    bias: Boolean(has.bias),
    residual: Boolean(has.residual),
    epilogue,
    colSum: Boolean(has.colSum),
    f16A: shape.aType === "f16",
    f16B: shape.bType === "f16",
    f16C: shape.cType === "f16",
  };
}

/** The 4-byte words that `count` elements take when stored as f16 (`half`) or f32. */
function words(count: number, half: boolean): number {
  return half ? halfWords(count) : count;
}

/**
 * Prepares C[m,n] (+)= op(A)[m,k]·op(B)[k,n] (+ bias[n]).
 *
 * A is stored [m,k] or, with `transA`, [k,m]; B is stored [k,n] or, with
 * `transB`, [n,k]. The variant defaults to the register-blocked kernel on CPU
 * adapters and a workgroup-tiled one chosen by shape on GPUs
 * ({@linkcode defaultVariant}). The summation order is fixed, so repeated runs
 * give the same bits. A split-K variant encodes two dispatches (the partial
 * products, then their sum in split order) and allocates its scratch buffer
 * here, once; it lives as long as the device.
 *
 * @example Multiply two 2x2 matrices
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * import { matmul } from "./matmul.ts";
 * const gpu = await acquireGpu();
 * const a = gpu.storage(new Float32Array([1, 2, 3, 4]));
 * const b = gpu.storage(new Float32Array([5, 6, 7, 8]));
 * const c = gpu.storage(4);
 * gpu.run([matmul(gpu, {
 *   a: { buffer: a, length: 4 }, b: { buffer: b, length: 4 }, c: { buffer: c, length: 4 },
 * }, { m: 2, n: 2, k: 2 })]);
 * console.log(await gpu.read(c, 4)); // Float32Array [19, 22, 43, 50]
 * gpu.destroy();
 * ```
 */
export function matmul(gpu: Gpu, bufs: MatmulBuffers, shape: MatmulShape): Dispatch {
  const l = layoutOf(shape, bufs);
  if (usesF16(l) && !gpu.hasF16) {
    throw new TypeError(
      `Cannot build f16 matmul: the device lacks the shader-f16 feature (adapter ` +
        `${gpu.adapter.description}, backend ${gpu.adapter.backend}); use f32 storage`,
    );
  }
  const aWords = words(l.m * l.k, l.f16A), bWords = words(l.k * l.n, l.f16B);
  const cWords = words(l.m * l.n, l.f16C);
  checkRef("a", bufs.a, aWords);
  checkRef("b", bufs.b, bWords);
  checkRef("c", bufs.c, cWords);
  if ((l.epilogue === "none") !== (bufs.pre === undefined)) {
    throw new TypeError(
      `Invalid matmul buffers: pre must be given exactly when an epilogue is (epilogue ${l.epilogue})`,
    );
  }
  const sizes: Record<string, number> = {
    bias: l.n,
    residual: l.m * l.n,
    pre: l.m * l.n,
    colSum: l.n,
  };
  const extra = extras(l).map((name) => {
    const ref = bufs[name as keyof MatmulBuffers] as TensorRef;
    checkRef(name, ref, sizes[name]);
    return { ...ref, length: sizes[name] };
  });
  const variant = shape.variant ?? defaultVariant(gpu, shape);
  const p = plan(variant, l);
  const limits = gpu.device.limits;
  if (p.workgroupBytes > limits.maxComputeWorkgroupStorageSize) {
    throw new RangeError(
      `Cannot build matmul ${variant}: it needs ${p.workgroupBytes} bytes of workgroup storage, ` +
        `the device allows ${limits.maxComputeWorkgroupStorageSize}`,
    );
  }
  if (p.scratch * 4 > limits.maxStorageBufferBindingSize) {
    throw new RangeError(
      `Cannot build matmul ${variant}: its ${p.scratch * 4}-byte split-K scratch exceeds ` +
        `the device's ${limits.maxStorageBufferBindingSize}-byte binding limit`,
    );
  }
  const tag = `${l.transA ? "T" : "N"}${l.transB ? "T" : "N"}`;
  const fused = [
    ...extras(l).filter((x) => x !== "bias" && x !== "pre"),
    l.epilogue,
    l.f16A ? "f16a" : "none",
    l.f16B ? "f16b" : "none",
    l.f16C ? "f16c" : "none",
  ].filter((x) => x !== "none");
  const label = `matmul_${variant}_${tag}_${l.m}x${l.n}x${l.k}${
    fused.map((x) => `+${x}`).join("")
  }`;
  // Bind exactly the used elements so a larger buffer (a view of the flat parameter buffer)
  // cannot shift arrayLength-based bounds checks.
  const dims = gpu.uniform(new Uint32Array([l.m, l.n, l.k, 0]), `${label}_dims`);
  const a = { ...bufs.a, length: aWords }, b = { ...bufs.b, length: bWords };
  const c = { ...bufs.c, length: cWords }, d = { buffer: dims, length: 4 };
  const scratch = p.scratch > 0
    ? { buffer: gpu.storage(p.scratch, `${label}_scratch`), length: p.scratch }
    : undefined;
  const refs: Record<string, TensorRef[]> = {
    matmul: [a, b, c, d, ...extra],
    partial: scratch ? [a, b, scratch, d] : [],
    reduce: scratch ? [scratch, c, d, ...extra] : [],
  };
  const ds = p.passes.map((pass) => {
    const name = p.passes.length > 1 ? `${label}_${pass.role}` : label;
    const pipeline = gpu.pipeline(pass.code, "main", name);
    return gpu.dispatch(name, pipeline, refs[pass.role], pass.workgroups);
  });
  const release = () => {
    dims.destroy();
    scratch?.buffer.destroy();
  };
  // Dispatches in one compute pass run in order, each seeing the storage writes of the last.
  return ds.length === 1 ? { ...ds[0], release } : {
    label,
    encode(pass) {
      for (const x of ds) x.encode(pass);
    },
    release,
  };
}

/**
 * Whether `variant` can run `shape` on `gpu`: a known name, with an f16 form
 * where the shape stores an operand as f16 (and the device has `shader-f16`),
 * its workgroup memory and split-K scratch within the device's limits. What
 * {@linkcode matmul} would refuse for these reasons is false here.
 *
 * @example
 * ```ts ignore
 * variantFits(gpu, "tile128", { m: 4096, n: 768, k: 768 }); // true on a GPU with 32 KiB
 * variantFits(gpu, "reg32x16v", { m: 64, n: 64, k: 64, aType: "f16" }); // false: no f16 form
 * ```
 */
export function variantFits(
  gpu: Gpu,
  variant: string,
  shape: Pick<MatmulShape, "m" | "n" | "k" | "transA" | "transB" | "aType" | "bType" | "cType">,
): boolean {
  const l = layoutOf(shape, {});
  if (usesF16(l) && !gpu.hasF16) return false;
  let p: MatmulPlan;
  try {
    p = plan(variant, l);
  } catch {
    return false;
  }
  const limits = gpu.device.limits;
  return p.workgroupBytes <= limits.maxComputeWorkgroupStorageSize &&
    p.scratch * 4 <= limits.maxStorageBufferBindingSize;
}

/**
 * Prepares dbias[cols] += sum over rows of dout[rows, cols], summed in row order
 * (deterministic).
 *
 * @example
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * import { biasBackward } from "./matmul.ts";
 * const gpu = await acquireGpu();
 * const dout = gpu.storage(new Float32Array([1, 2, 3, 4]));
 * const dbias = gpu.storage(new Float32Array([10, 20]));
 * gpu.run([biasBackward(gpu, {
 *   dout: { buffer: dout, length: 4 }, dbias: { buffer: dbias, length: 2 },
 * }, { rows: 2, cols: 2 })]);
 * console.log(await gpu.read(dbias, 2)); // Float32Array [14, 26]
 * gpu.destroy();
 * ```
 */
export function biasBackward(
  gpu: Gpu,
  bufs: { dout: TensorRef; dbias: TensorRef },
  shape: { rows: number; cols: number },
): Dispatch {
  const { rows, cols } = shape;
  checkDim("rows", rows);
  checkDim("cols", cols);
  checkRef("dout", bufs.dout, rows * cols);
  checkRef("dbias", bufs.dbias, cols);
  // Four independent partial sums per column keep more loads in flight; they are
  // combined in a fixed order, so the result is deterministic.
  const code = `@group(0) @binding(0) var<storage, read> dout: array<f32>;
@group(0) @binding(1) var<storage, read_write> dbias: array<f32>;
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  if (j >= ${u(cols)}) { return; }
  var s0 = 0.0;
  var s1 = 0.0;
  var s2 = 0.0;
  var s3 = 0.0;
  var i = 0u;
  for (; i + 4u <= ${u(rows)}; i += 4u) {
    s0 += dout[i * ${u(cols)} + j];
    s1 += dout[(i + 1u) * ${u(cols)} + j];
    s2 += dout[(i + 2u) * ${u(cols)} + j];
    s3 += dout[(i + 3u) * ${u(cols)} + j];
  }
  for (; i < ${u(rows)}; i++) {
    s0 += dout[i * ${u(cols)} + j];
  }
  dbias[j] = dbias[j] + ((s0 + s1) + (s2 + s3));
}
`;
  const label = `bias_backward_${rows}x${cols}`;
  const pipeline = gpu.pipeline(code, "main", label);
  return gpu.dispatch(label, pipeline, [
    { ...bufs.dout, length: rows * cols },
    { ...bufs.dbias, length: cols },
  ], [Math.ceil(cols / 64), 1, 1]);
}
