import assert from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import {
  decodeDispatch,
  encodeDispatch,
  feedbackDispatches,
  quantizeInt4,
  selectTopk,
} from "./lowbit.ts";
import {
  codedSize,
  decodeRef,
  encodeRef,
  feedbackEncodeRef,
  int4At,
  quantizeInt4Ref,
  selectTopkRef,
} from "./lowbit_reference.ts";
import { type ExchangeFormat, parseExchange, topkPerBlock } from "./exchange_format.ts";
import { CHUNK_ALIGN } from "./limits.ts";
import { noGpuErrors, randomF32, sameBits } from "./_testing.ts";

/** Values that stress the codes: zeros, exact ties, repeated magnitudes, a denormal, a tiny block. */
function hardValues(n: number, seed: number): Float32Array {
  const x = randomF32(n, seed, -3, 3);
  for (let i = 0; i < n; i += 7) x[i] = 0;
  if (n >= 128) {
    // Block 1 of 64: absmax 7, scale exactly 1, so k + 0.5 values are true ties.
    for (let i = 64; i < 100; i++) x[i] = ((i % 14) - 7) + 0.5;
    x[64] = 7;
    x[65] = -7;
  }
  if (n >= 512) {
    // Equal magnitudes across the top-k threshold: ties go to the lower offset.
    for (let i = 256; i < 300; i++) x[i] = i % 2 ? -1.25 : 1.25;
    x[400] = 1e-39; // a denormal
  }
  // Below 2^-100: scale 0.
  if (n >= 1024) { for (let i = 768; i < 1024; i++) x[i] = 1e-31; }
  // A non-finite block: scale NaN, codes 0.
  if (n >= 1030) x[1025] = NaN;
  return x;
}

async function runEncode(gpu: Gpu, f: ExchangeFormat, x: Float32Array) {
  const n = x.length;
  const size = codedSize(n, f);
  const codes = { buffer: gpu.storage(size.words), length: size.words };
  const scales = { buffer: gpu.storage(size.scales), length: size.scales };
  const out = { buffer: gpu.storage(n), length: n };
  gpu.run([
    encodeDispatch(gpu, f, { x: { buffer: gpu.storage(x), length: n }, codes, scales }, n),
    decodeDispatch(gpu, f, { codes, scales, out }, n),
  ]);
  return {
    codes: new Uint32Array((await gpu.readBytes(codes.buffer, size.words * 4)).buffer),
    scales: await gpu.read(scales.buffer, size.scales),
    decoded: await gpu.read(out.buffer, n),
  };
}

