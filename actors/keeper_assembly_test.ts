import { deepEqual, equal, ok } from "@std/assert";
import { type CompleteRound, PieceAssembler } from "./keeper_assembly.ts";
import type { KeeperPieceMsg } from "./keeper_protocol.ts";
import type { RoundState } from "../checkpoint/store.ts";

const config = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };

/** A piece of round `round` at `start` whose values are `round` + 0.5, residual optional. */
function piece(round: number, start: number, residual = true): KeeperPieceMsg {
  const v = () => new Float32Array(2).fill(round + 0.5);
  return {
    type: "keeper_piece",
    run: "r",
    round,
    start,
    total: 4,
    params: v(),
    momentum: v(),
    ...(residual ? { residual: v() } : {}),
  };
}

/** The complete round `took` says, or a throw naming what it said instead. */
function complete(took: ReturnType<PieceAssembler["take"]>): CompleteRound {
  if (!took || !("complete" in took)) throw new Error(`no round complete: ${JSON.stringify(took)}`);
  return took.complete;
}

function assemble(a: PieceAssembler, pieces: KeeperPieceMsg[]): RoundState {
  let done: ReturnType<PieceAssembler["take"]>;
  for (const p of pieces) done = a.take(p);
  return a.assemble(complete(done));
}

Deno.test("a keeper keeps a round's pieces as they came and copies them only when it assembles the round", () => {
  const a = new PieceAssembler({ run: "r", config });
  const p0 = piece(1, 0), p2 = piece(1, 2);
  equal(a.take(p0), undefined);
  const done = complete(a.take(p2));
  // The same arrays, not copies: a round never assembled costs no copy.
  ok(done.pieces.includes(p0) && done.pieces.includes(p2));
  equal(a.spares, 0);
  const state = a.assemble(done);
  deepEqual([...state.params], [1.5, 1.5, 1.5, 1.5]);
  ok(state.params !== p0.params && state.params.buffer !== p0.params.buffer);
  // A piece sent again for its place replaces the earlier one; a different length is refused.
  equal(a.take(piece(2, 0)), undefined);
  equal(a.take({ ...piece(2, 0), params: new Float32Array(2).fill(9) }), undefined);
  deepEqual([...a.assemble(complete(a.take(piece(2, 2)))).params], [9, 9, 2.5, 2.5]);
  const bad = a.take({
    ...piece(3, 0),
    params: new Float32Array(3),
    momentum: new Float32Array(3),
  });
  equal(bad, undefined);
  deepEqual(a.take({ ...piece(3, 0) }), {
    error: "piece at 0 of round 3 has 2 floats, earlier 3",
  });
});

Deno.test("a keeper assembles later rounds in the arrays its writer handed back, residual included", () => {
  const a = new PieceAssembler({ run: "r", config });
  const first = assemble(a, [piece(1, 0), piece(1, 2)]);
  const arrays = [first.params, first.momentum, first.residual!];
  a.recycle(arrays);
  const second = assemble(a, [piece(2, 0), piece(2, 2)]);
  // The same memory, no fresh pages: the writer's spare arrays, each used once.
  ok(arrays.includes(second.params) && arrays.includes(second.momentum));
  ok(arrays.includes(second.residual!));
  equal(new Set([second.params, second.momentum, second.residual]).size, 3);
  deepEqual([...second.residual!], [2.5, 2.5, 2.5, 2.5]);
  // A round whose pieces carry a residual only in part: zeros elsewhere, not the last round's values.
  a.recycle([second.params, second.momentum, second.residual!]);
  const third = assemble(a, [piece(3, 0), piece(3, 2, false)]);
  deepEqual([...third.residual!], [3.5, 3.5, 0, 0]);
  deepEqual([...third.params], [3.5, 3.5, 3.5, 3.5]);
});
