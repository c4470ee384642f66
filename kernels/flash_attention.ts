/**
 * FlashAttention-style causal multi-head attention for GPU adapters: the
 * same qkv [B,T,3C] layout and results as kernels/attention.ts (head h uses
 * columns h*hs..(h+1)*hs of the q, k and v blocks, scores scaled by
 * 1/sqrt(hs)), but no [B,NH,T,T] buffer anywhere: the forward keeps the
 * log-sum-exp of each row's scores, lse [B,NH,T], and the backward recomputes
 * the probabilities from it, so memory grows O(T) per row.
 *
 * Tiling. A workgroup takes one tile of `rows` consecutive rows (64, or 32
 * when T <= 32) of one (batch, head) pair: workgroup x is the pair, y the
 * tile, heaviest tile first (kernels/_flash_wgsl.ts says why), so B16 NH12
 * T256 launches 768 workgroups. Each invocation owns one row
 * and keeps its head vectors and accumulators in named registers (vec4s when
 * hs is a multiple of 4, scalars otherwise). The other operand is staged
 * cooperatively, tile by tile, through workgroup memory, where every
 * invocation reads the same element at the same time (a broadcast on GPUs):
 * - forward, per query tile: K and V tiles of `keyTile` keys; scores in
 *   registers, 4 keys a step with an online softmax (running max m and sum
 *   l, O rescaled once per step); key tiles above the tile's diagonal are
 *   never loaded and each row stops at its own diagonal. Writes out and lse.
 * - backward query pass (FA2), per query tile: D = rowsum(dout ∘ out) into
 *   `dsum` [B,NH,T], then over the K and V tiles at or before the diagonal
 *   P = exp(q·k·scale − lse), dS = P ∘ (dout·v − D), dq = Σ dS·k.
 * - backward key pass, per key tile: over the Q and dout tiles at or after
 *   it (`queryTile` rows, with their lse and D), dv = Σ P·dout and
 *   dk = Σ dS·q. Each key's gradient is summed by one invocation in row
 *   order: deterministic, no atomics, no scatter. Holding k, v, dk and dv
 *   takes 4·hs floats of registers per invocation (256 at GPT-2's head size
 *   64, more than an NVIDIA thread has), so from head size 64 the pass is
 *   split by default into a dv pass (k, dv) and a dk pass (k, v, dk), which
 *   compute P twice; `keyPass` in the backward's options picks either way
 *   ({@linkcode KeyPass}). Both take each sum in the same order with the
 *   same operations (on llvmpipe: the same bits, tested).
 *
 * Workgroup memory: forward and query pass 2·keyTile·hs·4 bytes, key pass
 * queryTile·(2·hs+2)·4 bytes. Tiles are the largest of 64, 32, 16, 8, 4 rows
 * that fit `device.limits.maxComputeWorkgroupStorageSize` (hs 64: 64-key tiles
 * in 32 KiB for the forward, 32-row tiles for the key pass; hs 128: 32 and 16
 * rows in 32 KiB, 32 and 32 in 48 KiB). Head sizes above 256 are refused.
 *
 * FLOPs per byte: a staged tile of S rows (2·S·hs·4 bytes read from global
 * memory once per workgroup) feeds `rows`·S·4·hs FLOPs, so `rows`/2 = 32
 * FLOPs per global byte; each workgroup-memory element read serves the 2
 * FLOPs of one row, but on a GPU the read is one broadcast for a whole warp.
 *
 * On CPU adapters (llvmpipe) workgroup memory and barriers are emulated and
 * slow, so the model keeps kernels/attention.ts there and uses these kernels
 * on real GPUs (ModelOptions.attention overrides the choice).
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { checkRef, checkShape, scratch, slice } from "./_wgsl.ts";
import {
  defaultKeyPass,
  type FlashPlan,
  flashPlan,
  forwardShader,
  type KeyGrads,
  type KeyPass,
  keyShader,
  queryShader,
} from "./_flash_wgsl.ts";

export { defaultKeyPass } from "./_flash_wgsl.ts";
export type { FlashPlan, KeyPass } from "./_flash_wgsl.ts";

/** Shape of the flash-attention kernels. */
export interface FlashAttentionShape {
  /** Batch size. */
  b: number;
  /** Sequence length. */
  t: number;
  /** Channels (q, k and v each have c columns). */
  c: number;
  /** Number of heads; must divide c. */
  nh: number;
}

/**
 * The tile sizes the kernels use for `shape` on `gpu` (see the module doc);
 * throws a RangeError naming what is wrong or does not fit the device.
 *
 * @example
 * ```ts ignore
 * const plan = flashAttentionPlan(gpu, { b: 16, t: 256, c: 768, nh: 12 });
 * console.log(plan.rows, plan.keyTile, plan.queryTile); // 64 64 32 (on a 32 KiB device)
 * ```
 */