Deno.test("int4 and top-k kernels are bit-exact with their TypeScript twins", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      const cases: [string, ExchangeFormat, number][] = [
        ["int4", parseExchange("int4"), 1030],
        ["int4, block 8, short last block", { kind: "int4", block: 8 }, 13],
        ["int4, many blocks", parseExchange("int4"), 70_001],
        ["top-5%", parseExchange("topk:0.05"), 1030],
        ["top-50%, block 4", { kind: "topk", block: 4, fraction: 0.5 }, 13],
        ["top-1%, many blocks", parseExchange("topk:0.01"), 70_001],
        ["top-100%", parseExchange("topk:1"), 600],
      ];
      for (const [name, f, n] of cases) {
        await t.step(`${name}, n=${n}`, async () => {
          const x = hardValues(n, n);
          const got = await runEncode(gpu, f, x);
          const want = encodeRef(f, x);
          assert.deepEqual(got.codes, want.codes, "codes");
          assert.ok(sameBits(got.scales, want.scales), "scales");
          assert.ok(sameBits(got.decoded, decodeRef(f, want, n)), "decoded");
        });
      }
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("int4: known codes, ties away from zero, two per byte low nibble first", () => {
  const x = new Float32Array([7, -0.5, 0.5, 1.5, -2.5, 0, 3, -7, 100, 1e-3]);
  const q = new Uint32Array(2);
  const scales = new Float32Array(2);
  quantizeInt4Ref({ x, q, scales }, { n: 10, block: 8 });
  assert.equal(scales[0], 1, "scale is exactly 1, so the .5 values are true ties");
  assert.deepEqual(Array.from({ length: 8 }, (_, i) => int4At(q, i)), [7, -1, 1, 2, -3, 0, 3, -7]);
  assert.equal(new Uint8Array(q.buffer)[0], 0xf7, "element 0 low nibble, element 1 high");
  // Block 2: 1e-3 is 0.00007 of the block's step: it rounds to 0 (what error feedback keeps).
  assert.deepEqual([int4At(q, 8), int4At(q, 9)], [7, 0]);
});

Deno.test("top-k: the largest magnitudes, ties to the lower offset, offsets increasing", () => {
  const f = { kind: "topk" as const, block: 8, fraction: 0.5 };
  const x = new Float32Array([1, -4, 2, 2, -2, 0, 3, 0.5, /* short block: */ 0, -1, 1]);
  const slots = new Uint32Array(4 + 2);
  const scales = new Float32Array(2);
  selectTopkRef({ x, slots, scales }, { n: 11, ...f });
  const offsets = Array.from(slots, (s) => s & 0xff);
  // Block 0 keeps -4, 3 and the first two of the three |2|s; block 1 (3 values) keeps 2:
  // ceil(0.5 × 3), the tie of -1 and 1 to the lower offset, then the other.
  assert.deepEqual(offsets, [1, 2, 3, 6, 1, 2]);
  assert.equal((slots[0] << 16) >> 24, -127, "the block's largest value is the int8 extreme");
  assert.equal(topkPerBlock(0.05, 256), 13);
  const sent = decodeRef(f, { codes: slots, scales }, 11);
  assert.equal(sent[4], 0, "the third |2| is not sent");
});

Deno.test("error feedback on the GPU keeps the twin's residual round after round", async () => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      for (const name of ["int4", "topk:0.05"]) {
        const f = parseExchange(name);
        const n = 3 * CHUNK_ALIGN + 1000;
        const run = async (chunk?: number) => {
          const size = codedSize(n, f);
          const b = {
            global: gpu.storage(n),
            local: gpu.storage(n),
            delta: gpu.storage(n),
            sent: gpu.storage(n),
            residual: gpu.storage(n),
            codes: gpu.storage(size.words),
            scales: gpu.storage(size.scales),
          };
          const ds = feedbackDispatches(gpu, f, b, { n, chunk });
          const rounds = [];
          for (let r = 0; r < 3; r++) {
            gpu.write(b.global, randomF32(n, 10 + r, -1, 1));
            gpu.write(b.local, randomF32(n, 20 + r, -1, 1));
            gpu.run(ds);
            rounds.push({
              codes: new Uint32Array((await gpu.readBytes(b.codes, size.words * 4)).buffer),
              scales: await gpu.read(b.scales, size.scales),
              residual: await gpu.read(b.residual, n),
              delta: await gpu.read(b.delta, n),
            });
          }
          for (const x of Object.values(b)) x.destroy();
          return { dispatches: ds.length, rounds };
        };
        const whole = await run();
        const cut = await run(CHUNK_ALIGN);
        assert.equal(whole.dispatches, 6);
        assert.equal(cut.dispatches, 24);
        const residual = new Float32Array(n);
        for (let r = 0; r < 3; r++) {
          const g = randomF32(n, 10 + r, -1, 1);
          const l = randomF32(n, 20 + r, -1, 1);
          const delta = g.map((v, i) => Math.fround(v - l[i]));
          const want = feedbackEncodeRef(f, delta, residual);
          for (const [label, got] of [["whole", whole], ["cut", cut]] as const) {
            const at = `${name} ${label} round ${r}`;
            assert.deepEqual(got.rounds[r].codes, want.codes, `${at}: codes`);
            assert.ok(sameBits(got.rounds[r].scales, want.scales), `${at}: scales`);
            assert.ok(sameBits(got.rounds[r].residual, residual), `${at}: residual`);
            // The plain Δ is left in `delta` for an overlapped merge.
            assert.ok(sameBits(got.rounds[r].delta, delta), `${at}: delta`);
          }
        }
        // What was not sent is kept: the residual is not zero, and x = sent + residual.
        assert.ok(residual.some((v) => v !== 0), `${name}: a residual is kept`);
      }
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("low-bit kernels refuse bad shapes by name", async () => {
  const gpu = await acquireGpu();
  try {
    const x = { buffer: gpu.storage(64), length: 64 };
    assert.throws(
      () => quantizeInt4(gpu, { x, q: x, scales: x }, { n: 64, block: 12 }),
      /quantizeInt4: block must be a multiple of 8, got 12/,
    );
    assert.throws(
      () => selectTopk(gpu, { x, slots: x, scales: x }, { n: 64, block: 512, fraction: 0.1 }),
      /selectTopk: block must be at most 256/,
    );
    assert.throws(
      () => selectTopk(gpu, { x, slots: x, scales: x }, { n: 64, block: 64, fraction: 0 }),
      /selectTopk: fraction must be in \(0, 1\]/,
    );
    assert.throws(
      () => feedbackDispatches(gpu, parseExchange("int4"), {} as never, { n: 64, chunk: 1000 }),
      /chunk 1000 is not a multiple of 64 blocks of 64/,
    );
  } finally {
    gpu.destroy();
  }
});
