import { deepEqual, equal, ok, throws } from "@std/assert";
import { encode } from "./codec.ts";
import {
  DEFAULT_LIMITS,
  type Envelope,
  parseFrame,
  resolveLimits,
  tensor,
  validateEnvelope,
} from "./envelope.ts";
import { FrameError } from "./errors.ts";

const base = { v: 1, run: "r1", from: "a", to: "b/x", kind: "tell", seq: 0, payload: { n: 1 } };

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof FrameError)) throw new Error(`expected FrameError, got ${err}`);
    return `${err.code}: ${err.message}`;
  }
  throw new Error("expected a FrameError");
}

Deno.test("validateEnvelope accepts a well-formed tell, ask and reply", () => {
  equal(validateEnvelope({ ...base }).kind, "tell");
  equal(validateEnvelope({ ...base, kind: "ask", id: 3 }).id, 3);
  equal(validateEnvelope({ ...base, kind: "reply", corr: 3 }).corr, 3);
  equal(
    validateEnvelope({ ...base, kind: "error", payload: { code: "x", message: "m" } }).kind,
    "error",
  );
});

Deno.test("validateEnvelope names what is wrong", () => {
  ok(
    /^bad_version: Unsupported envelope version: number 2/.test(
      code(() => validateEnvelope({ ...base, v: 2 })),
    ),
  );
  ok(/^bad_version/.test(code(() => validateEnvelope({ ...base, v: undefined }))));
  ok(
    /^unknown_kind: Unknown envelope kind: "gossip"/.test(
      code(() => validateEnvelope({ ...base, kind: "gossip" })),
    ),
  );
  ok(
    /^invalid: Invalid envelope field run: expected a string/.test(
      code(() => validateEnvelope({ ...base, run: 5 })),
    ),
  );
  ok(
    /^invalid: Invalid envelope field from: empty/.test(
      code(() => validateEnvelope({ ...base, from: "" })),
    ),
  );
  ok(
    /^invalid: Invalid envelope field seq/.test(code(() => validateEnvelope({ ...base, seq: -1 }))),
  );
  ok(
    /^invalid: Invalid envelope field seq/.test(
      code(() => validateEnvelope({ ...base, seq: 1.5 })),
    ),
  );
  ok(
    /^invalid: Invalid ask envelope: missing id/.test(
      code(() => validateEnvelope({ ...base, kind: "ask" })),
    ),
  );
  ok(
    /^invalid: Invalid reply envelope: missing corr/.test(
      code(() => validateEnvelope({ ...base, kind: "reply" })),
    ),
  );
  ok(
    /missing payload/.test(
      code(() => validateEnvelope({ v: 1, run: "r", from: "a", to: "b", kind: "tell", seq: 0 })),
    ),
  );
  ok(/^too_large/.test(code(() => validateEnvelope({ ...base, to: "b/" + "x".repeat(300) }))));
  ok(/expected a map, got array/.test(code(() => validateEnvelope([1, 2]))));
  ok(
    /Invalid error payload/.test(
      code(() => validateEnvelope({ ...base, kind: "error", payload: "oops" })),
    ),
  );
  ok(
    /Invalid ping payload/.test(
      code(() => validateEnvelope({ ...base, kind: "ping", payload: "x" })),
    ),
  );
  ok(/Invalid challenge nonce: expected 32 bytes/.test(
    code(() =>
      validateEnvelope({
        ...base,
        kind: "challenge",
        to: "",
        payload: { nonce: new Uint8Array(3) },
      })
    ),
  ));
});

Deno.test("validateEnvelope checks tensors carried in payloads", () => {
  const good = {
    ...base,
    payload: { w: { dtype: "f32", shape: [2, 3], data: new Float32Array(6) } },
  };
  equal((validateEnvelope(good).payload as { w: { shape: number[] } }).w.shape[1], 3);
  ok(/Invalid tensor at payload.w: shape \[2,4\] holds 8 elements but data has 6/.test(
    code(() =>
      validateEnvelope({ ...base, payload: { w: { shape: [2, 4], data: new Float32Array(6) } } })
    ),
  ));
  ok(/dtype i8 does not match data Float32Array/.test(
    code(() =>
      validateEnvelope({
        ...base,
        payload: { w: { dtype: "i8", shape: [6], data: new Float32Array(6) } },
      })
    ),
  ));
  ok(/bad dimension: -1/.test(
    code(() => validateEnvelope({ ...base, payload: [{ shape: [-1], data: new Int8Array(1) }] })),
  ));
  ok(/rank 9 exceeds 8/.test(
    code(() =>
      validateEnvelope({
        ...base,
        payload: { shape: new Array(9).fill(1), data: new Int8Array(1) },
      })
    ),
  ));
});

