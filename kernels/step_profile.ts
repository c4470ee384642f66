/**
 * Per-dispatch profile of one training step: every dispatch of
 * {@linkcode GptModel.profileDispatches} timed on the device, then grouped by
 * kind of kernel with its share of the step and, where its FLOPs are known,
 * GFLOP/s.
 *
 * With the `timestamp-query` feature (request it with
 * `acquireGpu({ features: ["timestamp-query"] })`) each dispatch is encoded in
 * a compute pass of its own whose begin and end timestamps bracket it, the
 * whole step in one submit, as a step runs; the figure per dispatch is the
 * median over the repetitions. Without it each dispatch is timed alone: `reps`
 * copies of it in one submit, wall time from submit to `onSubmittedWorkDone`,
 * less an empty submit's time, divided by `reps`.
 *
 * FLOPs: a matmul m×n×k counts 2mnk (its fused epilogues are not counted);
 * attention counts the full T×T square, forward 4·B·T²·C (QKᵀ and P·V), each
 * backward dispatch 4·B·T²·C (queries: dP = dO·Vᵀ and dQ; keys: dK and dV;
 * flash attention's split key pass: 2·B·T²·C for dV and for dK), the
 * convention of the train suite's step FLOPs (the causal mask halves the
 * work done; flash attention's recomputed scores are not counted).
 *
 * @module
 */
import type { Gpu } from "./device.ts";
import type { GptConfig } from "./config.ts";
import type { GptModel, ProfiledDispatch } from "./model.ts";

/** The time of one dispatch of the step. */
export interface DispatchTime {
  /** The dispatch's label (kernel and shape). */
  label: string;
  /** The part of the step it belongs to. */
  part: ProfiledDispatch["part"];
  /** The group it is reported under ({@linkcode kernelKind}). */
  kind: string;
  /** Milliseconds (median over the repetitions). */
  ms: number;
  /** Floating-point operations, when known ({@linkcode dispatchFlops}). */
  flops?: number;
}

/** A step's profile: every dispatch in step order and how they were timed. */
export interface StepProfile {
  /** Every dispatch of the step, in order. */
  dispatches: DispatchTime[];
  /** "timestamp-query" (per-pass timestamps) or "alone" (each dispatch timed by itself). */
  method: "timestamp-query" | "alone";
  /** Repetitions each time is the median (timestamps) or mean (alone) of. */
  reps: number;
}

/** One group of the profile ({@linkcode groupProfile}). */
export interface ProfileGroup {
  /** The group's name. */
  kind: string;
  /** Dispatches of the step in the group. */
  count: number;
  /** Milliseconds per step. */
  ms: number;
  /** Share of the step's timed total, 0..1. */
  share: number;
  /** FLOPs per step, when known for every dispatch of the group. */
  flops?: number;
}

const MATMUL = /^matmul_([^_]+)_(NN|NT|TN|TT)_(\d+)x(\d+)x(\d+)(.*)$/;

/**
 * The group a dispatch label is reported under: matmuls by layout, shape and
 * fused epilogue (`matmul NT 4096x768x3072 +geluBackward`), attention forward
 * and backward, and the other kernels by name (layernorm forward/backward,
 * cross-entropy, embedding, grad norm, adamw, cast to f16).
 *
 * @example
 * ```ts
 * import { kernelKind } from "./step_profile.ts";
 * console.log(kernelKind("matmul_tiled_TN_64x256x1024+colSum")); // "matmul TN 64x256x1024 +colSum"
 * console.log(kernelKind("attentionBackward keys")); // "attention backward"
 * ```
 */
