/**
 * The pipelined training loop: steps are submitted ahead of their loss
 * readback, so the device works on the next step while a loss travels back.
 *
 * @module
 */
import type { GptModel } from "./model.ts";
import type { Tokens } from "./tokens.ts";

/** The batch and learning rate of one step of {@linkcode pipelinedSteps}. */
export interface StepInput {
  /** [batch, T] input tokens. */
  inputs: Tokens;
  /** [batch, T] target tokens. */
  targets: Tokens;
  /** The learning rate of this step. */
  lr: number;
}

/**
 * Runs `count` training steps keeping up to `depth` of them submitted ahead
 * (default {@linkcode GptModel.pipelineDepth}: 2, 1 on GL), so the device works on the next step while the previous loss
 * is read back: on CPU adapters every readback costs ~10 ms of polling, a
 * tenth of a small model's step. `next(i)` gives step i's batch when it is
 * submitted; `done(i, loss)` sees the losses in order. When `done` throws
 * (a diverged loss, say) or a step fails, no further step is submitted, the
 * steps in flight finish, and the error is rethrown: at most `depth - 1`
 * steps run past the one that failed.
 *
 * @example
 * ```ts ignore
 * await pipelinedSteps(model, 100, () => ({ ...sampler.next(), lr: 3e-3 }), (i, loss) => {
 *   if (!Number.isFinite(loss)) throw new Error(`diverged at step ${i}`);
 * });
 * ```
 */
export async function pipelinedSteps(
  model: GptModel,
  count: number,
  next: (i: number) => StepInput | Promise<StepInput>,
  done?: (i: number, loss: number) => void,
  depth: number = model.pipelineDepth,
): Promise<void> {
  if (!Number.isInteger(depth) || depth < 1) {
    throw new RangeError(`Invalid pipeline depth: ${depth} (expected a positive integer)`);
  }
  const pending: Promise<number>[] = [];
  let finished = 0;
  try {
    for (let i = 0; i < count; i++) {
      const s = await next(i);
      const step = model.step(s.inputs, s.targets, { lr: s.lr });
      // `next` may wait (an overlapped trainer waits there for its merge): a
      // step that fails meanwhile is awaited below, not an unhandled rejection.
      step.catch(() => {});
      pending.push(step);
      if (pending.length >= depth) {
        // Not `done?.(i, await ...)`: an absent `done` would skip the await with the call.
        const loss = await pending.shift()!;
        done?.(finished++, loss);
      }
    }
    while (pending.length > 0) {
      const loss = await pending.shift()!;
      done?.(finished++, loss);
    }
  } finally {
    // On failure, let the steps in flight finish before the error leaves (no stray rejection).
    await Promise.allSettled(pending);
  }
}
