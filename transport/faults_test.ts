import { deepEqual, equal, notDeepEqual, ok, throws } from "@std/assert";
import { FaultInjector } from "./faults.ts";
import { backoffDelay, mulberry32 } from "./rng.ts";

function run(seed: number, frames = 400): { log: string[]; delivered: string[] } {
  const f = new FaultInjector({ seed, drop: 0.1, corrupt: 0.1, duplicate: 0.1, reorder: 0.1 });
  const delivered: string[] = [];
  for (let i = 0; i < frames; i++) {
    const from = i % 3 === 0 ? "b" : "a";
    f.transmit(
      from,
      "c",
      new Uint8Array([i & 255, i >> 8, 0, 0]),
      (b) => delivered.push(`${from}:${b.join(",")}`),
    );
  }
  f.close();
  return { log: f.log.map((e) => `${e.from}->${e.to}#${e.n}:${e.actions.join("+")}`), delivered };
}

Deno.test("fault layer: the same seed gives the same fault sequence", () => {
  const a = run(1234), b = run(1234);
  deepEqual(a.log, b.log);
  deepEqual(a.delivered, b.delivered);
  notDeepEqual(run(99).log, a.log);
  const actions = new Set(a.log.flatMap((l) => l.split(":")[1].split("+")));
  for (const kind of ["pass", "drop", "corrupt", "duplicate", "reorder"]) {
    ok(actions.has(kind), `no ${kind} in 400 frames`);
  }
});

Deno.test("fault layer: a link's faults do not depend on traffic on other links", () => {
  const only = new FaultInjector({ seed: 5, drop: 0.3 });
  const mixed = new FaultInjector({ seed: 5, drop: 0.3 });
  for (let i = 0; i < 100; i++) {
    only.transmit("a", "b", new Uint8Array([i]), () => {});
    mixed.transmit("x", "y", new Uint8Array([i]), () => {});
    mixed.transmit("a", "b", new Uint8Array([i]), () => {});
  }
  const ab = (f: FaultInjector) => f.log.filter((e) => e.from === "a").map((e) => e.actions[0]);
  deepEqual(ab(only), ab(mixed));
  only.close();
  mixed.close();
});

Deno.test("fault layer: corrupt flips exactly one bit of a copy", () => {
  const f = new FaultInjector({ seed: 3, corrupt: 1 });
  const frame = new Uint8Array(32).fill(0xaa);
  let out: Uint8Array | undefined;
  f.transmit("a", "b", frame, (b) => out = b);
  ok(frame.every((v) => v === 0xaa), "sender's frame untouched");
  let flipped = 0;
  for (let i = 0; i < 32; i++) {
    let x = out![i] ^ 0xaa;
    while (x) {
      flipped += x & 1;
      x >>= 1;
    }
  }
  equal(flipped, 1);
  f.close();
});

Deno.test("fault layer: partitions cut both ways and heal at run time", () => {
  const f = new FaultInjector({ seed: 1 });
  const got: string[] = [];
  const send = (from: string, to: string) =>
    f.transmit(from, to, new Uint8Array([1]), () => got.push(`${from}${to}`));
  f.partition(["a"], ["b", "c"]);
  send("a", "b");
  send("c", "a");
  send("b", "c");
  ok(f.isPartitioned("b", "a"));
  f.heal();
  send("a", "b");
  deepEqual(got, ["bc", "ab"]);
  deepEqual(f.log.map((e) => e.actions[0]), ["partition", "partition", "pass", "pass"]);
  f.close();
});

Deno.test("fault layer: reorder delivers a held frame after the next one", () => {
  const f = new FaultInjector({ seed: 11, reorder: 1 });
  const got: number[] = [];
  f.transmit("a", "b", new Uint8Array([1]), (b) => got.push(b[0]));
  f.transmit("a", "b", new Uint8Array([2]), (b) => got.push(b[0]));
  deepEqual(got, [2, 1]);
  f.close();
});

Deno.test("fault layer: delayed frames arrive later, and close() cancels pending ones", async () => {
  const f = new FaultInjector({ seed: 2, delay: 1, delayMs: [5, 10] });
  const got: number[] = [];
  f.transmit("a", "b", new Uint8Array([1]), (b) => got.push(b[0]));
  equal(got.length, 0);
  await new Promise((r) => setTimeout(r, 30));
  deepEqual(got, [1]);
  f.transmit("a", "b", new Uint8Array([2]), (b) => got.push(b[0]));
  f.close();
  await new Promise((r) => setTimeout(r, 20));
  deepEqual(got, [1]);
});

Deno.test("fault layer rejects rates outside [0, 1]", () => {
  throws(() => new FaultInjector({ seed: 1, drop: 1.5 }), RangeError);
});

Deno.test("backoff: full jitter stays within [0, min(max, base * 2^attempt))", () => {
  const random = mulberry32(77);
  for (let attempt = 0; attempt < 20; attempt++) {
    const cap = Math.min(5000, 100 * 2 ** attempt);
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, { baseMs: 100, maxMs: 5000, random });
      ok(d >= 0 && d < cap, `attempt ${attempt}: ${d} outside [0, ${cap})`);
      lo = Math.min(lo, d);
      hi = Math.max(hi, d);
    }
    ok(lo < cap * 0.1 && hi > cap * 0.9, `attempt ${attempt}: jitter does not span the range`);
  }
  equal(backoffDelay(3, { random: () => 0 }), 0);
  equal(backoffDelay(3, { baseMs: 10, random: () => 0.5 }), 40);
  equal(backoffDelay(100, { baseMs: 10, maxMs: 1000, random: () => 0.999 }), 999);
  throws(() => backoffDelay(-1), RangeError);
});

Deno.test("mulberry32 is deterministic per seed and in [0, 1)", () => {
  const a = mulberry32(9), b = mulberry32(9), c = mulberry32(10);
  const xs = Array.from({ length: 1000 }, a);
  deepEqual(xs, Array.from({ length: 1000 }, b));
  notDeepEqual(xs.slice(0, 5), Array.from({ length: 5 }, c));
  ok(xs.every((x) => x >= 0 && x < 1));
});
