/**
 * How a keeper assembles a round from the pieces aggregators send it
 * ({@linkcode KeeperPieceMsg}): pieces of a round are copied into place
 * until they cover the whole flat vector, overlapping or inconsistent ones
 * are refused with the reason, and only the newest few rounds are assembled
 * at once. Arrays the writer thread hands back are reused for later rounds.
 *
 * @module
 */
import type { GptConfig } from "../kernels/config.ts";
import type { RoundState } from "../checkpoint/store.ts";
import type { KeeperPieceMsg } from "./keeper_protocol.ts";

/** Rounds of assembly kept at once; older incomplete ones are dropped. */
const MAX_ASSEMBLING = 3;

/** Arrays kept for reuse: parameters, momentum and residual of two rounds. */
const MAX_SPARE = 6;

interface Assembly {
  total: number;
  params: Float32Array;
  momentum: Float32Array;
  residual?: Float32Array;
  pieces: Map<number, number>;
  covered: number;
  view?: unknown;
  cursors: Record<string, unknown>;
  config?: GptConfig;
  settings?: Record<string, unknown>;
}

function viewEpoch(v: unknown): number {
  const e = (v as { epoch?: unknown })?.epoch;
  return typeof e === "number" ? e : -1;
}

/** Options of {@linkcode PieceAssembler}. */
export interface AssemblerOptions {
  /** Run id of the rounds. */
  run: string;
  /** The model shape, for rounds whose pieces carry none. */
  config?: GptConfig;
  /** Run settings, for rounds whose pieces carry none. */
  settings?: Record<string, unknown>;
}

/**
 * Assembles rounds from pieces.
 *
 * @example
 * ```ts
 * import { PieceAssembler } from "./keeper_assembly.ts";
 * import assert from "node:assert/strict";
 * const config = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };
 * const a = new PieceAssembler({ run: "r", config });
 * const piece = (start: number) => ({ type: "keeper_piece" as const, run: "r", round: 1, start,
 *   total: 4, params: new Float32Array(2), momentum: new Float32Array(2) });
 * assert.equal(a.take(piece(0)), undefined);
 * const done = a.take(piece(2));
 * assert.ok(done && "state" in done && done.state.params.length === 4);
 * ```
 */
export class PieceAssembler {
  #options: AssemblerOptions;
  #assembling = new Map<number, Assembly>();
  /**
   * Arrays the writer thread handed back. A round is written only once its
   * pieces cover every element, so a reused array needs no clearing.
   */
  #spare: Float32Array[] = [];

  /** An assembler with no round in progress. */
  constructor(options: AssemblerOptions) {
    this.#options = options;
  }

  /** Rounds being assembled, in the order their first piece came. */
  rounds(): number[] {
    return [...this.#assembling.keys()];
  }

  /** Keeps arrays for reuse by later rounds (a few at most). */
  recycle(arrays: readonly Float32Array[]): void {
    for (const x of arrays) if (this.#spare.length < MAX_SPARE) this.#spare.push(x);
  }

  #reuse(n: number): Float32Array {
    const at = this.#spare.findIndex((x) => x.length === n);
    return at >= 0 ? this.#spare.splice(at, 1)[0] : new Float32Array(n);
  }

  /**
   * Takes a piece: the round's state once its pieces cover the whole vector
   * (older rounds in progress are then dropped), an error naming why the
   * piece was refused, or undefined while the round is incomplete.
   */
  take(m: KeeperPieceMsg): { state: RoundState } | { error: string } | undefined {
    const assembling = this.#assembling;
    let a = assembling.get(m.round);
    if (!a) {
      a = {
        total: m.total,
        params: this.#reuse(m.total),
        momentum: this.#reuse(m.total),
        pieces: new Map(),
        covered: 0,
        cursors: {},
      };
      assembling.set(m.round, a);
      for (const r of [...assembling.keys()].sort((x, y) => x - y).slice(0, -MAX_ASSEMBLING)) {
        assembling.delete(r);
      }
    }
    if (a.total !== m.total) {
      return {
        error: `piece of round ${m.round} says ${m.total} parameters, earlier pieces ${a.total}`,
      };
    }
    const n = m.params.length;
    const prev = a.pieces.get(m.start);
    if (prev === undefined) {
      for (const [s, len] of a.pieces) {
        if (m.start < s + len && s < m.start + n) {
          return {
            error: `piece [${m.start}, ${m.start + n}) of round ${m.round} overlaps [${s}, ${
              s + len
            })`,
          };
        }
      }
      a.pieces.set(m.start, n);
      a.covered += n;
    } else if (prev !== n) {
      return { error: `piece at ${m.start} of round ${m.round} has ${n} floats, earlier ${prev}` };
    }
    a.params.set(m.params, m.start);
    a.momentum.set(m.momentum, m.start);
    if (m.residual) {
      // Pieces without a residual (none come from this version) leave zeros: a reused array is cleared.
      a.residual ??= this.#reuse(m.total).fill(0);
      a.residual.set(m.residual, m.start);
    }
    if (m.view !== undefined && viewEpoch(m.view) >= viewEpoch(a.view)) a.view = m.view;
    Object.assign(a.cursors, m.cursors ?? {});
    a.config ??= m.config;
    a.settings ??= m.settings;
    if (a.covered < a.total) return undefined;
    assembling.delete(m.round);
    for (const r of assembling.keys()) if (r < m.round) assembling.delete(r);
    const config = a.config ?? this.#options.config;
    if (!config) return { error: `round ${m.round} has no model config` };
    return {
      state: {
        run: this.#options.run,
        round: m.round,
        config,
        params: a.params,
        momentum: a.momentum,
        ...(a.residual ? { residual: a.residual } : {}),
        view: a.view,
        cursors: a.cursors,
        settings: a.settings ?? this.#options.settings ?? {},
      },
    };
  }
}