export function kernelKind(label: string): string {
  const mm = MATMUL.exec(label);
  if (mm) return `matmul ${mm[2]} ${mm[3]}x${mm[4]}x${mm[5]}${mm[6] ? ` ${mm[6]}` : ""}`;
  const head = label.split(" ")[0];
  // cast_to_f16_{n}: the f16 copies of precision f16, one kind whatever their size.
  if (head.startsWith("cast_to_")) return `cast to ${head.split("_")[2]}`;
  const names: Record<string, string> = {
    attentionForward: "attention forward",
    attentionBackward: "attention backward",
    flashAttentionForward: "flash attention forward",
    flashAttentionBackward: "flash attention backward",
    layernormForward: "layernorm forward",
    layernormBackward: "layernorm backward",
    crossEntropyForwardBackward: "cross-entropy",
    meanLoss: "mean loss",
    embeddingForward: "embedding forward",
    embeddingBackward: "embedding backward",
    gradNorm: "grad norm",
    adamw: "adamw",
  };
  return names[head] ?? head;
}

/**
 * FLOPs of the dispatch labelled `label` in a step of `config` at `batch`
 * (see the module comment), or undefined where not counted.
 *
 * @example
 * ```ts
 * import { dispatchFlops } from "./step_profile.ts";
 * const config = { nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: 256 };
 * console.log(dispatchFlops("matmul_reg32x8v_NN_1024x64x256+residual", config, 16)); // 33554432
 * ```
 */
export function dispatchFlops(label: string, config: GptConfig, batch: number): number | undefined {
  const mm = MATMUL.exec(label);
  if (mm) return 2 * Number(mm[3]) * Number(mm[4]) * Number(mm[5]);
  const square = 4 * batch * config.blockSize ** 2 * config.nEmbd;
  const full = [
    "attentionForward",
    "attentionBackward queries",
    "attentionBackward keys",
    "flashAttentionForward",
    "flashAttentionBackward queries",
    "flashAttentionBackward keys",
  ];
  if (full.includes(label)) return square;
  // The split key pass: dv, then dk, half the keys' products each.
  if (label === "flashAttentionBackward dv" || label === "flashAttentionBackward dk") {
    return square / 2;
  }
  return undefined;
}

/**
 * Groups a profile by `by` (default {@linkcode kernelKind}'s kind), largest
 * time first; `flops` is set where every dispatch of the group has known FLOPs.
 *
 * @example
 * ```ts
 * import { groupProfile } from "./step_profile.ts";
 * const groups = groupProfile([
 *   { label: "adamw", part: "optimizer", kind: "adamw", ms: 1 },
 *   { label: "meanLoss", part: "loss", kind: "mean loss", ms: 3 },
 * ]);
 * console.log(groups[0].kind, groups[0].share); // "mean loss" 0.75
 * ```
 */