Deno.test("validateEnvelope bounds payload nesting", () => {
  let deep: unknown = 1;
  for (let i = 0; i < 40; i++) deep = [deep];
  ok(/nesting deeper than 32/.test(code(() => validateEnvelope({ ...base, payload: deep }))));
});

Deno.test("validateEnvelope checks chunk headers", () => {
  const chunk = {
    xid: 1,
    index: 0,
    count: 2,
    total: 10,
    offset: 0,
    head: 10,
    digest: new Uint8Array(16),
  };
  const env = { ...base, kind: "chunk", payload: new Uint8Array(5), chunk };
  equal(validateEnvelope(structuredClone(env)).chunk?.count, 2);
  ok(/index 2 of 2/.test(code(() => validateEnvelope({ ...env, chunk: { ...chunk, index: 2 } }))));
  ok(
    /exceed total 10/.test(
      code(() => validateEnvelope({ ...env, chunk: { ...chunk, offset: 8 } })),
    ),
  );
  ok(
    /^too_large/.test(
      code(() => validateEnvelope({ ...env, chunk: { ...chunk, total: 2 ** 40 } })),
    ),
  );
  ok(
    /chunk digest: expected 16 bytes/.test(
      code(() => validateEnvelope({ ...env, chunk: { ...chunk, digest: new Uint8Array(3) } })),
    ),
  );
  ok(/missing chunk header/.test(code(() => validateEnvelope({ ...env, chunk: undefined }))));
});

Deno.test("tensor() builds and checks tensors", () => {
  deepEqual(tensor(new Int32Array(6), [2, 3]).shape, [2, 3]);
  equal(tensor(new Uint8Array(2)).dtype, "u8");
  throws(() => tensor(new Float32Array(5), [2, 3]), RangeError);
});

Deno.test("parseFrame handles batches, oversized and malformed frames without throwing", () => {
  const one = parseFrame(encode(base));
  equal(one.envelopes.length, 1);
  const batch = parseFrame(encode([base, { ...base, v: 9 }, { ...base, seq: 1 }]));
  equal(batch.envelopes.length, 2);
  equal(batch.errors.length, 1);
  equal(batch.errors[0].code, "bad_version");
  const limits = resolveLimits({ maxFrameBytes: 64 });
  const big = parseFrame(encode({ ...base, payload: "x".repeat(100) }), limits);
  deepEqual([big.envelopes.length, big.errors[0].code], [0, "too_large"]);
  ok(/Frame of \d+ bytes exceeds the limit of 64/.test(big.errors[0].message));
  const bad = parseFrame(new Uint8Array([0x92, 0x01]));
  deepEqual([bad.envelopes.length, bad.errors[0].code], [0, "malformed"]);
  const tooMany = parseFrame(encode(new Array(5).fill(base)), resolveLimits({ maxBatch: 4 }));
  equal(tooMany.errors[0].code, "too_large");
});

Deno.test("resolveLimits fills defaults and rejects nonsense", () => {
  equal(resolveLimits().maxFrameBytes, DEFAULT_LIMITS.maxFrameBytes);
  equal(resolveLimits({ framesPerSecond: 5 }).framesPerSecond, 5);
  throws(() => resolveLimits({ maxFrameBytes: -1 }), RangeError);
  throws(() => resolveLimits({ maxFrameBytes: NaN }), RangeError);
});

Deno.test("validated binary fields are plain Uint8Arrays", () => {
  const env = validateEnvelope(
    {
      ...base,
      kind: "auth",
      to: "",
      payload: { mac: new Uint8Array(32), nonce: new Uint8Array(32) },
    },
  ) as Envelope<{ mac: Uint8Array }>;
  equal(env.payload.mac.constructor, Uint8Array);
});
