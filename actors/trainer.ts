/**
 * The trainer actor. It owns a compute Worker (actors/trainer_worker.ts) that
 * runs the engine; the actor itself only talks: it joins the run, keeps the
 * tracker's heartbeat, fetches its start state, hands each round to the
 * Worker, sends each shard of the pseudo-gradient, coded in the run's exchange
 * format (int8 by default, actors/exchange.ts), to its aggregator,
 * applies the aggregators' updates to its copy of θ with the same arithmetic
 * they use, hashes θ, and reports the round.
 *
 * Round r, seen from a trainer: θ_r → Worker (H inner steps, Δ, int8 on the
 * GPU) → contributions → wait (blocked) → updates of every shard → θ_{r+1}.
 * Utilization is inner time / (inner time + blocked time). Overlapped
 * (actors/overlap.ts), the wait is replaced by round r+1's inner phase from
 * the Worker's running parameters, into which θ_{r+1} is merged when it comes
 * (by step τ at the latest); Δ_{r+1} is asked for once it is in. With
 * fragments (actors/fragments.ts) each round sends and applies one piece of
 * every shard.
 *
 * The Worker's death, or a throw in the actor, is a trainer failure for its
 * supervisor. A restarted trainer starts a fresh Worker, re-announces under
 * the same id, fetches the current round's θ from the start-state source, and
 * computes that round again.
 *
 * Its parts elsewhere: the Worker's requests and retirement
 * (actors/trainer_worker_client.ts), the start-state sources
 * (actors/start_state.ts), the faults it can be told to inject
 * (actors/trainer_faults.ts), the contributions it sends and sends again
 * (actors/trainer_contribute.ts), the per-round utilization clocks
 * (actors/trainer_times.ts), and the update arithmetic it shares with the
 * aggregators (actors/int8_exchange.ts). What is left here is one piece: the
 * round state machine (join, fetch θ, inner phase, blocked, apply, report)
 * and the recoveries that move it back to "fetch θ".
 *
 * @module
 */
import type { ActorContext, Behavior } from "./runtime/behavior.ts";
import { thetaHash } from "./int8_exchange.ts";
import { applyCoded } from "./exchange.ts";
import { checkPart, type EvalPart } from "../kernels/evaluate.ts";
import { textSample, type TextSampleSpec } from "../kernels/sample.ts";
import {
  type HeartbeatAckMsg,
  type JoinReplyMsg,
  type ReportCursor,
  type RunMessage,
  type RunNews,
  sealReport,
  tellLater,
  type TrainerReportMsg,
  type UpdateMsg,
  type ViewMsg,
} from "./run_protocol.ts";
import { validateRunMessage } from "./run_protocol_validate.ts";
import type { DeltaReply, InitReply, RoundReply, WorkerInit } from "./trainer_worker.ts";
import { TrainerWorkerClient } from "./trainer_worker_client.ts";
import { aggregatorStateSource, type StartStateSource } from "./start_state.ts";
import type { TrainerFault } from "./trainer_faults.ts";
import { ContributionOutbox } from "./trainer_contribute.ts";
import { RoundTimes } from "./trainer_times.ts";
import { encodedSize } from "../transport/codec.ts";
import { tensorChecksum } from "./_checksum.ts";
import { defaultOverlapSteps, keepsRunning, reportCursor, type SyncMode } from "./overlap.ts";
import { roundPiece, roundRanges } from "./fragments.ts";
import { beatWhile } from "./heartbeat.ts";
import { SpareArrays } from "./_spares.ts";

/** What a trainer reports besides its round reports. */
export type TrainerEvent =
  /**
   * A round's update applied: the trainer's report, and the round as its
   * update tells it (the contributors' mean inner loss and their number).
   */
  | { type: "report"; report: TrainerReportMsg; update: { loss: number; trainers: number } }
  | { type: "rejected"; trainer: string; reason: string; detail: string }
  /** The run's newest evaluation, as the tracker passed it on. */
  | { type: "news"; news: RunNews }
  /**
   * The run had done all its rounds (`round` of `rounds`) before this trainer
   * held θ: there is nothing left for it to train (told once).
   */
  | { type: "run_over"; trainer: string; round: number; rounds: number }
  | { type: "log"; trainer: string; message: string };

