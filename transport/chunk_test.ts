import { deepEqual, equal, ok, throws } from "@std/assert";
import {
  type AttachmentRef,
  digest128,
  extractAttachments,
  gather,
  layoutAttachments,
  Reassembler,
  restoreAttachments,
  rootDigest,
} from "./chunk.ts";
import type { ChunkHeader } from "./envelope.ts";
import { FrameError } from "./errors.ts";

function split(
  whole: Uint8Array,
  size: number,
  xid = 1,
): { header: ChunkHeader; data: Uint8Array }[] {
  const count = Math.ceil(whole.length / size);
  const digests: Uint8Array[] = [];
  const out = [];
  for (let i = 0; i < count; i++) {
    const data = whole.slice(i * size, (i + 1) * size);
    digests.push(digest128(data));
    out.push({
      header: {
        xid,
        index: i,
        count,
        total: whole.length,
        offset: i * size,
        head: whole.length,
        digest: digests[i],
      } as ChunkHeader,
      data,
    });
  }
  out[count - 1].header.root = rootDigest(digests);
  return out;
}

function pattern(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) & 255);
}

Deno.test("reassembly puts out-of-order chunks back together", () => {
  const whole = pattern(1000);
  const chunks = split(whole, 96);
  const r = new Reassembler({ maxMessageBytes: 1 << 20, timeoutMs: 1000 });
  const order = [5, 10, 0, 3, 1, 9, 2, 8, 4, 7, 6];
  let result;
  for (const i of order) result = r.add(chunks[i].header, chunks[i].data);
  deepEqual(result?.bytes, whole);
  equal(r.pending, 0);
  r.close();
});

Deno.test("reassembly ignores an exact duplicate chunk", () => {
  const whole = pattern(300);
  const chunks = split(whole, 100);
  const r = new Reassembler({ maxMessageBytes: 1 << 20, timeoutMs: 1000 });
  equal(r.add(chunks[0].header, chunks[0].data), undefined);
  equal(r.add(chunks[0].header, chunks[0].data), undefined);
  equal(r.add(chunks[1].header, chunks[1].data), undefined);
  deepEqual(r.add(chunks[2].header, chunks[2].data)?.bytes, whole);
  r.close();
});

Deno.test("reassembly rejects a corrupted chunk with a clear error and drops the transfer", () => {
  const chunks = split(pattern(300), 100);
  const r = new Reassembler({ maxMessageBytes: 1 << 20, timeoutMs: 1000 });
  r.add(chunks[0].header, chunks[0].data);
  const bad = chunks[1].data.slice();
  bad[17] ^= 0x10;
  throws(
    () => r.add(chunks[1].header, bad),
    (e: unknown) =>
      e instanceof FrameError && e.code === "chunk_integrity" &&
      /Chunk 1 of message 1 failed its digest check/.test(e.message),
  );
  equal(r.pending, 0);
  // Later chunks of the failed transfer do not resurrect it.
  equal(r.add(chunks[2].header, chunks[2].data), undefined);
  equal(r.pending, 0);
  r.close();
});

Deno.test("reassembly rejects a forged root digest", () => {
  const chunks = split(pattern(200), 100);
  chunks[1].header.root = new Uint8Array(16);
  const r = new Reassembler({ maxMessageBytes: 1 << 20, timeoutMs: 1000 });
  r.add(chunks[0].header, chunks[0].data);
  throws(() => r.add(chunks[1].header, chunks[1].data), /whole-message digest check/);
  r.close();
});

Deno.test("reassembly reports a missing chunk when the transfer times out", async () => {
  const chunks = split(pattern(300), 100);
  const { promise, resolve } = Promise.withResolvers<FrameError>();
  const r = new Reassembler({ maxMessageBytes: 1 << 20, timeoutMs: 30, onExpired: resolve });
  r.add(chunks[0].header, chunks[0].data);
  r.add(chunks[2].header, chunks[2].data);
  const err = await promise;
  equal(err.code, "chunk_incomplete");
  equal(err.message, "Chunked message 1 incomplete: 2 of 3 chunks after 30 ms");
  equal(r.pending, 0);
  r.close();
});

