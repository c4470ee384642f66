import { deepEqual, equal, ok } from "@std/assert";
import { PieceAssembler } from "./keeper_assembly.ts";
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

function assemble(a: PieceAssembler, pieces: KeeperPieceMsg[]): RoundState {
  let done: ReturnType<PieceAssembler["take"]>;
  for (const p of pieces) done = a.take(p);
  if (!done || !("state" in done)) throw new Error(`no round assembled: ${JSON.stringify(done)}`);
  return done.state;
}

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
