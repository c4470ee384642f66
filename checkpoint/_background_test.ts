import { deepEqual, equal, ok, throws } from "@std/assert";
import { CpuPacer, DEFAULT_DUTY } from "./_background.ts";
import { prepareRound } from "./store.ts";
import { buildLayout } from "../kernels/layout.ts";

/** A fake clock of the thread's [run, wait] ns. */
function fakeSched() {
  const t = { run: 0, wait: 0 };
  return { t, read: (): [number, number] => [t.run, t.wait] };
}

Deno.test("CpuPacer: no pause while the thread gets a CPU when it wants one", () => {
  const s = fakeSched();
  const pacer = new CpuPacer({ duty: 0.1, sliceMs: 0, windowMs: 5, sched: s.read });
  for (let i = 0; i < 10; i++) {
    s.t.run += 2e6;
    s.t.wait += 0.1e6;
    equal(pacer.due(), 0);
  }
  equal(pacer.sleptMs, 0);
});

Deno.test("CpuPacer: while the thread waits for busy cores, pauses hold it to its duty", () => {
  const s = fakeSched();
  const pacer = new CpuPacer({ duty: 0.1, sliceMs: 0, windowMs: 5, sched: s.read });
  const pauses: number[] = [];
  for (let i = 0; i < 6; i++) {
    s.t.run += 2e6; // 2 ms of work per slice
    s.t.wait += 3e6; // waited 1.5x as long: others keep the cores
    pauses.push(pacer.due());
  }
  // The first window (5 ms of run) closes at the third slice; from there, 2 ms work → 18 ms pause.
  deepEqual(pauses.map((x) => Math.round(x)), [0, 0, 18, 18, 18, 18]);
  // The machine frees up: the next full window ends the pauses.
  const after: number[] = [];
  for (let i = 0; i < 4; i++) {
    s.t.run += 2e6;
    after.push(pacer.due());
  }
  equal(after.at(-1), 0);
});

Deno.test("CpuPacer: never pauses without scheduling statistics, and checks its duty", () => {
  const pacer = new CpuPacer({ sliceMs: 0, sched: () => undefined });
  equal(pacer.due(), 0);
  equal(new CpuPacer({ sched: () => [0, 0] }).duty, DEFAULT_DUTY);
  throws(() => new CpuPacer({ duty: 0 }), RangeError);
  throws(() => new CpuPacer({ duty: 1.5 }), RangeError);
  throws(() => new CpuPacer({ duty: NaN }), RangeError);
});

Deno.test({
  name: "lowerThisThread: SCHED_IDLE for the calling thread only",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const policy = () =>
      Deno.readTextFileSync("/proc/thread-self/sched").split("\n").find((l) =>
        l.startsWith("policy")
      )?.split(":")[1].trim();
    const code = `import { lowerThisThread } from ${
      JSON.stringify(import.meta.resolve("./_background.ts"))
    };
      const got = lowerThisThread();
      const line = Deno.readTextFileSync("/proc/thread-self/sched").split("\\n")
        .find((l) => l.startsWith("policy"));
      postMessage({ got, policy: line?.split(":")[1].trim() });`;
    const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
    const w = new Worker(url, { type: "module" });
    try {
      const r = await new Promise<{ got: string; policy: string }>((resolve, reject) => {
        w.onmessage = (e) => resolve(e.data);
        w.onerror = (e) => reject(new Error(e.message));
      });
      equal(r.got, "idle");
      equal(r.policy, "5"); // SCHED_IDLE
      equal(policy(), "0"); // this thread keeps SCHED_OTHER
    } finally {
      w.terminate();
      URL.revokeObjectURL(url);
    }
  },
});

Deno.test("prepareRound: paced, the same bytes and hashes; the pace hook runs per MiB", async () => {
  const config = { nLayer: 2, nHead: 2, nEmbd: 128, blockSize: 16, vocabSize: 256 };
  const n = buildLayout(config).totalLength;
  const params = new Float32Array(n).map((_, i) => Math.sin(i) * 0.1);
  const momentum = new Float32Array(n).map((_, i) => Math.cos(i) * 0.01);
  const created = new Date(0);
  const state = { run: "r", round: 7, config, params, momentum };
  const plain = await prepareRound(state, { created });
  let calls = 0;
  const paced = await prepareRound(state, { created, pace: () => calls++ });
  deepEqual(paced.manifest, plain.manifest);
  for (const [name, bytes] of plain.files) deepEqual(paced.files.get(name), bytes, name);
  // Each of the two data files (~n*4 bytes) is checked, copied and hashed in 1 MiB pieces.
  ok(calls >= 2 * 3 * Math.floor((n * 4) / (1 << 20)), `pace ran ${calls} times`);
});