Deno.test("reassembly refuses transfers over the byte limit and inconsistent headers", () => {
  const r = new Reassembler({ maxMessageBytes: 100, timeoutMs: 1000 });
  const chunks = split(pattern(300), 100);
  throws(
    () => r.add(chunks[0].header, chunks[0].data),
    (e: unknown) => e instanceof FrameError && e.code === "too_large",
  );
  const r2 = new Reassembler({ maxMessageBytes: 1000, timeoutMs: 1000 });
  r2.add(chunks[0].header, chunks[0].data);
  throws(
    () => r2.add({ ...chunks[1].header, total: 301 }, chunks[1].data),
    /disagrees with earlier chunks/,
  );
  r.close();
  r2.close();
});

Deno.test("digest128 detects every single-bit flip in a buffer", () => {
  const data = pattern(64);
  const d = digest128(data);
  for (let bit = 0; bit < data.length * 8; bit++) {
    const copy = data.slice();
    copy[bit >> 3] ^= 1 << (bit & 7);
    ok(!digest128(copy).every((v, i) => v === d[i]), `bit ${bit} undetected`);
  }
  // Unaligned views hash like their bytes.
  const host = new Uint8Array(65);
  host.set(data, 1);
  deepEqual(digest128(host.subarray(1)), d);
});

Deno.test("attachments come out of a payload and back as aligned typed-array views", () => {
  const w = new Float32Array([1, 2, 3]);
  const ids = new Int8Array([-1, 5]);
  const payload = { step: 7, w, parts: [ids, "x"] };
  const ex = extractAttachments(payload, 1)!;
  equal(ex.arrays.length, 2);
  equal(payload.w, w, "caller's object is unchanged");
  const { refs, end } = layoutAttachments(ex.arrays);
  deepEqual(refs, [["Float32Array", 0, 12], ["Int8Array", 16, 2]] as AttachmentRef[]);
  equal(end, 32);
  const bytes = new Uint8Array(end);
  gather(
    ex.arrays.map((a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).flatMap((seg, i) =>
      i === 0 ? [seg, new Uint8Array(4)] : [seg]
    ),
    0,
    bytes.subarray(0, 18),
  );
  const back = restoreAttachments(structuredClone(ex.payload), refs, bytes, end) as typeof payload;
  deepEqual(back.w, w);
  deepEqual(back.parts[0], ids);
  equal(back.step, 7);
  throws(
    () => restoreAttachments(structuredClone(ex.payload), [["Float32Array", 0, 64]], bytes, end),
    /outside/,
  );
  throws(
    () => restoreAttachments(structuredClone(ex.payload), [["Function", 0, 4]], bytes, end),
    /unknown type/,
  );
  equal(extractAttachments({ small: new Uint8Array(3) }, 16), undefined);
});

Deno.test("a one-chunk transfer is checked and kept in place when aligned", () => {
  const r = new Reassembler({ maxMessageBytes: 1 << 20, timeoutMs: 1000 });
  try {
    const frame = new Uint8Array(16 + 64).map((_, i) => i);
    const data = frame.subarray(16);
    const [{ header }] = split(data.slice(), 64, 7);
    const done = r.add(header, data)!;
    equal(done.bytes.buffer, frame.buffer, "a view over the frame, not a copy");
    equal(done.bytes.byteOffset, 16);
    equal(r.add(header, data), undefined, "a second copy of the frame is ignored");
    equal(r.pending, 0);
    // Misaligned bytes are copied, so that typed arrays can view them.
    const odd = new Uint8Array(3 + 64).subarray(3);
    odd.set(data);
    const [{ header: h2 }] = split(odd.slice(), 64, 8);
    const copied = r.add(h2, odd)!;
    ok(copied.bytes.buffer !== odd.buffer);
    equal(copied.bytes.byteOffset % 16, 0);
    deepEqual(copied.bytes, odd.slice());
    // A corrupted one-chunk transfer fails its digest.
    const [{ header: h3, data: d3 }] = split(data.slice(), 64, 9);
    d3[5] ^= 1;
    throws(
      () => r.add(h3, d3),
      (e: unknown) => e instanceof FrameError && /digest/.test(e.message),
    );
    equal(r.pending, 0);
  } finally {
    r.close();
  }
});
