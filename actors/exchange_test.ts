import { deepEqual, equal, ok, throws } from "@std/assert";
import { decodeEncoded, encodedNorm, encodedProblem, sliceEncoded, toWire } from "./exchange.ts";
import { shardMap } from "./run_protocol.ts";
import { encodedSize, parseExchange } from "../kernels/exchange_format.ts";
import { decodeRef, encodeRef } from "../kernels/lowbit_reference.ts";

function vec(n: number): Float32Array {
  return new Float32Array(n).map((_, i) => Math.sin(i * 0.37) * (1 + (i % 11)) / 100);
}

Deno.test("a shard's slice of the codes is the coding of the shard alone", () => {
  const n = 3000;
  const x = vec(n);
  const shards = shardMap(n, { aggregators: ["a0", "a1", "a2"], block: 256 });
  for (const name of ["int8", "int4", "topk:0.05", "topk:0.01"]) {
    const f = parseExchange(name);
    const whole = toWire(f, encodeRef(f, x), n);
    let bytes = 0;
    for (const s of shards) {
      const part = sliceEncoded(f, whole, s);
      const alone = toWire(f, encodeRef(f, x.subarray(s.start, s.start + s.length)), s.length);
      deepEqual(part, alone, `${name} shard ${s.index}`);
      equal(encodedProblem(f, part, s.length), undefined);
      bytes += part.q.length + (part.idx?.length ?? 0) + 4 * part.scales.length;
    }
    const size = encodedSize(n, f);
    equal(
      bytes,
      size.codes + size.offsets + 4 * size.scales,
      `${name}: the slices cover the codes`,
    );
  }
  throws(
    () =>
      sliceEncoded(parseExchange("int4"), { q: new Int8Array(8), scales: new Float32Array(1) }, {
        start: 32,
        length: 8,
      }),
    /start 32 is not a multiple of 64/,
  );
});

Deno.test("wire codes decode to the twins' values and their norm", () => {
  const n = 1000;
  const x = vec(n);
  for (const name of ["int8", "int4", "topk:0.05"]) {
    const f = parseExchange(name);
    const coded = encodeRef(f, x);
    const wire = toWire(f, coded, n);
    const d = decodeEncoded(f, wire, n);
    deepEqual(d, decodeRef(f, coded, n), name);
    const norm = Math.sqrt(d.reduce((s, v) => s + v * v, 0));
    ok(Math.abs(encodedNorm(f, wire, n) - norm) <= 1e-6 * norm, `${name} norm`);
  }
  // int4 bytes: two codes, low nibble first.
  const f = parseExchange("int4");
  deepEqual(Array.from(toWire(f, encodeRef(f, new Float32Array([7, -1, 3])), 3).q), [-9, 3]);
});
