/**
 * The `kernels` bench suite: matmul throughput per variant, layout and size on
 * the WebGPU adapter in use, with numpy's float32 matmul on the same machine as
 * the yardstick, and blocked against flash attention (kernels/bench_attention.ts).
 * Where the device has `shader-f16`, the tile variants with f16 inputs against
 * the same variant in f32 at GPT-2-small shapes ({@linkcode F16_SHAPES}).
 *
 * Each measurement encodes a batch of repetitions into one submit and reads
 * back once, doubling the batch until it runs long enough that the ~10 ms
 * readback floor is negligible.
 *
 * @module
 */
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";
import { acquireGpu, type Dispatch, type Gpu } from "./device.ts";
import { defaultVariant, matmul, type MatmulStorage, matmulVariants } from "./matmul.ts";
import { gpuDefaultVariant } from "./matmul_gpu.ts";
import { halfWords, packHalves, toF16Bits } from "./half.ts";
import { benchAttention } from "./bench_attention.ts";

/** A matmul problem of the kernels suite. */
export interface Problem {
  m: number;
  n: number;
  k: number;
  layout: "NN" | "TN" | "NT";
  /** What the model uses it for. */
  use: string;
  /** How A and B are stored (default "f32"; C is f32 either way). */
  inputType?: MatmulStorage;
}

const SQUARE = (s: number): Problem => ({ m: s, n: s, k: s, layout: "NN", use: "square" });

// The model's shapes at width C=128 (4C=512) with B*T=1024 rows, and the tied head (V=256).
const MODEL: Problem[] = [
  { m: 1024, n: 512, k: 128, layout: "NN", use: "fc forward y=xW" },
  { m: 1024, n: 128, k: 512, layout: "NT", use: "fc backward dx+=dy·Wᵀ" },
  { m: 128, n: 512, k: 1024, layout: "TN", use: "fc backward dW+=xᵀ·dy" },
  { m: 1024, n: 256, k: 128, layout: "NT", use: "head logits=x·wteᵀ" },
  { m: 256, n: 128, k: 1024, layout: "TN", use: "head dwte+=dlogitsᵀ·x" },
];

// Shapes a real GPU meets: a large square, and a weight gradient whose small output (m·n =
// 256·1024) over k = 4096 tokens left most of an H200 idle without split-K.
const GPU_SIZED: Problem[] = [
  SQUARE(4096),
  { m: 256, n: 1024, k: 4096, layout: "TN", use: "weight gradient dW+=xᵀ·dy, 4096 tokens" },
];

/** The workgroup-tiled variants, the ones timed at {@linkcode GPU_SIZED} shapes. */
const GPU_SHAPED = ["tile128", "tile128x64", "tile64", "tile64s4", "tiled"];

/** Variants too slow to time at large sizes on a CPU adapter (seconds per run). */
const SLOW_ON_CPU = new Set(["naive", ...GPU_SHAPED]);

/** The fields of a record that say which problem it measured. */
function describe(p: Problem): Pick<Problem, "m" | "n" | "k" | "layout" | "use"> {
  return { m: p.m, n: p.n, k: p.k, layout: p.layout, use: p.use };
}

function flops(p: Problem): number {
  return 2 * p.m * p.n * p.k;
}

/** Encodes `reps` copies of `d` into one submit and waits for it with one readback. */
async function runBatch(gpu: Gpu, d: Dispatch, reps: number, probe: GPUBuffer): Promise<number> {
  const t0 = performance.now();
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let i = 0; i < reps; i++) d.encode(pass);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  await gpu.read(probe, 1);
  return performance.now() - t0;
}