/** Options of {@linkcode trainerBehavior}. */
export interface TrainerOptions {
  run: string;
  /** This trainer's id: its actor path. */
  id: string;
  /** The tracker's actor path. */
  tracker: string;
  /** The monitor's actor path (round reports go there), if any. */
  monitor?: string;
  /** Engine settings for the Worker (the data shard is set per round). */
  engine: Omit<WorkerInit, "op" | "id" | "dataShard">;
  /** Number of data shards the training stream is cut into (trainers take one each). */
  dataShards: number;
  /**
   * The data shard asked for at the first join (the tracker gives another if
   * it is taken): a host gives its own trainers their index, so that which
   * trainer reads which shard (and so the order the aggregator sums their
   * contributions in) does not follow the order their engines came up in.
   */
  preferredDataShard?: number;
  /** Inner steps H per round. */
  innerSteps: number;
  /**
   * Blocking (when absent): wait for θ_{r+1} after sending round r.
   * Overlapped: go on with round r+1's inner steps and merge θ_{r+1} in when
   * it comes (actors/overlap.ts). A run's trainers get the run's mode, whose
   * default is overlapped, through `syncOptions`.
   */
  sync?: SyncMode;
  /** Fragments synchronised in turn, one per round (default 1; actors/fragments.ts). */
  fragments?: number;
  /**
   * Overlapped: τ, the inner steps of round r+1 that may run before round r's
   * update is merged; the Worker waits there for it (default
   * {@linkcode defaultOverlapSteps}).
   */
  overlapSteps?: number;
  /** Heartbeat interval, ms (default 2000). */
  heartbeatMs?: number;
  /** Where start states come from (default {@linkcode aggregatorStateSource}). */
  stateSource?: StartStateSource;
  /**
   * A resumed run's data cursors: the first round this trainer computes at
   * `round`, its sampler goes on from the cursor of its data shard.
   */
  resume?: { round: number; cursors: readonly ReportCursor[] };
  /** Receives reports and log lines. */
  onEvent?: (event: TrainerEvent) => void;
  /** The compute Worker's module (default actors/trainer_worker.ts; a browser's bundle URL). */
  workerUrl?: string | URL;
}

type Control =
  | { type: "_ready"; reply: InitReply }
  | { type: "_worker_error"; error: string }
  | { type: "_joined"; reply: JoinReplyMsg }
  | { type: "_join_failed" }
  | { type: "_heartbeat" }
  | { type: "_ack"; ack: HeartbeatAckMsg }
  | { type: "_state"; round: number; theta: Float32Array; epoch: number }
  | { type: "_state_failed"; error: string }
  | { type: "_retry" }
  | { type: "_inner_done"; reply: RoundReply }
  | { type: "_delta_done"; reply: DeltaReply }
  /**
   * Evaluate θ on the validation split (`maxWindows` spread over it, default
   * 64; only `part` of them when given); answers the loss, the tokens it
   * covers, the round θ starts, its hash and the ms it took; with `sample`,
   * also the text θ continues its prompt with (`sample`, kernels/sample.ts)
   * and the ms of that part (`sampleMs`, within `ms`); `forwardMs` is what
   * one forward pass of the evaluation took, as each sampled byte costs.
   */
  | { type: "eval"; maxWindows?: number; part?: EvalPart; sample?: Partial<TextSampleSpec> }
  | { type: "status" }
  | TrainerFault;

/**
 * The trainer's behavior; a fresh one (and a fresh Worker) per (re)start.
 *
 * @example
 * ```ts ignore
 * await system.spawn(trainerBehavior({ run, id: "host/trainer/0", tracker: "host/tracker", ... }),
 *   { name: "trainer/0" });
 * ```
 */
