import { deepEqual, equal, ok, rejects } from "@std/assert";
import { NothingToResumeError, resumeRun } from "./resume.ts";
import { aggregatorStates } from "../actors/restore.ts";
import { CheckpointStore } from "./store.ts";
import { buildLayout } from "../kernels/layout.ts";
import type { GptConfig } from "../kernels/config.ts";

const CONFIG: GptConfig = { nLayer: 1, nHead: 2, nEmbd: 8, blockSize: 4, vocabSize: 16 };
const N = buildLayout(CONFIG).totalLength;

function params(round: number): Float32Array {
  const x = new Float32Array(N);
  for (const v of buildLayout(CONFIG).views) {
    for (let i = 0; i < v.length; i++) {
      x[v.offset + i] = Math.fround(Math.sin(round + i * 1e-3) * 1e-7);
    }
  }
  return x;
}

Deno.test("resume: the newest verified round comes back bit for bit with momentum, view and cursors", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resume_" });
  try {
    const store = new CheckpointStore(dir);
    for (let r = 1; r <= 3; r++) {
      await store.commit({
        run: "demo",
        round: r,
        config: CONFIG,
        params: params(r),
        momentum: new Float32Array(N).fill(r),
        residual: new Float32Array(N).fill(-r),
        view: { epoch: 10 + r, round: r },
        cursors: {
          "host/run/trainers/0": { seed: 1, shard: { index: 0, count: 4 }, step: 20 * r },
        },
      });
    }
    // Tear the newest round: resume falls back to round 2 and says why.
    const model = `${dir}/rounds/3/model.safetensors`;
    await Deno.truncate(model, 100);
    const skipped: string[] = [];
    const r = await resumeRun(dir, { expect: CONFIG, onSkip: (s) => skipped.push(s.reason) });
    equal(r.round, 2);
    deepEqual(new Uint32Array(r.params.buffer), new Uint32Array(params(2).buffer));
    deepEqual(r.momentum, new Float32Array(N).fill(2));
    deepEqual(r.view, { epoch: 12, round: 2 });
    deepEqual(r.cursors, {
      "host/run/trainers/0": { seed: 1, shard: { index: 0, count: 4 }, step: 40 },
    });
    equal(skipped.length, 1);
    ok(/round 3 is corrupt: .*model\.safetensors has 100 bytes/.test(skipped[0]), skipped[0]);
    equal(r.paramsHash, r.paramsSha256.slice(0, 16));
    const states = aggregatorStates(r, [
      { index: 0, start: 0, length: 256, aggregator: "a" },
      { index: 1, start: 256, length: N - 256, aggregator: "b" },
    ]);
    deepEqual(states.map((s) => [s.round, s.theta.length, s.momentum[0], s.residual[0]]), [
      [2, 256, 2, -2],
      [2, N - 256, 2, -2],
    ]);
    // The CLI prints the same round and hash.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./resume.ts", import.meta.url).pathname, dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const line = JSON.parse(new TextDecoder().decode(out.stdout));
    deepEqual([line.round, line.params_hash], [2, r.paramsHash]);
    ok(/skipping checkpoint round 3/.test(new TextDecoder().decode(out.stderr)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resume: an empty or fully corrupt run directory is a named error; another shape is refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resume_" });
  try {
    await rejects(
      resumeRun(dir),
      (e: unknown) =>
        e instanceof NothingToResumeError && /holds no committed round/.test(e.message),
    );
    const store = new CheckpointStore(dir);
    await store.commit({
      run: "d",
      round: 1,
      config: CONFIG,
      params: params(1),
      momentum: new Float32Array(N),
    });
    await rejects(
      resumeRun(dir, { expect: { ...CONFIG, nLayer: 2 } }),
      /does not match the model config/,
    );
    await Deno.writeTextFile(`${dir}/rounds/1/manifest.json`, "{");
    await rejects(
      resumeRun(dir, { onSkip: () => {} }),
      (e: unknown) =>
        e instanceof NothingToResumeError && /no round of .* verifies \(tried 1\)/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
