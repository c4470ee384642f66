/**
 * The trainer's compute Worker: owns the WebGPU device, the model and the
 * data sampler, and runs a round's inner phase (H AdamW steps from θ_r), the
 * pseudo-gradient Δ = θ_r − θ_local and its int8 quantization, off the
 * trainer actor's event loop so that heartbeats and messages stay responsive.
 *
 * Protocol (postMessage, structured clone, typed arrays transferred): each
 * request carries an `id`; the answer is `{ id, ok: true, ... }` or
 * `{ id, ok: false, error }`. See {@linkcode WorkerRequest}.
 *
 * @module
 */
import { acquireGpu, type Gpu } from "../kernels/device.ts";
import type { GptConfig } from "../kernels/config.ts";
import { createModel, type GptModel } from "../kernels/model.ts";
import type { Precision } from "../kernels/model_options.ts";
import { MatmulTuner, type TunerTable } from "../kernels/matmul_tune.ts";
import { pipelinedSteps } from "../kernels/pipeline.ts";
import { type BatchSampler, batchSampler, type DataCursor } from "../kernels/data.ts";
import { loadCorpus } from "../kernels/corpus.ts";
import { type EvalPart, evaluate } from "../kernels/evaluate.ts";
import { sampleText, type TextSampleSpec } from "../kernels/sample.ts";
import { outerDispatches } from "../kernels/outer.ts";
import { feedbackDispatches } from "../kernels/lowbit.ts";
import { codedSize } from "../kernels/lowbit_reference.ts";
import {
  DEFAULT_EXCHANGE,
  type ExchangeFormat,
  parseExchange,
  usesFeedback,
} from "../kernels/exchange_format.ts";
import type { Dispatch } from "../kernels/device.ts";
import { mergeDispatches } from "../kernels/overlap_merge.ts";
import { toWire } from "./exchange.ts";
import { workerThreadId } from "./_worker_thread.ts";

/** Settings of the engine inside the Worker. */
export interface WorkerInit {
  op: "init";
  id: number;
  config: GptConfig;
  /** Sequences per micro-batch. */
  batch: number;
  /** Micro-batches per inner step (default 1); the sampler draws gradAccum × batch rows a step. */
  gradAccum?: number;
  /** Seed of the parameter init (all trainers of a run use the same). */
  seed: number;
  /** Peak inner learning rate. */
  lr: number;
  /** Inner warm-up steps (of this trainer's own optimizer). */
  warmup: number;
  /** Inner steps of the whole run (round × H), for the cosine decay. */
  totalSteps: number;
  /** Corpus path; the default corpus when absent. */
  dataPath?: string;
  /** The model's matmul-input precision (default: the adapter's, `ModelOptions.precision`). */
  precision?: Precision;
  /** A matmul tuning table (kernels/matmul_tune.ts): the model uses its choices. */
  matmulTuning?: TunerTable;
  /** This trainer's shard of the training stream. */
  dataShard: { index: number; count: number };
  /** Seed of the batch sampler. */
  dataSeed: number;
  /** Quantization block (int8). */
  block: number;
  /**
   * Exchange format of the pseudo-gradient (default "int8"). int4 and top-k
   * keep an error-feedback residual on the GPU: this Worker's own state, lost
   * (and so dropped, which only forgets what was not yet sent) when it ends.
   */
  exchange?: string;
}

/** Run one round's inner phase. */
export interface WorkerRound {
  op: "round";
  id: number;
  round: number;
  /**
   * θ_r (the layout's padded length): the running parameters restart from it.
   * Only with `keep` may it be absent: the running parameters go on.
   */
  theta?: Float32Array;
  /**
   * Keep the running parameters across rounds (overlapped outer step or
   * fragments, actors/overlap.ts): the inner phase applies the merges that
   * came before it at its start (and the open round's at `mergeBy`), and the
   * pseudo-gradient waits for a "delta" request. Without it the answer carries the pseudo-gradient.
   */
  keep?: boolean;
  /**
   * Overlapped, a round ahead: the merge of round `round` goes in before
   * inner step `step`, neither sooner nor later, so that where a merge lands
   * does not depend on when it arrived (two runs of one seed reach the same
   * θ); the phase waits for it there if it has not arrived (the wait comes
   * back as `waitedMs`). A `step` of H (or more) leaves it to the "delta"
   * request after the phase.
   */
  mergeBy?: { round: number; step: number };
  /** Inner steps H. */
  steps: number;
  /** This trainer's shard of the training stream (it may change when it rejoins). */
  dataShard?: { index: number; count: number };
  /** Resume the sampler at this cursor (a resumed run); its shard wins over `dataShard`. */
  cursor?: DataCursor;
  /** A fault to inject at inner step `atStep` (tests and the chaos suite). */
  fault?: { kind: "device_lost" | "worker_exit" | "stall"; atStep: number; ms?: number };
}

