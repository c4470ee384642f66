/**
 * How a keeper assembles a round from the pieces aggregators send it
 * ({@linkcode KeeperPieceMsg}): the pieces of a round are gathered until they
 * cover the whole flat vector, overlapping or inconsistent ones are refused
 * with the reason, and only the newest few rounds are gathered at once.
 *
 * Gathering keeps the pieces as they came (an aggregator sends each round's
 * state in arrays of its own and never writes them again), and a round is
 * copied into whole vectors only when its writer is ready for it
 * ({@linkcode PieceAssembler.assemble}): a keeper whose disk is slower than
 * the rounds skips most of them, and a round skipped is then never copied
 * (at 25M parameters three 100 MB copies a round for each keeper, on the
 * host's event loop). The arrays the writer thread hands back take the next
 * round assembled. A piece lent by an aggregator in this process (its saved
 * state's own arrays, actors/_lease.ts) is let go as soon as it is copied,
 * replaced, dropped or superseded, so that its arrays take a later state.
 *
 * @module
 */
import type { GptConfig } from "../kernels/config.ts";
import type { RoundState } from "../checkpoint/store.ts";
import type { KeeperPieceMsg } from "./keeper_protocol.ts";
import { SpareArrays } from "./_spares.ts";
import { letGo } from "./_lease.ts";

/** Rounds gathered at once; older incomplete ones are dropped. */
const MAX_GATHERING = 3;

/** Arrays kept for reuse: parameters, momentum and residual of two rounds. */
const MAX_SPARE = 6;

/** A round whose pieces cover the whole vector, not yet copied into one. */
export interface CompleteRound {
  round: number;
  /** Length of the flat vector. */
  total: number;
  /** The pieces, by start (each the last one sent for its place). */
  pieces: KeeperPieceMsg[];
  /** Lets the pieces go (they are not read after; {@linkcode PieceAssembler.assemble} calls it). */
  release(): void;
  view?: unknown;
  cursors: Record<string, unknown>;
  config: GptConfig;
  settings: Record<string, unknown>;
}

interface Gathering {
  total: number;
  /** By start (a lent piece carries the function that lets it go, actors/_lease.ts). */
  pieces: Map<number, KeeperPieceMsg>;
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
 * Gathers rounds from pieces, and assembles a complete one into whole vectors.
 *
 * @example
 * ```ts
 * import { PieceAssembler } from "./keeper_assembly.ts";
 * import assert from "node:assert/strict";
 * const config = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };
 * const a = new PieceAssembler({ run: "r", config });
 * const piece = (start: number) => ({ type: "keeper_piece" as const, run: "r", round: 1, start,
 *   total: 4, params: new Float32Array(2).fill(start), momentum: new Float32Array(2) });
 * assert.equal(a.take(piece(0)), undefined);
 * const done = a.take(piece(2));
 * assert.ok(done && "complete" in done);
 * assert.deepEqual([...a.assemble(done.complete).params], [0, 0, 2, 2]);
 * ```
 */
export class PieceAssembler {
  #options: AssemblerOptions;
  #gathering = new Map<number, Gathering>();
  /**
   * Arrays the writer thread handed back. A round is assembled only once its
   * pieces cover every element, so a reused array needs no clearing.
   */
  #spare = new SpareArrays(MAX_SPARE);

  /** An assembler with no round in progress. */
  constructor(options: AssemblerOptions) {
    this.#options = options;
  }

  /** Rounds being gathered, in the order their first piece came. */
  rounds(): number[] {
    return [...this.#gathering.keys()];
  }

  /** Keeps arrays for reuse by later rounds (a few at most). */
  recycle(arrays: readonly Float32Array[]): void {
    this.#spare.give(arrays);
  }

  /** Arrays kept for reuse now. */
  get spares(): number {
    return this.#spare.size;
  }

  /**
   * Takes a piece: the round once its pieces cover the whole vector (older
   * rounds in progress are then dropped), an error naming why the piece was
   * refused, or undefined while the round is incomplete. The piece's arrays
   * are kept as they are, not copied: the sender must not write them again.
   */
  take(m: KeeperPieceMsg): { complete: CompleteRound } | { error: string } | undefined {
    const gathering = this.#gathering;
    let g = gathering.get(m.round);
    if (!g) {
      g = { total: m.total, pieces: new Map(), covered: 0, cursors: {} };
      gathering.set(m.round, g);
      for (const r of [...gathering.keys()].sort((x, y) => x - y).slice(0, -MAX_GATHERING)) {
        this.#drop(r);
      }
    }
    if (g.total !== m.total) {
      letGo(m);
      return {
        error: `piece of round ${m.round} says ${m.total} parameters, earlier pieces ${g.total}`,
      };
    }
    const n = m.params.length;
    const prev = g.pieces.get(m.start);
    if (prev === undefined) {
      for (const [s, p] of g.pieces) {
        const len = p.params.length;
        if (m.start < s + len && s < m.start + n) {
          letGo(m);
          return {
            error: `piece [${m.start}, ${m.start + n}) of round ${m.round} overlaps [${s}, ${
              s + len
            })`,
          };
        }
      }
      g.covered += n;
    } else if (prev.params.length !== n) {
      letGo(m);
      return {
        error:
          `piece at ${m.start} of round ${m.round} has ${n} floats, earlier ${prev.params.length}`,
      };
    }
    if (prev !== undefined) letGo(prev);
    g.pieces.set(m.start, m);
    if (m.view !== undefined && viewEpoch(m.view) >= viewEpoch(g.view)) g.view = m.view;
    Object.assign(g.cursors, m.cursors ?? {});
    g.config ??= m.config;
    g.settings ??= m.settings;
    if (g.covered < g.total) return undefined;
    gathering.delete(m.round);
    for (const r of [...gathering.keys()]) if (r < m.round) this.#drop(r);
    const pieces = [...g.pieces.values()];
    const release = () => pieces.forEach(letGo);
    const config = g.config ?? this.#options.config;
    if (!config) {
      release();
      return { error: `round ${m.round} has no model config` };
    }
    return {
      complete: {
        round: m.round,
        total: g.total,
        pieces,
        release,
        ...(g.view !== undefined ? { view: g.view } : {}),
        cursors: g.cursors,
        config,
        settings: g.settings ?? this.#options.settings ?? {},
      },
    };
  }

  /** Drops a round being gathered, letting its pieces go. */
  #drop(round: number): void {
    const g = this.#gathering.get(round);
    this.#gathering.delete(round);
    g?.pieces.forEach(letGo);
  }

  /**
   * Copies a complete round's pieces into whole vectors (arrays handed back
   * by the writer when there are some), ready to write, and lets the pieces go.
   */
  assemble(c: CompleteRound): RoundState {
    const params = this.#spare.take(c.total);
    const momentum = this.#spare.take(c.total);
    let residual: Float32Array | undefined;
    for (const p of c.pieces) {
      params.set(p.params, p.start);
      momentum.set(p.momentum, p.start);
    }
    if (c.pieces.some((p) => p.residual)) {
      // Pieces without a residual (none come from this version) leave zeros: a reused array is cleared.
      residual = this.#spare.take(c.total).fill(0);
      for (const p of c.pieces) if (p.residual) residual.set(p.residual, p.start);
    }
    c.release();
    return {
      run: this.#options.run,
      round: c.round,
      config: c.config,
      params,
      momentum,
      ...(residual ? { residual } : {}),
      view: c.view,
      cursors: c.cursors,
      settings: c.settings,
    };
  }
}