/** GFLOP/s of `variant` on `p`, timing batches until one lasts `minMs`. */
export async function timeMatmul(
  gpu: Gpu,
  variant: string,
  p: Problem,
  minMs: number,
): Promise<number> {
  const half = p.inputType === "f16";
  // 0.5 and 0.25 are exact in f16 too.
  const filled = (count: number, v: number) => {
    const values = new Float32Array(count).fill(v);
    return half ? gpu.storage(packHalves(toF16Bits(values))) : gpu.storage(values);
  };
  const words = (count: number) => (half ? halfWords(count) : count);
  const a = filled(p.m * p.k, 0.5);
  const b = filled(p.k * p.n, 0.25);
  const c = gpu.storage(p.m * p.n);
  try {
    const d = matmul(gpu, {
      a: { buffer: a, length: words(p.m * p.k) },
      b: { buffer: b, length: words(p.k * p.n) },
      c: { buffer: c, length: p.m * p.n },
    }, {
      m: p.m,
      n: p.n,
      k: p.k,
      transA: p.layout === "TN",
      transB: p.layout === "NT",
      variant,
      aType: p.inputType,
      bType: p.inputType,
    });
    // The first run compiles the pipeline and touches the buffers.
    await runBatch(gpu, d, 1, c);
    let reps = 1;
    for (;;) {
      const ms = await runBatch(gpu, d, reps, c);
      if (ms >= minMs || reps >= 4096) return (flops(p) * reps) / (ms / 1000) / 1e9;
      // Aim straight for the target with some margin instead of doubling blindly.
      reps = Math.min(4096, Math.max(reps * 2, Math.ceil((reps * minMs * 1.2) / Math.max(ms, 1))));
    }
  } finally {
    a.destroy();
    b.destroy();
    c.destroy();
  }
}

/**
 * GPT-2 small's matmuls (C = 768, 4C = 3072) over 4096 tokens: the attention
 * projection and the MLP's first layer forward, and a weight gradient, whose
 * k is the tokens. On llvmpipe each takes a few seconds.
 */
export const F16_SHAPES: Problem[] = [
  { m: 4096, n: 768, k: 768, layout: "NN", use: "projection forward y=xW" },
  { m: 4096, n: 3072, k: 768, layout: "NN", use: "fc forward y=xW" },
  { m: 768, n: 768, k: 4096, layout: "TN", use: "weight gradient dW+=xᵀ·dy" },
];

/**
 * f16-input against f32 GFLOP/s of the same tile variant (the one the GPU
 * default picks at the full shape), timed back to back in this process: the
 * best of `pairs` alternating runs of each. Nothing where the device lacks
 * `shader-f16`.
 */
async function* benchF16(gpu: Gpu, minMs: number): AsyncGenerator<BenchRecord> {
  if (!gpu.hasF16) {
    console.error(`kernels bench: skipping f16 matmul: the device lacks shader-f16`);
    return;
  }
  const pairs = gpu.isCpu ? 2 : 3;
  const note = gpu.isCpu
    ? `CPU emulation (${gpu.adapter.description}): f16 runs on the CPU and the machine is ` +
      `shared, so this ratio says nothing of a GPU`
    : `same process, best of ${pairs} alternating runs each`;
  for (const p of F16_SHAPES) {
    const variant = gpuDefaultVariant(p);
    let f32 = 0, f16 = 0;
    for (let i = 0; i < pairs; i++) {
      f32 = Math.max(f32, await timeMatmul(gpu, variant, p, minMs));
      f16 = Math.max(f16, await timeMatmul(gpu, variant, { ...p, inputType: "f16" }, minMs));
    }
    yield {
      name: "matmul_f16_vs_f32",
      value: f16 / f32,
      unit: "ratio",
      variant,
      ...describe(p),
      f16_gflops: Math.round(f16 * 10) / 10,
      f32_gflops: Math.round(f32 * 10) / 10,
      note,
      backend: gpu.adapter.backend,
      adapter: gpu.adapter.description,
    };
  }
}

const NUMPY_SCRIPT = `
import json, sys, time
import numpy as np
n = int(sys.argv[1]); min_s = float(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.random((n, n), dtype=np.float32); b = rng.random((n, n), dtype=np.float32)
a @ b
reps, dt = 1, 0.0
while True:
    t0 = time.perf_counter()
    for _ in range(reps): a @ b
    dt = time.perf_counter() - t0
    if dt >= min_s or reps >= 1 << 16: break
    reps *= 2
print(json.dumps({"gflops": 2 * n**3 * reps / dt / 1e9, "reps": reps, "numpy": np.__version__}))
`;