/** The pseudo-gradient of a kept inner phase, once the merges before it are in. */
export interface WorkerDelta {
  op: "delta";
  id: number;
  round: number;
  /**
   * With fragments: the ranges the round synchronises. Only their part of
   * the error-feedback residual moves (int4 and top-k); elsewhere nothing was
   * sent, and the running parameters carry the local move to the fragment's
   * own round.
   */
  ranges?: { lo: number; hi: number }[];
}

/**
 * A merge of θ_{r+1} into the running parameters (no answer; taken as it
 * arrives, applied before inner step τ of the phase a round ahead, or before
 * the next "delta"; its arrays go back as a {@linkcode SpareArraysMsg}).
 */
export interface WorkerMerge {
  op: "merge";
  /** The round whose update made `pieces` (θ_{round+1}). */
  round: number;
  /** Ranges of θ_{round+1}: `values` starts at element `lo` (a multiple of the block). */
  pieces: { lo: number; values: Float32Array }[];
}

/**
 * Ends a wait for a merge that will not come (the trainer dropped its θ and
 * fetches the current one); the inner phase runs on, and is discarded.
 */
export interface WorkerRelease {
  op: "release";
}

/** Evaluate θ on the validation stream. */
export interface WorkerEval {
  op: "eval";
  id: number;
  theta: Float32Array;
  maxWindows: number;
  /** Evaluate only this part of the windows (kernels/evaluate.ts). */
  part?: EvalPart;
  /** Then continue a prompt from θ (the answer's `sample`; checked by the trainer actor). */
  sample?: TextSampleSpec;
}

/**
 * The Worker's first message, before any answer: the OS thread it runs on,
 * for its host to wait on when it retires the Worker (see _worker_thread.ts).
 */
export interface ThreadHello {
  op: "thread";
  /** Undefined where the thread cannot be known (no /proc, or no read permission). */
  thread?: number;
}

/**
 * Arrays the device has copied out (a merge's θ pieces, the θ a round
 * restarted or an evaluation ran from), handed back (transferred) for the
 * trainer to fill with the next θ it sends instead of fresh ones.
 */
export interface SpareArraysMsg {
  op: "spare";
  arrays: Float32Array[];
}

/** A request to the Worker. */
export type WorkerRequest =
  | WorkerInit
  | WorkerRound
  | WorkerDelta
  | WorkerEval
  | { op: "close"; id: number };

/** The answer to "init". */
export interface InitReply {
  /** The initial parameters (the seed θ_0 offered to aggregators). */
  params: Float32Array;
  paramCount: number;
  adapter: string;
  /** The engine's kernel families, for the log (`GptModel.describeKernels`). */
  kernels: string;
}

/** The answer to "delta" (and part of "round" without `keep`). */
export interface DeltaReply {
  round: number;
  /**
   * Codes of Δ = θ_r − θ_local (the whole flat vector) in the exchange
   * format, on the wire's layout (actors/exchange.ts): int8 one per value.
   */
  q: Int8Array;
  /** Top-k offsets (top-k only). */
  idx?: Uint8Array;
  /** One scale per block. */
  scales: Float32Array;
}

/** The answer to "round" (with `keep`, without q and scales: see {@linkcode DeltaReply}). */
export interface RoundReply extends DeltaReply {
  /** Mean inner loss. */
  loss: number;
  /** Tokens processed. */
  tokens: number;
  /** Wall time of the inner phase, ms (waits for a merge included). */
  innerMs: number;
  /** Time the phase waited for a merge (`mergeBy`), ms. */
  waitedMs: number;
  /** The sampler's cursor after the inner steps: where this data shard goes on next round. */
  cursor: DataCursor;
}