export function groupProfile(
  dispatches: DispatchTime[],
  by: (d: DispatchTime) => string = (d) => d.kind,
): ProfileGroup[] {
  const total = dispatches.reduce((s, d) => s + d.ms, 0);
  const groups = new Map<string, ProfileGroup & { known: boolean }>();
  for (const d of dispatches) {
    const kind = by(d);
    let g = groups.get(kind);
    if (!g) {
      g = { kind, count: 0, ms: 0, share: 0, flops: 0, known: true };
      groups.set(kind, g);
    }
    g.count++;
    g.ms += d.ms;
    if (d.flops === undefined) g.known = false;
    else g.flops! += d.flops;
  }
  return [...groups.values()]
    .map(({ known, ...g }) => ({
      ...g,
      share: total > 0 ? g.ms / total : 0,
      flops: known ? g.flops : undefined,
    }))
    .sort((a, b) => b.ms - a.ms);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * Times every dispatch of one training step of `model` (see the module
 * comment). The model must have taken at least one step, so a batch and
 * hyper-parameters are staged; profiling updates its parameters.
 *
 * @example
 * ```ts ignore
 * const gpu = await acquireGpu({ features: ["timestamp-query"] });
 * const model = await createModel(gpu, config, { batch: 16 });
 * await model.step(inputs, targets, { lr: 1e-3 });
 * const profile = await profileStep(gpu, model, { reps: 5 });
 * ```
 */
export async function profileStep(
  gpu: Gpu,
  model: GptModel,
  options: { reps?: number; method?: StepProfile["method"] } = {},
): Promise<StepProfile> {
  const reps = options.reps ?? 5;
  if (!Number.isInteger(reps) || reps < 1 || reps > 1000) {
    throw new RangeError(`Cannot profile step: reps must be an integer in 1..1000, got ${reps}`);
  }
  const hasTimestamps = gpu.device.features.has("timestamp-query");
  const method = options.method ?? (hasTimestamps ? "timestamp-query" : "alone");
  if (method === "timestamp-query" && !hasTimestamps) {
    throw new TypeError("Cannot profile step: the device has no timestamp-query feature");
  }
  const { clears, dispatches } = model.profileDispatches();
  const times = method === "timestamp-query"
    ? await timeWithTimestamps(gpu, clears, dispatches, reps)
    : await timeAlone(gpu, dispatches, reps);
  return {
    method,
    reps,
    dispatches: dispatches.map(({ part, dispatch }, i) => ({
      label: dispatch.label,
      part,
      kind: kernelKind(dispatch.label),
      ms: times[i],
      flops: dispatchFlops(dispatch.label, model.config, model.batch),
    })),
  };
}

/** Median ms per dispatch over `reps` replays of the step, one timed pass per dispatch. */
async function timeWithTimestamps(
  gpu: Gpu,
  clears: GPUBuffer[],
  dispatches: ProfiledDispatch[],
  reps: number,
): Promise<number[]> {
  const device = gpu.device;
  const n = dispatches.length;
  const querySet = device.createQuerySet({ type: "timestamp", count: 2 * n });
  const resolved = device.createBuffer({
    size: 16 * n,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const staging = device.createBuffer({
    size: 16 * n,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const samples: number[][] = dispatches.map(() => []);
  try {
    for (let r = 0; r < reps; r++) {
      const enc = device.createCommandEncoder({ label: "profile_step" });
      for (const b of clears) enc.clearBuffer(b);
      dispatches.forEach(({ dispatch }, i) => {
        const pass = enc.beginComputePass({
          label: dispatch.label,
          timestampWrites: {
            querySet,
            beginningOfPassWriteIndex: 2 * i,
            endOfPassWriteIndex: 2 * i + 1,
          },
        });
        dispatch.encode(pass);
        pass.end();
      });
      enc.resolveQuerySet(querySet, 0, 2 * n, resolved, 0);
      enc.copyBufferToBuffer(resolved, 0, staging, 0, 16 * n);
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const ticks = new BigUint64Array(staging.getMappedRange().slice(0));
      staging.unmap();
      // WebGPU timestamps are nanoseconds.
      for (let i = 0; i < n; i++) {
        const ns = Number(ticks[2 * i + 1] - ticks[2 * i]);
        samples[i].push(Math.max(0, ns) / 1e6);
      }
    }
  } finally {
    querySet.destroy();
    resolved.destroy();
    staging.destroy();
  }
  return samples.map(median);
}

/** Mean ms of each dispatch run `reps` times alone in one submit, less an empty submit's time. */
async function timeAlone(
  gpu: Gpu,
  dispatches: ProfiledDispatch[],
  reps: number,
): Promise<number[]> {
  const floors: number[] = [];
  for (let i = 0; i < 3; i++) floors.push(await gpu.timedPass(() => {}));
  const floor = median(floors);
  const out: number[] = [];
  for (const { dispatch } of dispatches) {
    await gpu.timedPass((pass) => dispatch.encode(pass)); // first use: pipeline warm-up
    const ms = await gpu.timedPass((pass) => {
      for (let r = 0; r < reps; r++) dispatch.encode(pass);
    });
    out.push(Math.max(0, ms - floor) / reps);
  }
  return out;
}
