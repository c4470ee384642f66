/**
 * Attention timings of the kernels bench suite (and of the GPU report at its
 * model's shape): the blocked kernels (kernels/attention.ts) against flash
 * attention (kernels/flash_attention.ts), forward and backward, the flash
 * backward with each key pass (fused, and split into dv and dk passes), in ms
 * per call and in GFLOP/s of the causal problem's nominal FLOPs (forward 4·hs
 * per query-key pair on or below the diagonal, backward 8·hs; the flash
 * backward's recomputation of the scores is not counted, so the split pass's
 * extra work shows as fewer GFLOP/s). Printed, never asserted.
 *
 * @module
 */
import type { BenchRecord } from "../tests/bench_main.ts";
import type { Dispatch, Gpu } from "./device.ts";
import { attentionBackward, attentionForward } from "./attention.ts";
import {
  defaultKeyPass,
  flashAttentionBackward,
  flashAttentionForward,
  type KeyPass,
} from "./flash_attention.ts";
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

/** One kernel family's dispatches on a problem: its forward, and each backward it has. */
interface AttentionKernels {
  kernel: "blocked" | "flash";
  forward: Dispatch[];
  backward: { keyPass?: KeyPass; dispatches: Dispatch[] }[];
}

/**
 * `attention_ms` and `attention_gflops` records for both kernel families,
 * forward and backward (the flash backward once per key pass, `key_pass`,
 * with `default_key_pass` naming the one models use), on each of `problems`
 * (default {@linkcode ATTENTION_PROBLEMS}; the first only when `quick`).
 *
 * @example
 * ```ts ignore
 * for await (const r of benchAttention(gpu, { quick: true })) console.log(r);
 * ```
 */
export async function* benchAttention(
  gpu: Gpu,
  options: { quick: boolean; problems?: AttentionProblem[] },
): AsyncGenerator<BenchRecord> {
  const minMs = options.quick ? 200 : 600;
  const all = options.problems ?? ATTENTION_PROBLEMS;
  const problems = options.quick ? all.slice(0, 1) : all;
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
      const lse = buf(nRow, nRow), dsum = buf(nRow, nRow);
      const flashBackward = (keyPass: KeyPass) => ({
        keyPass,
        dispatches: flashAttentionBackward(gpu, { dqkv, dout, qkv, out, lse, dsum }, p, {
          accumulate: false,
          keyPass,
        }),
      });
      const blocked = (): AttentionKernels => {
        const att = buf(nAtt, nAtt), datt = buf(nAtt, nAtt);
        return {
          kernel: "blocked",
          forward: [attentionForward(gpu, { qkv, out, att }, p)],
          backward: [{
            dispatches: attentionBackward(gpu, { dqkv, datt, dout, qkv, att }, p, {
              accumulate: false,
            }),
          }],
        };
      };
      const kinds: AttentionKernels[] = [
        // The blocked kernels bind [B,NH,T,T] probabilities: left out where those do not fit.
        ...(nAtt * 4 <= gpu.limits.maxBindingBytes ? [blocked()] : []),
        {
          kernel: "flash",
          forward: [flashAttentionForward(gpu, { qkv, out, lse }, p)],
          backward: [flashBackward("fused"), flashBackward("split")],
        },
      ];
      const pairs = (b * nh * t * (t + 1)) / 2;
      for (const { kernel, forward, backward } of kinds) {
        gpu.run(forward);
        const passes: { pass: string; ds: Dispatch[]; flops: number; keyPass?: KeyPass }[] = [
          { pass: "forward", ds: forward, flops: 4 },
          ...backward.map((x) => ({ pass: "backward", ds: x.dispatches, flops: 8, ...x })),
        ];
        for (const { pass, ds, flops, keyPass } of passes) {
          const ms = await timeDispatches(gpu, ds, dqkv.buffer, minMs);
          const extra = {
            kernel,
            pass,
            ...(keyPass ? { key_pass: keyPass, default_key_pass: defaultKeyPass(hs) } : {}),
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