interface Engine {
  gpu: Gpu;
  model: GptModel;
  /** θ_r on the GPU, the pseudo-gradient's minuend. */
  global: GPUBuffer;
  /** Δ_r of the last pseudo-gradient (kept for the merge of round r's update). */
  delta: GPUBuffer;
  /** θ_{r+1} pieces on their way into a merge. */
  incoming: GPUBuffer;
  /** The merge dispatches of each range (one per binding-sized piece), by "lo:hi". */
  mergeDispatches: Map<string, Dispatch[]>;
  q: GPUBuffer;
  scales: GPUBuffer;
  format: ExchangeFormat;
  /** Pseudo-gradient then quantization (and error feedback), prepared once. */
  outer: Dispatch[];
  /** The error-feedback residual (int4 and top-k), and a copy of it for fragments. */
  residual?: { buffer: GPUBuffer; saved?: GPUBuffer };
  sampler: BatchSampler;
  train: Uint8Array;
  val: Uint8Array;
  init: WorkerInit;
  ownSteps: number;
}

let engine: Engine | undefined;

function lrAt(init: WorkerInit, globalStep: number, ownStep: number): number {
  // Cosine decay over the run to 10% of the peak, with a warm-up of this
  // trainer's own (fresh) optimizer, so a late joiner does not start hot.
  const t = Math.min(1, globalStep / Math.max(1, init.totalSteps));
  const cosine = 0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * t));
  const warm = Math.min(1, (ownStep + 1) / Math.max(1, init.warmup));
  return init.lr * cosine * warm;
}

