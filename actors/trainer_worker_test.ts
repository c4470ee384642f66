/**
 * The trainer's compute Worker (WebGPU in a Worker thread): with fragments,
 * an int4 or top-k trainer moves its error-feedback residual on the ranges
 * of the round only.
 */
import { deepEqual, equal, notDeepEqual, notEqual, ok } from "@std/assert";
import { sampleText, textSample } from "../kernels/sample.ts";
import { acquireGpu } from "../kernels/device.ts";
import { createModel } from "../kernels/model.ts";
import { TrainerWorkerClient } from "./trainer_worker_client.ts";
import type { DeltaReply } from "./trainer_worker.ts";
import { engineSettings, paramLength } from "./run_settings.ts";
import { type Encoded, sliceEncoded } from "./exchange.ts";
import { parseExchange } from "../kernels/exchange_format.ts";
import { DEFAULT_BLOCK } from "./run_protocol.ts";

Deno.test({
  name: "worker: with fragments, int4 and top-k residuals move on the round's piece only",
  async fn() {
    for (const exchange of ["int4", "topk:0.05"]) {
      const f = parseExchange(exchange);
      const worker = new TrainerWorkerClient({ onError: (m) => console.error(m) });
      try {
        const settings = { run: "w", config: "tiny", rounds: 4, innerSteps: 2, exchange };
        const init = await worker.call({
          op: "init",
          ...engineSettings({ ...settings, outer: { lr: 1, momentum: 0 } }),
          dataShard: { index: 0, count: 16 },
        });
        const theta = init.params as Float32Array;
        const n = paramLength("tiny");
        // Two fragments of one shard: the first and the second half, on whole blocks.
        const half = Math.ceil(n / 2 / DEFAULT_BLOCK) * DEFAULT_BLOCK;
        const first = { lo: 0, hi: half };
        const second = { lo: half, hi: n };
        await worker.call({ op: "round", round: 0, theta, keep: true, steps: 2 });
        const delta = async (ranges: { lo: number; hi: number }[]) =>
          (await worker.call({ op: "delta", round: 0, ranges })) as unknown as DeltaReply;
        const piece = (d: DeltaReply, r: { lo: number; hi: number }) =>
          sliceEncoded(f, d as Encoded, { start: r.lo, length: r.hi - r.lo });
        // Round 0 sends the first half: its residual takes what the codes left out.
        const sent = await delta([first]);
        // The same Δ again (no step between) for the second half: its residual
        // is still zero, so its codes are those of Δ alone, as in the first call.
        const next = await delta([second]);
        deepEqual(piece(next, second), piece(sent, second), exchange);
        // The first half's residual did move: Δ plus it codes differently.
        notDeepEqual(piece(next, first), piece(sent, first), exchange);
      } finally {
        await worker.retire();
      }
    }
  },
});

Deno.test({
  name: "worker: an evaluation's text sample is written by θ, not by the running parameters",
  async fn() {
    const settings = { run: "w", config: "tiny", rounds: 4, innerSteps: 3 };
    const engine = engineSettings({ ...settings, outer: { lr: 1, momentum: 0 } });
    const sample = textSample({ prompt: "The ", tokens: 40, temperature: 0 });
    const worker = new TrainerWorkerClient({ onError: (m) => console.error(m) });
    let texts: string[];
    let theta: Float32Array;
    try {
      const init = await worker.call({ op: "init", ...engine, dataShard: { index: 0, count: 16 } });
      theta = init.params as Float32Array;
      // The running parameters move away from θ (kept: no pseudo-gradient taken).
      await worker.call({ op: "round", round: 0, theta, keep: true, steps: 3 });
      const ask = async () =>
        (await worker.call({ op: "eval", theta, maxWindows: 2, sample })) as unknown as {
          sample?: string;
          ms: number;
          sampleMs: number;
          forwardMs: number;
        };
      const first = await ask();
      texts = [first.sample!, (await ask()).sample!];
      // What the sample took, within the whole answer's time (whoever asks paces samples by it).
      ok(first.sampleMs > 0 && first.sampleMs <= first.ms, JSON.stringify(first));
      // And what one forward pass took, which paces the first sample before any is taken.
      ok(first.forwardMs > 0 && first.forwardMs < first.ms - first.sampleMs, JSON.stringify(first));
      const plain = await worker.call({ op: "eval", theta, maxWindows: 2 });
      equal(plain.sample, undefined);
    } finally {
      await worker.retire();
    }
    // The same text twice (the running parameters were put back in between),
    // and the text a model of the same shape writes from θ.
    equal(texts[1], texts[0]);
    const gpu = await acquireGpu();
    try {
      const model = await createModel(gpu, engine.config, { batch: engine.batch });
      model.setParams(theta);
      equal(texts[0], await sampleText(model, sample));
      equal(new TextEncoder().encode(texts[0]).length >= 40, true);
      // From other parameters the text differs: the sample does say which θ wrote it.
      const moved = theta.map((x, i) => x + (i % 7 === 0 ? 0.5 : 0));
      model.setParams(moved);
      notEqual(await sampleText(model, sample), texts[0]);
      model.dispose();
    } finally {
      gpu.destroy();
    }
  },
});
