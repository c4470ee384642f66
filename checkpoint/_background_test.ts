import { deepEqual, equal, ok, throws } from "@std/assert";
import { CpuPacer, DEFAULT_DUTY, parseCpuList } from "./_background.ts";
import { prepareRound } from "./store.ts";
import { buildLayout } from "../kernels/layout.ts";

/** Fake readings: the thread's CPU time (ns) and its cores' [others' busy, all] ticks. */
function fakeProc() {
  const t = { cpu: 0, busy: 0, total: 0 };
  return {
    t,
    cpuTime: () => t.cpu,
    coreTicks: (): [number, number] => [t.busy, t.total],
  };
}

Deno.test("CpuPacer: no pause while other threads leave the cores mostly idle", () => {
  const p = fakeProc();
  const pacer = new CpuPacer({ duty: 0.1, sliceMs: 0, windowMs: 0, ...p });
  for (let i = 0; i < 10; i++) {
    p.t.cpu += 2e6;
    p.t.total += 20;
    p.t.busy += 12; // 60% busy: a joiner receiving beside this thread
    equal(pacer.due(), 0);
  }
  equal(pacer.sleptMs, 0);
});

Deno.test("CpuPacer: while other threads keep the cores busy, pauses hold it to its duty", () => {
  const p = fakeProc();
  const pacer = new CpuPacer({ duty: 0.1, sliceMs: 0, windowMs: 0, ...p });
  const pauses: number[] = [];
  for (let i = 0; i < 4; i++) {
    p.t.cpu += 2e6; // 2 ms of work per slice
    p.t.total += i === 0 ? 2 : 20; // the first window is too short to judge (< 4 ticks)
    p.t.busy += i === 0 ? 2 : 18; // 90% busy: a trainer on llvmpipe
    pauses.push(pacer.due());
  }
  // 2 ms of work at a 10% duty: 18 ms of pause.
  deepEqual(pauses.map((x) => Math.round(x)), [0, 18, 18, 18]);
  // The trainers stop: the next window ends the pauses.
  p.t.cpu += 2e6;
  p.t.total += 20;
  equal(pacer.due(), 0);
  equal(Math.round(pacer.sleptMs), 54);
});

Deno.test("CpuPacer: never pauses without /proc readings, and checks its duty", () => {
  const pacer = new CpuPacer({
    sliceMs: 0,
    windowMs: 0,
    cpuTime: () => undefined,
    coreTicks: () => undefined,
  });
  equal(pacer.due(), 0);
  equal(new CpuPacer({ cpuTime: () => 0, coreTicks: () => [0, 0] }).duty, DEFAULT_DUTY);
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

Deno.test("without ffi, sys and /proc permissions: normal priority and no pauses, no error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const script = `${dir}/probe.ts`;
    await Deno.writeTextFile(
      script,
      `import { CpuPacer, lowerThisThread } from ${
        JSON.stringify(import.meta.resolve("./_background.ts"))
      };
      const pacer = new CpuPacer({ sliceMs: 0, windowMs: 0 });
      let x = 0;
      for (let i = 0; i < 1e6; i++) x += i;
      console.log(JSON.stringify({ got: lowerThisThread(), due: pacer.due(), x: x > 0 }));`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--no-config", script],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    equal(out.code, 0, stderr);
    deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), { got: "none", due: 0, x: true });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseCpuList: ranges and single CPUs, and a bad list named", () => {
  deepEqual([...parseCpuList("0-3,8,10-11\n")], [0, 1, 2, 3, 8, 10, 11]);
  deepEqual([...parseCpuList(" 1")], [1]);
  for (const bad of ["", "a", "3-1", "0-", "1,,2"]) {
    throws(() => parseCpuList(bad), RangeError);
  }
});