async function handle(req: WorkerRequest): Promise<Record<string, unknown>> {
  switch (req.op) {
    case "init": {
      const gpu = await acquireGpu();
      const model = await createModel(gpu, req.config, {
        seed: req.seed,
        batch: req.batch,
        gradAccum: req.gradAccum ?? 1,
        precision: req.precision,
        ...(req.matmulTuning ? { matmulTuner: MatmulTuner.fromJSON(req.matmulTuning) } : {}),
      });
      const corpus = await loadCorpus(req.dataPath ? { path: req.dataPath } : {});
      const sampler = batchSampler(corpus.train, {
        batch: stepRows(req),
        blockSize: req.config.blockSize,
        seed: req.dataSeed,
        shard: req.dataShard,
      });
      const params = await model.getParams();
      // One throw-away step compiles every pipeline now, before the trainer
      // joins, so its first round is not slowed by shader compilation.
      const warm = sampler.next();
      await model.step(warm.inputs, warm.targets, { lr: 0 });
      model.setParams(params);
      model.resetOptimizer();
      const n = model.paramLength;
      const format = parseExchange(req.exchange ?? DEFAULT_EXCHANGE);
      const size = format.kind === "int8"
        ? { words: Math.ceil(n / 4), scales: Math.ceil(n / req.block) }
        : codedSize(n, format);
      const global = gpu.storage(n, "theta_r");
      const delta = gpu.storage(n, "delta");
      const q = gpu.storage(size.words, "delta_q");
      const scales = gpu.storage(size.scales, "delta_scales");
      const local = model.paramBuffer;
      const residual = usesFeedback(format) ? gpu.storage(n, "delta_residual") : undefined;
      const outer = residual
        ? feedbackDispatches(gpu, format, {
          global,
          local,
          delta,
          sent: gpu.storage(n, "delta_sent"),
          residual,
          codes: q,
          scales,
        }, { n })
        : outerDispatches(gpu, { global, local, delta, q, scales }, { n, block: req.block });
      engine = {
        gpu,
        model,
        global,
        delta,
        incoming: gpu.storage(n, "theta_next"),
        mergeDispatches: new Map(),
        q,
        scales,
        format,
        outer,
        ...(residual ? { residual: { buffer: residual } } : {}),
        sampler,
        train: corpus.train,
        val: corpus.val,
        init: req,
        ownSteps: 0,
      };
      return {
        params,
        paramCount: model.paramCount,
        adapter: gpu.adapter.description,
        kernels: model.describeKernels(),
      };
    }
    case "round": {
      const e = need();
      const start = performance.now();
      const ds = req.dataShard;
      const cur = e.sampler.cursor.shard;
      if (req.cursor) {
        e.sampler = batchSampler(e.train, {
          batch: stepRows(e.init),
          blockSize: e.init.config.blockSize,
          cursor: req.cursor,
        });
      } else if (ds && (ds.index !== cur.index || ds.count !== cur.count)) {
        e.sampler = batchSampler(e.train, {
          batch: stepRows(e.init),
          blockSize: e.init.config.blockSize,
          seed: e.init.dataSeed,
          shard: ds,
        });
      }
      released = false;
      if (req.theta) {
        e.model.setParams(req.theta);
        e.gpu.write(e.global, req.theta);
        handBack([req.theta]);
        // Merges of rounds before this θ are in it already.
        dropMergesBefore(req.round);
        mergedThrough = req.round - 1;
      } else if (!req.keep) {
        throw new RangeError("Invalid round request: θ is needed unless the parameters are kept");
      }
      let sum = 0;
      let waitedMs = 0;
      // Two steps in flight: the device starts step i+1 while step i's loss is read back.
      await pipelinedSteps(e.model, req.steps, async (i) => {
        if (req.fault && i === Math.min(req.fault.atStep, req.steps - 1)) {
          await injectFault(e, req.fault);
        }
        // Merges that came before the phase go in before its first step; a phase a round
        // ahead takes the open round's at step τ only.
        const mergeHere = req.mergeBy ? i === req.mergeBy.step : i === 0;
        if (req.mergeBy && i === req.mergeBy.step) waitedMs += await awaitMerge(req.mergeBy.round);
        if (req.keep && mergeHere) applyMerges(e);
        const { inputs, targets } = e.sampler!.next();
        return { inputs, targets, lr: lrAt(e.init, req.round * req.steps + i, e.ownSteps++) };
      }, (_, loss) => {
        sum += loss;
      });
      // Every micro-batch counts.
      const tokens = req.steps * e.model.tokensPerStep;
      const phase = {
        round: req.round,
        loss: sum / Math.max(1, req.steps),
        tokens,
        innerMs: performance.now() - start,
        waitedMs,
        cursor: e.sampler.cursor,
      };
      return req.keep ? phase : { ...phase, ...(await pseudoGradient(e, req.round)) };
    }
    case "delta": {
      const e = need();
      applyMerges(e);
      return { ...(await pseudoGradient(e, req.round, req.ranges)) };
    }
    case "eval": {
      const e = need();
      const t0 = performance.now();
      // The running parameters go on after an evaluation of θ (a kept run trains on from them).
      const running = await e.model.getParams();
      const t1 = performance.now();
      e.model.setParams(req.theta);
      handBack([req.theta]);
      let r, forwardMs, sample = {};
      try {
        r = await evaluate(e.model, e.val, {
          maxWindows: req.maxWindows,
          selection: "spread",
          ...(req.part ? { part: req.part } : {}),
        });
        // One forward pass of the batch and its readback, as a sampled byte costs: what a
        // sample would take, before any is taken (the host paces samples by it).
        const forwards = Math.ceil(r.tokens / (e.model.config.blockSize * e.model.batch));
        forwardMs = forwards > 0 ? (performance.now() - t1) / forwards : undefined;
        if (req.sample) {
          const s0 = performance.now();
          const text = await sampleText(e.model, req.sample);
          sample = { sample: text, sampleMs: performance.now() - s0 };
        }
      } finally {
        e.model.setParams(running);
      }
      // What the evaluation (and the sample) cost this trainer, so that whoever asks can pace its asks.
      const ms = performance.now() - t0;
      return { loss: r.loss, tokens: r.tokens, ms, ...(forwardMs ? { forwardMs } : {}), ...sample };
    }
    case "close": {
      if (engine) {
        engine.model.dispose();
        engine.gpu.destroy();
        engine = undefined;
      }
      return {};
    }
  }
}

