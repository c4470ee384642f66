/**
 * Attention timings of the kernels bench suite: the blocked kernels
 * (kernels/attention.ts) against flash attention (kernels/flash_attention.ts),
 * forward and backward, in ms per call and in GFLOP/s of the causal problem's
 * nominal FLOPs (forward 4·hs per query-key pair on or below the diagonal,
 * backward 8·hs; the flash backward's recomputation of the scores is not
 * counted). Printed, never asserted.
 *
 * @module
 */
import type { BenchRecord } from "../tests/bench_main.ts";
import type { Dispatch, Gpu } from "./device.ts";
import { attentionBackward, attentionForward } from "./attention.ts";
import { flashAttentionBackward, flashAttentionForward } from "./flash_attention.ts";
import { randomF32 } from "./_testing.ts";

/** An attention problem to time. */
export interface AttentionProblem {
  b: number;
  t: number;
  c: number;
  nh: number;
  /** What the shape stands for. */
  use: string;
}

/** The small model's shape, and the large config's at batch 4. */
export const ATTENTION_PROBLEMS: AttentionProblem[] = [
  { b: 16, t: 64, c: 64, nh: 4, use: "small model" },
  { b: 4, t: 256, c: 256, nh: 8, use: "large config, batch 4" },
];

/** Milliseconds per run of `ds`, encoding repetitions into one submit until it lasts `minMs`. */
async function timeDispatches(
  gpu: Gpu,
  ds: Dispatch[],
  probe: GPUBuffer,
  minMs: number,
): Promise<number> {
  const batch = async (reps: number) => {
    const t0 = performance.now();
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let i = 0; i < reps; i++) for (const d of ds) d.encode(pass);
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    await gpu.read(probe, 1);
    return performance.now() - t0;
  };
  await batch(1); // compiles and touches the buffers
  let reps = 1;
  for (;;) {
    const ms = await batch(reps);
    if (ms >= minMs || reps >= 1024) return ms / reps;
    reps = Math.min(1024, Math.max(reps * 2, Math.ceil((reps * minMs * 1.2) / Math.max(ms, 1))));
  }
}

/**
 * `attention_ms` and `attention_gflops` records for both kernel families,
 * forward and backward, on each problem (the first only when `quick`).
 *
 * @example
 * ```ts ignore
 * for await (const r of benchAttention(gpu, { quick: true })) console.log(r);
 * ```
 */
export async function* benchAttention(
  gpu: Gpu,
  options: { quick: boolean },
): AsyncGenerator<BenchRecord> {
  const minMs = options.quick ? 200 : 600;
  const problems = options.quick ? ATTENTION_PROBLEMS.slice(0, 1) : ATTENTION_PROBLEMS;
  for (const p of problems) {
    const { b, t, c, nh } = p;
    const hs = c / nh;
    const nQkv = b * t * 3 * c, nOut = b * t * c;
    const owned: GPUBuffer[] = [];
    const buf = (data: Float32Array | number, length: number) => {
      const buffer = gpu.storage(data);
      owned.push(buffer);
      return { buffer, length };
    };
    try {
      const qkv = buf(randomF32(nQkv, 1, -2, 2), nQkv);
      const out = buf(nOut, nOut);
      const dout = buf(randomF32(nOut, 2), nOut);
      const dqkv = buf(nQkv, nQkv);
      const nAtt = b * nh * t * t, nRow = b * nh * t;
      const att = buf(nAtt, nAtt), datt = buf(nAtt, nAtt);
      const lse = buf(nRow, nRow), dsum = buf(nRow, nRow);
      const kinds: [string, Dispatch[], Dispatch[]][] = [
        [
          "blocked",
          [attentionForward(gpu, { qkv, out, att }, p)],
          attentionBackward(gpu, { dqkv, datt, dout, qkv, att }, p, { accumulate: false }),
        ],
        [
          "flash",
          [flashAttentionForward(gpu, { qkv, out, lse }, p)],
          flashAttentionBackward(gpu, { dqkv, dout, qkv, out, lse, dsum }, p, {
            accumulate: false,
          }),
        ],
      ];
      const pairs = (b * nh * t * (t + 1)) / 2;
      for (const [kind, fwd, bwd] of kinds) {
        gpu.run(fwd);
        for (const [pass, ds, flops] of [["forward", fwd, 4], ["backward", bwd, 8]] as const) {
          const ms = await timeDispatches(gpu, ds, dqkv.buffer, minMs);
          const extra = {
            kernel: kind,
            pass,
            b,
            t,
            c,
            nh,
            use: p.use,
            adapter: gpu.adapter.description,
          };
          yield { name: "attention_ms", value: ms, unit: "ms", ...extra };
          yield {
            name: "attention_gflops",
            value: (flops * hs * pairs) / (ms / 1000) / 1e9,
            unit: "GFLOP/s",
            ...extra,
          };
        }
      }
    } finally {
      for (const x of owned) x.destroy();
    }
  }
}
