/**
 * The `memory` bench suite (`deno task bench --only memory`): the peak
 * resident memory of a run's two kinds of process, measured on a real
 * networked run, and what each grows by per parameter of the model.
 *
 * For each of two model widths it runs `deno task node --host` (the
 * tracker, the aggregator, two checkpoint keepers and the final
 * evaluation: no trainer) and one `deno task node --join` trainer as
 * separate processes over loopback WebSockets, for 4 rounds of 2 inner
 * steps, and reads each process's peak resident set (`VmHWM` in
 * `/proc/<pid>/status`, Linux). The figures per parameter are the slopes
 * between the two widths, so what a process costs whatever the model (the
 * runtime, its code, the corpus) drops out. On an adapter whose memory is
 * the host's (llvmpipe), the joiner's figure includes the model on the
 * "GPU": its parameters, gradients and AdamW moments.
 *
 * @module
 */
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";

/** A model width the suite runs. */
interface Shape {
  nLayer: number;
  nEmbd: number;
  nHead: number;
}

const FULL: Shape[] = [{ nLayer: 4, nEmbd: 256, nHead: 4 }, { nLayer: 8, nEmbd: 512, nHead: 8 }];
const QUICK: Shape[] = [{ nLayer: 2, nEmbd: 64, nHead: 4 }, { nLayer: 4, nEmbd: 256, nHead: 4 }];

const NODE_MAIN = new URL("./node_main.ts", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;

/** Peak resident set of a live process, bytes (`VmHWM`); undefined once it is gone. */
function peakRss(pid: number): number | undefined {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = /^VmHWM:\s+(\d+) kB/m.exec(status);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** A port free on loopback now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A process of the run, its peak resident set followed until it exits. */
class Watched {
  peak = 0;
  readonly child: Deno.ChildProcess;
  readonly #timer: ReturnType<typeof setInterval>;

  constructor(args: string[]) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", NODE_MAIN, ...args],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#timer = setInterval(() => {
      this.peak = Math.max(this.peak, peakRss(this.child.pid) ?? 0);
    }, 50);
  }

  /** Its output once it exited; throws naming `what` when it failed. */
  async done(what: string): Promise<string> {
    const out = await this.child.output();
    clearInterval(this.#timer);
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("\n");
      throw new Error(`Memory bench: the ${what} exited with code ${out.code}:\n${err}`);
    }
    return new TextDecoder().decode(out.stdout);
  }
}

async function waitForPort(port: number, host: Watched, timeoutMs = 120_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      if (Date.now() > end) {
        try {
          host.child.kill();
        } catch { /* gone */ }
        throw new Error(
          `Memory bench: the host did not listen on port ${port} within ${timeoutMs} ms`,
        );
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** One host and one joiner at `shape`: both peaks and the model's parameter count. */
async function measure(shape: Shape): Promise<{ params: number; host: number; joiner: number }> {
  const dir = await Deno.makeTempDir({ prefix: "bench_memory_" });
  const port = freePort();
  const run = [
    "--rounds",
    "4",
    "--inner-steps",
    "2",
    "--block-size",
    "32",
    "--batch",
    "1",
    "--eval-every",
    "0",
    "--sample-bytes",
    "0",
    "--n-layer",
    String(shape.nLayer),
    "--n-embd",
    String(shape.nEmbd),
    "--n-head",
    String(shape.nHead),
  ]; // deno-fmt-ignore
  try {
    const host = new Watched([
      "--host", `127.0.0.1:${port}`, "--secret", "bench-memory", "--trainers", "0",
      "--run-dir", `${dir}/host`, "--json", ...run,
    ]); // deno-fmt-ignore
    await waitForPort(port, host);
    const joiner = new Watched([
      "--join", `ws://127.0.0.1:${port}`, "--secret", "bench-memory", "--run-dir", `${dir}/joiner`,
    ]); // deno-fmt-ignore
    const [out] = await Promise.all([host.done("host"), joiner.done("joiner")]);
    const done = out.trim().split("\n").map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return undefined;
      }
    }).find((e) => e?.event === "done");
    if (!done || !Number.isSafeInteger(done.params)) {
      throw new Error("Memory bench: the host printed no summary with the parameter count");
    }
    return { params: done.params, host: host.peak, joiner: joiner.peak };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The suite. */
export async function* bench(options: BenchOptions): AsyncGenerator<BenchRecord> {
  if (peakRss(Deno.pid) === undefined) {
    throw new Error("Memory bench: needs /proc/<pid>/status (Linux) to read peak resident memory");
  }
  const shapes = options.quick ? QUICK : FULL;
  const runs = [];
  for (const shape of shapes) {
    const m = await measure(shape);
    runs.push(m);
    const at = { params: m.params, shape: `L${shape.nLayer} C${shape.nEmbd} H${shape.nHead}` };
    yield { name: "memory_host_peak_mb", value: m.host / 2 ** 20, unit: "MiB", ...at };
    yield { name: "memory_joiner_peak_mb", value: m.joiner / 2 ** 20, unit: "MiB", ...at };
  }
  const [a, b] = runs;
  const per = (x: number, y: number) => (y - x) / (b.params - a.params);
  const between = `${a.params} and ${b.params} parameters`;
  yield {
    name: "memory_host_bytes_per_param",
    value: per(a.host, b.host),
    unit: "B/param",
    between,
    roles: "tracker, aggregator, 2 keepers, final evaluation",
  };
  yield {
    name: "memory_joiner_bytes_per_param",
    value: per(a.joiner, b.joiner),
    unit: "B/param",
    between,
    roles: "one trainer (on llvmpipe: its device memory too)",
  };
}