/**
 * Δ = θ_r − θ_local and its code in the run's exchange format (with error
 * feedback for int4 and top-k), on the GPU; only the code comes back, on the
 * wire's layout.
 */
async function pseudoGradient(
  e: Engine,
  round: number,
  ranges?: { lo: number; hi: number }[],
): Promise<DeltaReply> {
  const n = e.model.paramLength;
  const bound = e.residual && ranges ? keepResidual(e, e.residual, n) : undefined;
  e.gpu.run(e.outer);
  bound?.(ranges!);
  const f = e.format;
  const int8 = f.kind === "int8";
  const size = int8 ? { words: 0, scales: Math.ceil(n / e.init.block) } : codedSize(n, f);
  const [bytes, scales] = await Promise.all([
    e.gpu.readBytes(e.q, int8 ? n : size.words * 4),
    e.gpu.read(e.scales, size.scales),
  ]);
  const wire = int8 ? { q: new Int8Array(bytes.buffer, bytes.byteOffset, n), scales } : toWire(
    f,
    { codes: new Uint32Array(bytes.buffer, bytes.byteOffset, size.words), scales },
    n,
  );
  return { round, ...wire };
}

/**
 * Keeps the residual outside a round's ranges: copies it now and returns
 * the step that, after the feedback dispatches ran on the whole vector,
 * puts the copy back everywhere but in `ranges`. (The dispatches bind code
 * words at offsets the device's alignment allows only for whole chunks, not
 * for a 256-value piece, so they run on everything and the rest is undone.)
 */
function keepResidual(
  e: Engine,
  r: { buffer: GPUBuffer; saved?: GPUBuffer },
  n: number,
): (ranges: { lo: number; hi: number }[]) => void {
  const saved = r.saved ??= e.gpu.storage(n, "delta_residual_saved");
  const copy = (work: (enc: GPUCommandEncoder) => void) => {
    const enc = e.gpu.device.createCommandEncoder();
    work(enc);
    e.gpu.device.queue.submit([enc.finish()]);
  };
  copy((enc) => enc.copyBufferToBuffer(r.buffer, 0, saved, 0, n * 4));
  return (ranges) =>
    copy((enc) => {
      for (const { lo, hi } of ranges) {
        enc.copyBufferToBuffer(r.buffer, lo * 4, saved, lo * 4, (hi - lo) * 4);
      }
      enc.copyBufferToBuffer(saved, 0, r.buffer, 0, n * 4);
    });
}

/** Merges that arrived and wait for the next step boundary, oldest first. */
let merges: WorkerMerge[] = [];

/** The last round whose update the running parameters hold. */
let mergedThrough = -1;
/** Resolves the wait of {@linkcode awaitMerge} when a merge or a release arrives. */
let arrived: (() => void) | undefined;
let released = false;

function dropMergesBefore(round: number): void {
  merges = merges.filter((m) => m.round >= round);
}

/**
 * Evaluations asked for and not yet answered. One that comes while an inner
 * phase waits for a merge is served at the wait: the merge comes through the
 * trainer actor, and an actor awaiting its evaluation takes no update until
 * the evaluation is answered, so queued behind the waiting phase it would
 * never be (the actor's mailbox held, its heartbeats stopped: evicted).
 */
const evals: WorkerEval[] = [];

/**
 * Waits until round `round`'s merge is in or on its way in (or a release),
 * answering the evaluations asked for meanwhile; returns the ms waited, the
 * evaluations' time left out.
 */
async function awaitMerge(round: number): Promise<number> {
  let waited = 0;
  let t0 = performance.now();
  while (mergedThrough < round && !merges.some((m) => m.round >= round) && !released) {
    if (evals.length > 0) {
      waited += performance.now() - t0;
      await answerEvals();
      t0 = performance.now();
      continue;
    }
    await new Promise<void>((resolve) => arrived = resolve);
  }
  arrived = undefined;
  return waited + performance.now() - t0;
}

/**
 * Answers the evaluations asked for, in order. Between two inner steps the
 * steps in flight are ahead of the evaluation on the device's queue: it reads
 * the running parameters after them and puts them back before the next.
 */