export function flashAttentionPlan(
  gpu: Gpu,
  shape: FlashAttentionShape,
  kernel = "flashAttention",
): FlashPlan {
  checkShape(kernel, shape, ["b", "t", "c", "nh"]);
  const { c, nh } = shape;
  if (c % nh !== 0) {
    throw new RangeError(`Cannot build ${kernel}: c (${c}) must be a multiple of nh (${nh})`);
  }
  const pairs = shape.b * nh, most = gpu.device.limits.maxComputeWorkgroupsPerDimension;
  if (pairs > most) {
    throw new RangeError(
      `Cannot build ${kernel}: b·nh = ${pairs} (batch, head) pairs, more than the ` +
        `${most} workgroups a dispatch dimension allows`,
    );
  }
  return flashPlan(kernel, shape, gpu.device.limits.maxComputeWorkgroupStorageSize);
}

/** Workgroups: x the (batch, head) pair, y the row tile (see kernels/_flash_wgsl.ts). */
function groups(p: FlashPlan): [number, number] {
  return [p.b * p.nh, Math.ceil(p.t / p.rows)];
}

/**
 * Forward: out [B,T,C] and lse [B,NH,T] (the natural log of each row's
 * softmax denominator plus its maximum scaled score) from qkv [B,T,3C].
 *
 * @example
 * ```ts ignore
 * gpu.run([flashAttentionForward(gpu, { qkv, out: atty, lse }, { b: B, t: T, c: C, nh: NH })]);
 * ```
 */
export function flashAttentionForward(
  gpu: Gpu,
  bufs: { qkv: TensorRef; out: TensorRef; lse: TensorRef },
  shape: FlashAttentionShape,
): Dispatch {
  const kernel = "flashAttentionForward";
  const p = flashAttentionPlan(gpu, shape, kernel);
  const { b, t, c, nh } = p;
  const refs = [
    slice(checkRef(kernel, "qkv", bufs.qkv, b * t * 3 * c), b * t * 3 * c),
    slice(checkRef(kernel, "out", bufs.out, b * t * c), b * t * c),
    slice(checkRef(kernel, "lse", bufs.lse, b * nh * t), b * nh * t),
  ];
  return gpu.dispatch(kernel, gpu.pipeline(forwardShader(p), "main", kernel), refs, groups(p));
}

/**
 * Backward: dqkv [B,T,3C] from dout [B,T,C], qkv, and the forward's out and
 * lse. Accumulates (+=) by default; with `accumulate: false` it writes every
 * element once, so dqkv need not be cleared. `dsum` [B,NH,T] is scratch for
 * D = rowsum(dout ∘ out); when absent the factory allocates it. Two
 * dispatches, the query pass (D and dq), then the key pass (dk and dv), or
 * three with `keyPass: "split"` (dv, then dk); the default is
 * {@linkcode defaultKeyPass} of the head size.
 *
 * @example
 * ```ts ignore
 * gpu.run(flashAttentionBackward(gpu, { dqkv, dout, qkv, out, lse }, { b, t, c, nh }));
 * ```
 */
export function flashAttentionBackward(
  gpu: Gpu,
  bufs: {
    dqkv: TensorRef;
    dout: TensorRef;
    qkv: TensorRef;
    out: TensorRef;
    lse: TensorRef;
    dsum?: TensorRef;
  },
  shape: FlashAttentionShape,
  options: { accumulate?: boolean; keyPass?: KeyPass } = {},
): Dispatch[] {
  const kernel = "flashAttentionBackward";
  const accumulate = options.accumulate ?? true;
  const p = flashAttentionPlan(gpu, shape, kernel);
  const keyPass = options.keyPass ?? defaultKeyPass(p.hs);
  if (keyPass !== "fused" && keyPass !== "split") {
    throw new RangeError(
      `Cannot build ${kernel}: keyPass ${String(keyPass)} (expected "fused" or "split")`,
    );
  }
  const { b, t, c, nh } = p;
  const nQkv = b * t * 3 * c, nOut = b * t * c, nRow = b * nh * t;
  const dqkv = slice(checkRef(kernel, "dqkv", bufs.dqkv, nQkv), nQkv);
  const dout = slice(checkRef(kernel, "dout", bufs.dout, nOut), nOut);
  const qkv = slice(checkRef(kernel, "qkv", bufs.qkv, nQkv), nQkv);
  const out = slice(checkRef(kernel, "out", bufs.out, nOut), nOut);
  const lse = slice(checkRef(kernel, "lse", bufs.lse, nRow), nRow);
  const dsum = slice(
    bufs.dsum
      ? checkRef(kernel, "dsum", bufs.dsum, nRow)
      : scratch(gpu, nRow, "flashAttentionBackward dsum"),
    nRow,
  );
  const q = `${kernel} queries`;
  const keyDispatch = (label: string, grads: KeyGrads) =>
    gpu.dispatch(
      label,
      gpu.pipeline(keyShader(p, accumulate, grads), "main", label),
      grads === "dv" ? [dqkv, dout, qkv, lse] : [dqkv, dout, qkv, lse, dsum],
      groups(p),
    );
  return [
    gpu.dispatch(
      q,
      gpu.pipeline(queryShader(p, accumulate), "main", q),
      [dqkv, dout, qkv, out, lse, dsum],
      groups(p),
    ),
    ...(keyPass === "fused"
      ? [keyDispatch(`${kernel} keys`, "dk+dv")]
      : [keyDispatch(`${kernel} dv`, "dv"), keyDispatch(`${kernel} dk`, "dk")]),
  ];
}