/** numpy's float32 GFLOP/s at n×n×n, or null (with a note on stderr) if numpy is missing. */
async function numpyGflops(n: number, minSeconds: number): Promise<
  { gflops: number; numpy: string } | null
> {
  try {
    const out = await new Deno.Command("python3", {
      args: ["-c", NUMPY_SCRIPT, String(n), String(minSeconds)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
      console.error(`kernels bench: skipping numpy comparison: python3 failed: ${err}`);
      return null;
    }
    return JSON.parse(new TextDecoder().decode(out.stdout));
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound ? "python3 not found" : String(err);
    console.error(`kernels bench: skipping numpy comparison: ${why}`);
    return null;
  }
}

/**
 * Runs the suite: one `matmul_gflops` record per variant, layout and size,
 * `matmul_f16_vs_f32` per shape of {@linkcode F16_SHAPES} (f16 over f32
 * GFLOP/s; where the device has shader-f16), the `attention_ms` and
 * `attention_gflops` records, then `numpy_matmul_gflops` and
 * `matmul_vs_numpy` when numpy is available.
 *
 * @example
 * ```ts ignore
 * import { bench } from "./bench.ts";
 * for await (const r of bench({ quick: true })) console.log(r.name, r.value, r.unit);
 * ```
 */
export async function* bench(options: BenchOptions): AsyncGenerator<BenchRecord> {
  const gpu = await acquireGpu();
  const minMs = options.quick ? 300 : 1000;
  const problems: Problem[] = options.quick
    ? [SQUARE(256), SQUARE(1024), MODEL[0], MODEL[2]]
    : [SQUARE(256), SQUARE(512), SQUARE(1024), ...MODEL];
  // Minutes per run on CPU emulation.
  if (!gpu.isCpu) problems.push(...GPU_SIZED);
  const backend = gpu.adapter.backend;
  const adapter = gpu.adapter.description;
  let best: BenchRecord | null = null;
  try {
    for (const p of problems) {
      // The 32x32 block is listed apart: its pipelines take >10 s to compile on llvmpipe.
      // The CPU-shaped variants would only add minutes at the GPU-sized shapes.
      const listed = GPU_SIZED.includes(p)
        ? GPU_SHAPED
        : options.quick
        ? matmulVariants(gpu)
        : [...matmulVariants(gpu), "reg32x32"];
      // The per-shape choice (on GPUs e.g. a split-K `tile64s9`) is marked `chosen`.
      const chosen = defaultVariant(gpu, p);
      const variants = listed.includes(chosen) ? listed : [chosen, ...listed];
      for (const variant of variants) {
        if (gpu.isCpu && SLOW_ON_CPU.has(variant) && flops(p) > 2 * 512 ** 3) continue;
        const value = await timeMatmul(gpu, variant, p, minMs);
        const record: BenchRecord = {
          name: "matmul_gflops",
          value,
          unit: "GFLOP/s",
          variant,
          ...describe(p),
          chosen: variant === chosen,
          backend,
          adapter,
        };
        if (!best || value > best.value) best = record;
        yield record;
      }
    }
    yield* benchF16(gpu, minMs);
    yield* benchAttention(gpu, options);
  } finally {
    gpu.destroy();
  }
  const np = await numpyGflops(1024, options.quick ? 0.3 : 1);
  if (!np || !best) return;
  yield {
    name: "numpy_matmul_gflops",
    value: np.gflops,
    unit: "GFLOP/s",
    m: 1024,
    n: 1024,
    k: 1024,
    layout: "NN",
    numpy: np.numpy,
  };
  yield {
    name: "matmul_vs_numpy",
    value: best.value / np.gflops,
    unit: "ratio",
    variant: best.variant,
    m: best.m,
    n: best.n,
    k: best.k,
    layout: best.layout,
    backend,
    adapter,
  };
}