export function trainerBehavior(options: TrainerOptions): Behavior {
  const { run, id } = options;
  const source = options.stateSource ?? aggregatorStateSource;
  let worker: TrainerWorkerClient | undefined;
  let seed: Float32Array | undefined;
  let view: ViewMsg | undefined;
  let dataShard = 0;
  let joined = false;
  let fetching = false;
  /** θ at the start of `round` (undefined until the start state arrived). */
  let theta: Float32Array | undefined;
  let round = -1;
  /**
   * inner: the Worker computes (an inner phase, or a kept phase's
   * pseudo-gradient); blocked: waiting on the network with nothing to compute.
   */
  let phase: "idle" | "inner" | "blocked" = "idle";
  /** Compute and blocked time of each round not yet reported. */
  const times = new RoundTimes();
  const overlapped = options.sync === "overlapped";
  const fragments = options.fragments ?? 1;
  const overlapSteps = options.overlapSteps ?? defaultOverlapSteps(options.innerSteps);
  /** The Worker keeps its running parameters across rounds (actors/overlap.ts). */
  const keep = keepsRunning({ sync: options.sync, fragments });
  /** Round `round`'s contributions are out and its update not yet applied. */
  let awaiting = false;
  /** The Worker's running parameters must restart from θ (after a fetch, or a round missed). */
  let fresh = true;
  /** Overlapped: round + 1's inner phase finished before round's update came. */
  let pendingInner: RoundReply | undefined;
  /** The inner phase whose pseudo-gradient a kept Worker is computing. */
  let deltaOf: RoundReply | undefined;
  let bytesUp = 0;
  let bytesDown = 0;
  let myLoss = 0;
  /**
   * The sampler's position after each recent inner phase, by its round. The
   * report of round r carries phase r's: overlapped, phase r+1 may be over
   * before round r's update comes, and its position would skip a round's
   * data on resume.
   */
  const cursors = new Map<number, ReportCursor>();
  let resumeUsed = false;
  /** Updates by "round/shard"; kept while θ is being fetched, so none is lost. */
  const updates = new Map<string, UpdateMsg>();
  let member = false;
  const outbox = new ContributionOutbox({
    run,
    id,
    exchange: options.engine.exchange,
    fragments,
    heartbeatMs: options.heartbeatMs ?? 2000,
  });
  let workerFault: TrainerFault & { type: "worker_fault" } | undefined;
  /** Arrays the Worker handed back after copying θ out of them, filled with the next θ sent. */
  const spares = new SpareArrays(4);
  const emit = (e: TrainerEvent) => options.onEvent?.(e);

  const call = (req: Record<string, unknown>, transfer: ArrayBuffer[] = []) =>
    worker!.call(req, transfer);

  /** The run was over before this trainer held θ (told once). */
  let over = false;
  /** A join is on its way: the acks of heartbeats queued meanwhile send no second one. */
  let joining = false;
  const join = (ctx: ActorContext) => {
    if (joining) return;
    joining = true;
    ctx.system.ref(options.tracker).ask<JoinReplyMsg>({
      type: "join",
      run,
      node: id,
      roles: ["trainer"],
      ...(joined
        ? { dataShard }
        : options.preferredDataShard !== undefined
        ? { dataShard: options.preferredDataShard }
        : {}),
      ...(view ? { view } : {}),
    }, { timeoutMs: 3000 }).then(
      (reply) => ctx.self.tell({ type: "_joined", reply }),
      () => ctx.self.tell({ type: "_join_failed" }),
    );
  };

  /** The round of the newest evaluation of the run this trainer has heard of (-1: none). */
  let newsRound = -1;
  const heartbeat = (ctx: ActorContext) => {
    ctx.system.ref(options.tracker).ask<HeartbeatAckMsg>(
      {
        type: "heartbeat",
        run,
        node: id,
        epoch: view?.epoch ?? 0,
        ...(newsRound >= 0 ? { news: newsRound } : {}),
      },
      { timeoutMs: 3000 },
    ).then((ack) => ctx.self.tell({ type: "_ack", ack }), () => {});
  };

  /**
   * Awaits `work` with heartbeats going out meanwhile (actors/heartbeat.ts):
   * an evaluation of a large model (a final one of 64 windows takes minutes
   * on a CPU) would otherwise get a busy trainer evicted.
   */
  const busy = <T>(ctx: ActorContext, work: Promise<T>): Promise<T> =>
    beatWhile(work, () => {
      if (joined && !ctx.signal.aborted) heartbeat(ctx);
    }, options.heartbeatMs ?? 2000);

  const inView = (v: ViewMsg | undefined) => v !== undefined && v.trainers.includes(id);

  /** Starts what can start: fetching θ, or the next round's inner phase. */
  const advance = (ctx: ActorContext) => {
    if (!view || !view.started || !seed) return;
    if (theta === undefined && view.rounds > 0 && view.round >= view.rounds) {
      // Joined after the last round closed: fetching θ would only wait for rounds that never come.
      if (!over) emit({ type: "run_over", trainer: id, round: view.round, rounds: view.rounds });
      over = true;
      return;
    }
    if (!inView(view) || phase !== "idle") return;
    if (view.rounds > 0 && round >= view.rounds) return;
    if (theta === undefined) {
      if (fetching) return;
      fetching = true;
      fetchState(ctx, view);
      return;
    }
    // Blocking waits for its round's update; overlapped goes one round ahead.
    if (awaiting && !overlapped) return;
    const next = awaiting ? round + 1 : round;
    if (view.rounds > 0 && next >= view.rounds) return;
    startRound(ctx, next);
  };

  /** Drops θ and whatever waits on it: the next `advance` fetches the current θ. */
  const refetch = () => {
    theta = undefined;
    round = -1;
    awaiting = false;
    pendingInner = undefined;
    fresh = true;
    times.clear();
    // An inner phase still running is discarded when it ends; if it waits
    // for a merge that will not come now, it runs on.
    if (phase === "inner" && overlapped) worker?.post({ op: "release" });
    if (phase === "blocked") phase = "idle";
  };

  const fetchState = (ctx: ActorContext, v: ViewMsg) => {
    const shards = v.shards;
    Promise.all(shards.map((s) =>
      source.startState(ctx, v, {
        shard: s.index,
        // A view, not a copy: an aggregator that adopts a seed copies it into θ_0 of its own.
        seed: seed!.subarray(s.start, s.start + s.length),
      })
    )).then((states) => {
      const rounds = new Set(states.map((s) => s.round));
      if (rounds.size !== 1) throw new Error(`shards are at rounds ${[...rounds].join(", ")}`);
      // One shard's θ in an array of its own (an aggregator's copy, or decoded into a buffer
      // of its own) is taken as it is: a second θ-sized copy of a large model costs seconds.
      const only = states.length === 1 ? states[0].theta : undefined;
      const own = only?.length === v.params && only.byteOffset === 0 &&
        only.buffer.byteLength === only.byteLength;
      const full = own ? only : new Float32Array(v.params);
      if (!own) { for (const [i, s] of states.entries()) full.set(s.theta, shards[i].start); }
      ctx.self.tell({ type: "_state", round: states[0].round, theta: full, epoch: v.epoch });
    }).catch((err) => ctx.self.tell({ type: "_state_failed", error: String(err) }));
  };

  const startRound = (ctx: ActorContext, r: number) => {
    phase = "inner";
    times.innerStarted();
    const shard = { index: dataShard % options.dataShards, count: options.dataShards };
    // A kept Worker restarts from θ only when it must (its first round, or one missed).
    const restart = !keep || fresh;
    fresh = false;
    const wf = workerFault;
    workerFault = undefined;
    let resumeAt: ReportCursor | undefined;
    if (options.resume && !resumeUsed && r === options.resume.round) {
      resumeUsed = true;
      resumeAt = options.resume.cursors.find((c) =>
        c.shard.index === shard.index && c.shard.count === shard.count
      );
      if (resumeAt) {
        emit({
          type: "log",
          trainer: id,
          message: `data shard ${shard.index} resumes at step ${resumeAt.step}`,
        });
      }
    }
    // θ goes over in an array of its own (a spare one the Worker handed back, when there is one).
    const start = restart ? spares.copyOf(theta!) : undefined;
    call({
      op: "round",
      round: r,
      ...(start ? { theta: start } : {}),
      ...(keep ? { keep } : {}),
      // Overlapped a round ahead: the open round's update is merged at step τ (at the
      // phase's end when τ >= H), whenever it arrives, so the run's numbers follow no timing.
      ...(r > round
        ? { mergeBy: { round, step: Math.min(overlapSteps, options.innerSteps) } }
        : {}),
      steps: options.innerSteps,
      dataShard: shard,
      ...(resumeAt ? { cursor: resumeAt } : {}),
      ...(wf ? { fault: { kind: wf.kind, atStep: wf.atStep ?? 0, ms: wf.ms ?? 0 } } : {}),
    }, start ? [start.buffer as ArrayBuffer] : []).then(
      (reply) => ctx.self.tell({ type: "_inner_done", reply: reply as unknown as RoundReply }),
      (err) => ctx.self.tell({ type: "_worker_error", error: String(err) }),
    );
  };

  /** Applies the round's updates once every shard's has arrived. */
  const tryApply = async (ctx: ActorContext) => {
    if (!view) return; // a restarted trainer can get an update before its first view
    const v = view;
    const mine = v.shards.map((s) => updates.get(`${round}/${s.index}`));
    if (theta === undefined || mine.some((u) => u === undefined)) return;
    for (const [i, s] of v.shards.entries()) {
      const { lo, hi } = roundPiece(s, round, fragments, v.block);
      applyCoded(theta.subarray(s.start + lo, s.start + hi), mine[i]!, { block: v.block });
    }
    const bad = v.shards.find((s, i) =>
      mine[i]!.check !== undefined &&
      tensorChecksum(theta!.subarray(s.start, s.start + s.length)) !== mine[i]!.check
    );
    if (bad) {
      // θ_{r+1} differs from the aggregator's (bits changed on the way):
      // never train on it; take the aggregators' θ again.
      emit({
        type: "log",
        trainer: id,
        message: `θ of shard ${bad.index} after round ${round} fails its checksum: refetching θ`,
      });
      refetch();
      updates.clear();
      advance(ctx);
      return;
    }
    const contributed = mine.every((u) => u!.contributors.includes(id));
    const hash = await thetaHash(theta);
    const cursor = reportCursor(cursors, round);
    if (phase === "blocked") times.blockedSoFar(pendingInner?.round ?? round);
    const { inner: innerMs, blocked: blockedMs } = times.take(round);
    const report: TrainerReportMsg = sealReport({
      type: "trainer_report",
      run,
      trainer: id,
      round,
      hash,
      loss: contributed ? myLoss : 0,
      contributed,
      innerMs: contributed ? innerMs : 0,
      blockedMs: contributed ? blockedMs : 0,
      bytesUp,
      bytesDown,
      ...(cursor ? { cursor } : {}),
    });
    emit({
      type: "report",
      report,
      update: { loss: mine[0]!.loss, trainers: mine[0]!.contributors.length },
    });
    if (options.monitor) tellLater(ctx.system, options.monitor, report);
    bytesUp = 0;
    bytesDown = 0;
    outbox.closed();
    if (keep) {
      if (awaiting) {
        // The Worker replaces its local move of this round by the global one.
        const pieces = roundRanges(v.shards, round, fragments, v.block)
          .map(({ lo, hi }) => ({ lo, values: spares.copyOf(theta!.subarray(lo, hi)) }));
        worker!.post(
          { op: "merge", round, pieces },
          pieces.map((p) => p.values.buffer as ArrayBuffer),
        );
      } else fresh = true; // the round closed without us: no Δ to replace, restart from θ
    }
    awaiting = false;
    round += 1;
    for (const [k, u] of updates) if (u.round < round) updates.delete(k);
    const pending = pendingInner;
    pendingInner = undefined;
    if (pending && pending.round === round) {
      // Overlapped: the next round's inner phase waited for this update.
      finishInner(ctx, pending);
      return;
    }
    // An inner phase still running for the closed round is discarded when it ends.
    if (phase === "blocked") phase = "idle";
    advance(ctx);
  };

  /** An inner phase of the open round ended: its pseudo-gradient goes out. */
  const finishInner = (ctx: ActorContext, reply: RoundReply) => {
    myLoss = reply.loss;
    if (!keep) {
      contribute(ctx, reply, reply);
      return;
    }
    // A kept Worker computes Δ once the merges before it are in.
    phase = "inner";
    times.innerStarted();
    deltaOf = reply;
    call({
      op: "delta",
      round: reply.round,
      // With fragments, the error-feedback residual moves on the round's piece only.
      ...(fragments > 1
        ? { ranges: roundRanges(view!.shards, reply.round, fragments, view!.block) }
        : {}),
    }).then(
      (d) => ctx.self.tell({ type: "_delta_done", reply: d as unknown as DeltaReply }),
      (err) => ctx.self.tell({ type: "_worker_error", error: String(err) }),
    );
  };

  const contribute = (ctx: ActorContext, reply: RoundReply, delta: DeltaReply) => {
    bytesUp += outbox.send(ctx.system, view!, reply, delta);
    awaiting = true;
    phase = "idle";
    // Overlapped: straight on with the next round's inner phase.
    advance(ctx);
    if (phase === "idle") {
      phase = "blocked";
      times.blockedStarted();
    }
  };

  const handleRun = async (ctx: ActorContext, msg: RunMessage) => {
    switch (msg.type) {
      case "view":
        if (msg.run !== run || (view && msg.epoch < view.epoch)) return;
        view = msg;
        if (awaiting && msg.started && msg.round > round + 1) {
          // The run left our round behind while we waited (its update was
          // lost, or this node was cut off): take the current θ again.
          emit({ type: "log", trainer: id, message: `round ${round} passed: refetching θ` });
          refetch();
        }
        if (inView(msg)) member = true;
        else if (member) {
          // Evicted (silent too long): announce again and wait for admission.
          emit({ type: "log", trainer: id, message: `evicted at round ${msg.round}: rejoining` });
          member = false;
          // No update will come for a contribution of the round we left.
          refetch();
          joined = false;
          join(ctx);
        }
        advance(ctx);
        return;
      case "update":
        if (msg.run !== run || (theta !== undefined && msg.round < round)) return;
        if (awaiting && theta !== undefined && msg.round > round) {
          // A later round's update: ours closed and its update never came.
          emit({
            type: "log",
            trainer: id,
            message: `update of round ${round} lost: refetching θ`,
          });
          refetch();
          updates.clear();
          advance(ctx);
          return;
        }
        bytesDown += encodedSize(msg);
        updates.set(`${msg.round}/${msg.shard}`, msg);
        await tryApply(ctx);
        return;
      case "resend":
        outbox.resend(ctx.system, view, msg.round, msg.shard);
        return;
      case "reject":
        emit({ type: "rejected", trainer: id, reason: msg.reason, detail: msg.detail });
        if (
          (msg.reason === "stale_round" || msg.reason === "not_member") && msg.round === round &&
          awaiting
        ) {
          // not_member: evicted while cut off (no update will come for this
          // contribution); compute the round again once admitted.
          // The aggregators are past our round: take the current θ again.
          refetch();
          advance(ctx);
        }
        outbox.refused(ctx.system, view, round, msg.shard);
        return;
      default:
        return;
    }
  };

  return {
    started(ctx) {
      worker = new TrainerWorkerClient({
        onError: (error) => ctx.self.tell({ type: "_worker_error", error }),
        onSpare: (arrays) => spares.give(arrays),
        ...(options.workerUrl ? { url: options.workerUrl } : {}),
      });
      call({ op: "init", ...options.engine, dataShard: { index: 0, count: options.dataShards } })
        .then(
          (reply) => ctx.self.tell({ type: "_ready", reply: reply as unknown as InitReply }),
          (err) => ctx.self.tell({ type: "_worker_error", error: String(err) }),
        );
      ctx.timers.interval(options.heartbeatMs ?? 2000, { type: "_heartbeat" }, { key: "hb" });
    },
    async receive(raw: unknown, ctx) {
      const ctl = raw as Control;
      switch (ctl?.type) {
        case "_ready":
          seed = ctl.reply.params;
          emit({
            type: "log",
            trainer: id,
            message: `engine ready on ${ctl.reply.adapter}: ${ctl.reply.kernels}`,
          });
          join(ctx);
          return;
        case "_worker_error":
          throw new Error(`Trainer ${id}: compute worker failed: ${ctl.error}`);
        case "_join_failed":
          joining = false;
          ctx.timers.once(500, { type: "_heartbeat" }, { key: "rejoin" });
          return;
        case "_joined": {
          joining = false;
          joined = true;
          dataShard = ctl.reply.dataShard;
          const v = ctl.reply.view;
          if (!view || v.epoch >= view.epoch) view = v;
          advance(ctx);
          return;
        }
        case "_heartbeat":
          if (!seed) return;
          if (!joined) {
            join(ctx);
            return;
          }
          outbox.resendIfStuck(ctx.system, view, awaiting);
          heartbeat(ctx);
          return;
        case "_ack":
          if (ctl.ack.news && ctl.ack.news.round > newsRound) {
            newsRound = ctl.ack.news.round;
            emit({ type: "news", news: ctl.ack.news });
          }
          if (!ctl.ack.known) join(ctx);
          else if (ctl.ack.view) await handleRun(ctx, ctl.ack.view);
          return;
        case "_state":
          fetching = false;
          if (theta === undefined) {
            theta = ctl.theta;
            round = ctl.round;
            fresh = true;
            for (const [k, u] of updates) if (u.round < round) updates.delete(k);
            emit({
              type: "log",
              trainer: id,
              message: `start state: round ${round}, θ ${await thetaHash(theta)}`,
            });
            // An update of this round may have come while θ was on its way.
            await tryApply(ctx);
          }
          advance(ctx);
          return;
        case "_state_failed":
          fetching = false;
          emit({ type: "log", trainer: id, message: `start state failed: ${ctl.error}` });
          ctx.timers.once(300, { type: "_retry" }, { key: "refetch" });
          return;
        case "_retry":
          advance(ctx);
          return;
        case "_inner_done": {
          const reply = ctl.reply;
          times.innerEnded(reply.round, reply.waitedMs);
          if (reply.cursor) cursors.set(reply.round, reply.cursor);
          phase = "idle";
          if (theta !== undefined && awaiting && reply.round === round + 1) {
            // Overlapped and a round ahead: Δ waits for the open round's update.
            pendingInner = reply;
            phase = "blocked";
            times.blockedStarted();
            return;
          }
          if (theta === undefined || awaiting || reply.round !== round) {
            // The round closed without us (deadline): θ already moved on.
            advance(ctx);
            return;
          }
          finishInner(ctx, reply);
          await tryApply(ctx);
          return;
        }
        case "_delta_done": {
          times.innerEnded(ctl.reply.round);
          phase = "idle";
          const reply = deltaOf;
          deltaOf = undefined;
          if (!reply || theta === undefined || awaiting || ctl.reply.round !== round) {
            advance(ctx);
            return;
          }
          contribute(ctx, reply, ctl.reply);
          await tryApply(ctx);
          return;
        }
        case "eval": {
          if (!theta) throw new RangeError(`Cannot evaluate: trainer ${id} holds no θ yet`);
          if (ctl.part) checkPart(ctl.part);
          const sample = ctl.sample ? textSample(ctl.sample) : undefined;
          // The θ evaluated, its round and hash as asked: an update may come before the answer.
          const evaluated = spares.copyOf(theta);
          const at = round;
          const hash = await thetaHash(evaluated);
          const r = await busy(
            ctx,
            call({
              op: "eval",
              theta: evaluated,
              maxWindows: ctl.maxWindows ?? 64,
              ...(ctl.part ? { part: ctl.part } : {}),
              ...(sample?.tokens ? { sample } : {}),
            }, [evaluated.buffer as ArrayBuffer]),
          );
          return {
            loss: r.loss as number,
            tokens: r.tokens as number,
            round: at,
            hash,
            ms: r.ms as number,
            ...(typeof r.forwardMs === "number" ? { forwardMs: r.forwardMs } : {}),
            ...(sample?.tokens
              ? { sample: r.sample as string, sampleMs: r.sampleMs as number }
              : {}),
          };
        }
        case "status":
          advance(ctx);
          return { id, round, phase, awaiting, joined, epoch: view?.epoch };
        case "crash":
          throw new Error(`Trainer ${id} crashed on purpose: ${ctl.reason}`);
        case "poison":
          outbox.poison(ctl);
          return;
        case "worker_fault":
          workerFault = ctl;
          return;
      }
      let msg: RunMessage;
      try {
        msg = validateRunMessage(raw);
      } catch (err) {
        emit({ type: "log", trainer: id, message: `refused a message: ${err}` });
        return;
      }
      await handleRun(ctx, msg);
    },
    async stopped() {
      // Its thread is gone when this resolves, so the process may exit after.
      await worker?.retire();
      worker = undefined;
    },
  };
}
