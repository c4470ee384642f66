/**
 * What a node that joined a run shows of its trainer's rounds: one "trained"
 * event a round (its loss, speed, share of the round training and bytes,
 * beside the run's loss as the round's update told it) and its totals when it
 * leaves. Without them a volunteer's terminal said nothing between "joined"
 * and "leaving".
 *
 * Browser-bound: it may use no Deno API.
 *
 * @module
 */
import type { RunEvent } from "./monitor.ts";
import type { TrainerEvent } from "./trainer.ts";
import { engineSettings, type RunSettings } from "./run_settings.ts";

/** A joined trainer's round, as its node emits it. */
export type TrainedEvent = Extract<RunEvent, { event: "trained" }>;

/** What a joined trainer did over the run, as its node's "done" event says. */
export interface JoinedSummary {
  [k: string]: unknown;
  node: string;
  /** Rounds whose update it applied, and those its contribution counted in. */
  rounds: number;
  rounds_contributed: number;
  /** The last round it applied (-1: none). */
  last_round: number;
  tokens: number;
  /** Tokens per second of its inner phases. */
  tokens_per_s: number;
  /** Its inner time over its inner and blocked time, over the rounds it contributed to. */
  utilization: number;
  bytes_up: number;
  bytes_down: number;
  wall_s: number;
}

const round4 = (x: number) => Math.round(x * 10_000) / 10_000;

/**
 * Turns a joined trainer's reports into "trained" events and keeps the
 * totals.
 *
 * @example
 * ```ts
 * import { JoinedRounds } from "./joined_rounds.ts";
 * const rounds = new JoinedRounds(
 *   { run: "r", config: "tiny", rounds: 2, innerSteps: 4, outer: { lr: 1, momentum: 0 } },
 *   () => 1.5,
 * );
 * console.log(rounds.summary("n").rounds); // 0
 * ```
 */
export class JoinedRounds {
  #tokensPerRound: number;
  #planned: number;
  #wallS: () => number;
  #rounds = 0;
  #contributed = 0;
  #last = -1;
  #tokens = 0;
  #innerMs = 0;
  #blockedMs = 0;
  #bytesUp = 0;
  #bytesDown = 0;

  /** `wallS` is the node's clock, seconds since it started. */
  constructor(settings: RunSettings, wallS: () => number) {
    const engine = engineSettings(settings);
    // Every inner step trains on gradAccum micro-batches of batch windows of the context.
    this.#tokensPerRound = settings.innerSteps * engine.batch * (engine.gradAccum ?? 1) *
      engine.config.blockSize;
    this.#wallS = wallS;
    this.#planned = settings.rounds;
  }

  /** The last round whose update the trainer applied (-1: none). */
  get lastRound(): number {
    return this.#last;
  }

  /** The "trained" event of a report, counted in the totals. */
  record(e: Extract<TrainerEvent, { type: "report" }>): TrainedEvent {
    const r = e.report;
    const tokens = r.contributed ? this.#tokensPerRound : 0;
    this.#rounds++;
    this.#last = r.round;
    this.#bytesUp += r.bytesUp;
    this.#bytesDown += r.bytesDown;
    if (r.contributed) {
      this.#contributed++;
      this.#tokens += tokens;
      this.#innerMs += r.innerMs;
      this.#blockedMs += r.blockedMs;
    }
    const busy = r.innerMs + r.blockedMs;
    return {
      event: "trained",
      round: r.round,
      rounds: this.#planned,
      loss: r.contributed ? round4(r.loss) : null,
      run_loss: round4(e.update.loss),
      trainers: e.update.trainers,
      contributed: r.contributed,
      tokens,
      tokens_per_s: r.innerMs > 0 ? Math.round(tokens / (r.innerMs / 1000)) : 0,
      inner_ms: Math.round(r.innerMs),
      blocked_ms: Math.round(r.blockedMs),
      utilization: busy > 0 ? round4(r.innerMs / busy) : 0,
      bytes_up: r.bytesUp,
      bytes_down: r.bytesDown,
      theta_hash: r.hash,
      wall_s: Math.round(this.#wallS() * 1000) / 1000,
    };
  }

  /** The totals so far, as the node's "done" event. */
  summary(node: string): JoinedSummary {
    const busy = this.#innerMs + this.#blockedMs;
    return {
      node,
      rounds: this.#rounds,
      rounds_contributed: this.#contributed,
      last_round: this.lastRound,
      tokens: this.#tokens,
      tokens_per_s: this.#innerMs > 0 ? Math.round(this.#tokens / (this.#innerMs / 1000)) : 0,
      utilization: busy > 0 ? round4(this.#innerMs / busy) : 0,
      bytes_up: this.#bytesUp,
      bytes_down: this.#bytesDown,
      wall_s: Math.round(this.#wallS() * 1000) / 1000,
    };
  }
}
