import { equal, ok, rejects } from "@std/assert";
import { PreparedShare } from "./keeper_share.ts";
import type { PreparedRound } from "../checkpoint/store.ts";

function prepared(round: number): PreparedRound {
  return {
    round,
    manifest: { round } as PreparedRound["manifest"],
    files: new Map([["model.safetensors", new Uint8Array(4)]]),
  };
}

Deno.test("share: the first keeper to claim a round encodes it; the others with the same arrays get its files", async () => {
  const share = new PreparedShare();
  const pieces = [new Float32Array(4), new Float32Array(4)];
  const a = share.claim(2, pieces, "k0");
  const b = share.claim(2, pieces, "k1");
  ok(a.own && !b.own);
  if (!a.own || b.own) return;
  equal(b.owner, "k0");
  const p = prepared(2);
  a.publish(p);
  equal(await b.prepared, p);
  // A keeper coming after the round was published gets it too.
  const c = share.claim(2, pieces, "k2");
  ok(!c.own);
  if (!c.own) equal(await c.prepared, p);
});

Deno.test("share: other arrays, another order or another round are never shared", () => {
  const share = new PreparedShare();
  const x = new Float32Array(4);
  const y = new Float32Array(4);
  ok(share.claim(1, [x, y], "k0").own);
  ok(share.claim(1, [y, x], "k1").own, "pieces in another order");
  ok(share.claim(1, [new Float32Array(4), y], "k2").own, "other arrays with the same contents");
  ok(share.claim(1, [x], "k3").own, "fewer pieces");
  ok(share.claim(2, [y, x], "k4").own, "another round");
});

Deno.test("share: a failed encoding is heard by those waiting, and the next keeper to come encodes it itself", async () => {
  const share = new PreparedShare();
  const pieces = [new Float32Array(4)];
  const a = share.claim(5, pieces, "k0");
  const b = share.claim(5, pieces, "k1");
  ok(a.own && !b.own);
  if (!a.own || b.own) return;
  a.fail(new Error("writer thread died"));
  await rejects(() => b.prepared, Error, "writer thread died");
  const c = share.claim(5, pieces, "k1");
  ok(c.own, "after a failure the round is claimed anew");
});

Deno.test("share: old rounds are forgotten as newer ones are claimed", () => {
  const share = new PreparedShare();
  const pieces = [new Float32Array(4)];
  for (let r = 0; r < 10; r++) share.claim(r, pieces, "k0");
  const kept = share.rounds();
  equal(kept.at(-1), 9);
  ok(kept.length <= 5 && !kept.includes(0), `kept ${kept}`);
});
