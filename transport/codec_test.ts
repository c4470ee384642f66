import { deepEqual, equal, ok, throws } from "@std/assert";
import { Buffer } from "node:buffer";
import { decode, encode, encodedSize, encodeOwned, normalize } from "./codec.ts";

const SAMPLES: ArrayBufferView[] = [
  new Int8Array([-128, -1, 0, 1, 127]),
  new Uint8Array([0, 1, 254, 255]),
  new Uint8ClampedArray([0, 128, 255]),
  new Int16Array([-32768, -1, 0, 32767]),
  new Uint16Array([0, 1, 65535]),
  new Int32Array([-2147483648, -1, 0, 2147483647]),
  new Uint32Array([0, 1, 4294967295]),
  new Float32Array([0, -0, 1.5, -3.25, 3.4028234663852886e38, 1e-45, NaN, Infinity, -Infinity]),
  new Float64Array([0, -0, Math.PI, -1e308, 5e-324, NaN, Infinity]),
  new BigInt64Array([-(2n ** 63n), -1n, 0n, 2n ** 63n - 1n]),
  new BigUint64Array([0n, 1n, 2n ** 64n - 1n]),
];

function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

for (const sample of SAMPLES) {
  const name = sample.constructor.name;
  Deno.test(`codec round-trips ${name} bit for bit with its type`, () => {
    const back = decode(encode({ data: sample, nested: [sample] })) as {
      data: ArrayBufferView;
      nested: ArrayBufferView[];
    };
    equal(back.data.constructor, sample.constructor);
    ok(sameBytes(back.data, sample), `${name} bytes differ`);
    equal(back.nested[0].constructor, sample.constructor);
    ok(sameBytes(back.nested[0], sample));
  });

  Deno.test(`codec round-trips an unaligned ${name} view`, () => {
    const bytesPer = (sample as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
    const Ctor = sample.constructor as new (
      b: ArrayBuffer,
      o: number,
      n: number,
    ) => ArrayBufferView;
    const length = sample.byteLength / bytesPer;
    const host = new ArrayBuffer(sample.byteLength + bytesPer * 3);
    const view = new Ctor(host, bytesPer * 3, length);
    new Uint8Array(host, bytesPer * 3).set(
      new Uint8Array(sample.buffer, sample.byteOffset, sample.byteLength),
    );
    const back = decode(encode(view)) as ArrayBufferView;
    equal(back.constructor, sample.constructor);
    ok(sameBytes(back, sample));
  });
}

Deno.test("codec round-trips an empty Float32Array and a large one", () => {
  const empty = decode(encode(new Float32Array(0))) as Float32Array;
  equal(empty.constructor, Float32Array);
  equal(empty.length, 0);
  const big = new Float32Array(100_000).map((_, i) => Math.sin(i));
  deepEqual(decode(encode(big)), big);
});

Deno.test("codec normalises Buffer to Uint8Array", () => {
  const out = normalize({ a: Buffer.from([1, 2, 3]), b: [Buffer.from([4])] }) as {
    a: Uint8Array;
    b: Uint8Array[];
  };
  equal(out.a.constructor, Uint8Array);
  equal(out.b[0].constructor, Uint8Array);
  deepEqual(out.a, new Uint8Array([1, 2, 3]));
  // bin 8 from a foreign encoder decodes to a plain Uint8Array too
  const bin = decode(new Uint8Array([0xc4, 2, 9, 8])) as Uint8Array;
  equal(bin.constructor, Uint8Array);
  deepEqual(bin, new Uint8Array([9, 8]));
});

Deno.test("codec keeps maps, strings, numbers and nulls", () => {
  const value = { s: "héllo", n: -1.5, i: 2 ** 40, z: null, t: true, list: [1, "a"], o: { k: 1 } };
  deepEqual(decode(encode(value)), value);
});

Deno.test("encode returns a reused view, encodeOwned a private copy", () => {
  const kept = encodeOwned({ a: "first" });
  const view = encode({ a: "first" });
  encode({ a: "other" });
  deepEqual(decode(kept), { a: "first" });
  ok(view.byteLength > 0);
});

Deno.test("decode rejects malformed msgpack with a TypeError naming the problem", () => {
  throws(
    () => decode(new Uint8Array([0xd9])),
    (e: unknown) => e instanceof TypeError && /Cannot decode msgpack/.test((e as Error).message),
  );
  throws(() => decode(new Uint8Array([0x92, 0x01])), TypeError);
  throws(() => decode(new Uint8Array([0x01, 0x02])), TypeError); // trailing bytes
});

Deno.test("encodedSize is the length encode gives, for small and large typed arrays of every class", () => {
  const lengths = [0, 1, 253, 254, 255, 256, 65_533, 65_534, 65_535, 65_536, 65_537, 300_001];
  // Every class SAMPLES holds (big-integer ones included).
  type View = ArrayBufferView & { subarray(start: number): ArrayBufferView };
  for (const sample of SAMPLES) {
    const C = sample.constructor as (new (n: number) => View) & { BYTES_PER_ELEMENT: number };
    for (const bytes of lengths) {
      const n = Math.floor(bytes / C.BYTES_PER_ELEMENT);
      const msg = {
        type: "contribution",
        round: 7,
        loss: 2.5,
        q: new C(n),
        nested: [{ x: new C(n).subarray(1) }, "é", null],
        flag: true,
      };
      equal(encodedSize(msg), encode(msg).byteLength, `${C.name} of ${n}`);
    }
  }
  const buf = Buffer.alloc(70_000);
  equal(encodedSize({ b: buf }), encode({ b: buf }).byteLength, "a Buffer (bin)");
  equal(encodedSize(new Map([["k", 1]])), encode(new Map([["k", 1]])).byteLength, "a Map");
  equal(encodedSize("text"), encode("text").byteLength);
});