async function answerEvals(): Promise<void> {
  while (evals.length > 0) await answer(evals.shift()!);
}

/**
 * Applies the waiting merges on the GPU, queued after the steps already
 * submitted and before the next: running += (θ_{r+1} − θ_r) + Δ_r and
 * θ_r ← θ_{r+1} on each piece; AdamW's moments are left as they are.
 */
function applyMerges(e: Engine): void {
  const done: Float32Array[] = [];
  for (const m of merges) {
    for (const p of m.pieces) {
      const hi = p.lo + p.values.length;
      const key = `${p.lo}:${hi}`;
      let d = e.mergeDispatches.get(key);
      if (!d) {
        d = mergeDispatches(e.gpu, {
          running: e.model.paramBuffer,
          global: e.global,
          incoming: e.incoming,
          delta: e.delta,
        }, { lo: p.lo, hi });
        e.mergeDispatches.set(key, d);
      }
      // The write copies the values out: the array can go back.
      e.gpu.write(e.incoming, p.values, p.lo * 4);
      e.gpu.run(d);
      done.push(p.values);
    }
    mergedThrough = Math.max(mergedThrough, m.round);
  }
  merges = [];
  handBack(done);
}

/** Hands arrays the device has copied out back to the trainer ({@linkcode SpareArraysMsg}). */
function handBack(arrays: Float32Array[]): void {
  if (arrays.length === 0) return;
  scope.postMessage({ op: "spare", arrays } satisfies SpareArraysMsg, {
    transfer: arrays.map((x) => x.buffer as ArrayBuffer),
  });
}

/** Sequences an inner step draws: every micro-batch's. */
function stepRows(init: WorkerInit): number {
  return init.batch * (init.gradAccum ?? 1);
}

/**
 * Breaks the engine the way a real failure would: the GPU device lost (every
 * later GPU call fails), or the Worker dying of an uncaught error.
 */
async function injectFault(
  e: Engine,
  fault: { kind: "device_lost" | "worker_exit" | "stall"; ms?: number },
): Promise<void> {
  if (fault.kind === "stall") {
    await new Promise((r) => setTimeout(r, fault.ms ?? 0));
    return;
  }
  if (fault.kind === "device_lost") {
    e.gpu.device.destroy();
    return;
  }
  setTimeout(() => {
    throw new Error("Compute worker killed by an injected fault");
  });
}

function need(): Engine {
  if (!engine) throw new Error("Cannot run: the trainer worker is not initialised");
  return engine;
}

interface WorkerScope {
  onmessage: ((ev: MessageEvent<WorkerRequest>) => void) | null;
  postMessage(msg: unknown, options?: { transfer?: Transferable[] }): void;
  close(): void;
}
const scope = self as unknown as WorkerScope;

scope.postMessage({ op: "thread", thread: workerThreadId() } satisfies ThreadHello);

// Requests are handled one at a time, in order; a merge is taken at once, to
// go in at its step of the inner phase that is running (mergeBy).
let queue = Promise.resolve();
scope.onmessage = (ev: MessageEvent<WorkerRequest | WorkerMerge | WorkerRelease>) => {
  if (ev.data.op === "merge" || ev.data.op === "release") {
    if (ev.data.op === "merge") merges.push(ev.data);
    else released = true;
    arrived?.();
    return;
  }
  const req = ev.data;
  if (req.op === "eval") {
    // Served in turn, or sooner by an inner phase waiting for a merge.
    evals.push(req);
    arrived?.();
    queue = queue.then(answerEvals);
    return;
  }
  queue = queue.then(() => answer(req));
};

/** Handles one request and posts its answer (or its error). */
async function answer(req: WorkerRequest): Promise<void> {
  try {
    const out = await handle(req);
    const transfer = Object.values(out).filter((v) => ArrayBuffer.isView(v)).map((v) =>
      (v as Uint8Array).buffer
    ) as ArrayBuffer[];
    scope.postMessage({ id: req.id, ok: true, ...out }, { transfer });
    if (req.op === "close") scope.close();
  } catch (err) {
    const error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    scope.postMessage({ id: req.id, ok: false, error });
  }
}
