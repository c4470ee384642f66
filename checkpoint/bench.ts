/**
 * The `checkpoint` bench suite (`deno task bench --only checkpoint`): what
 * live checkpointing costs the run.
 *
 * Layout as in a host: a checkpoint keeper on this process's event loop
 * (behind the real actor transport on loopback), a trainer's compute Worker
 * (actors/trainer_worker.ts, the default "small" config) in this process, and
 * a joiner in its own process (checkpoint/_bench_joiner.ts). The keeper holds
 * a round of a larger synthetic GPT-2 (tens of MB) so that transfers and
 * writes take measurable time.
 *
 * Two layouts, each over loopback and over a shaped link (`_link`): every
 * process on all of the machine's cores (no layout suffix); and
 * `split` (`_split`), two machines on one box: a child process pinned to
 * CPU 0 holds the trainer (one llvmpipe thread) and the keeper, the joiner
 * runs pinned to CPU 1 at its normal priority (`--no-split` skips it).
 *
 * - `inner_step_ms` per load: the trainer's inner-step time while nothing
 *   else runs (`idle`), while the joiner fetches the round from the keeper
 *   again and again (`join_fetch`), while the keeper writes round after round
 *   (`keeper_write`, on its writer thread as in a run), and while the joiner
 *   takes the same bytes from a bare WebSocket (`bare_ws`, served from this
 *   process's event loop at normal priority: what an unmanaged transfer
 *   costs). Every step of a loaded block overlaps the load: the worst case.
 *   The joiner process runs at SCHED_IDLE here, standing in for a joiner on
 *   another machine (on one 2-core box, its own decoding and hashing would
 *   otherwise be counted against the host's trainers; it still costs them
 *   some, see _background.ts).
 * - `inner_step_ratio_join_fetch`, `inner_step_ratio_keeper_write`,
 *   `inner_step_ratio_bare_ws`: each loaded block runs between two idle
 *   blocks and is divided by their mean; the median over blocks (target ≤
 *   1.05 for the first two). `join_mb_per_s_during_steps` and
 *   `bare_ws_mb_per_s_during_steps`: the transfers that completed meanwhile.
 * - `join_transfer_mb_per_s` vs `bare_ws_mb_per_s` and their ratio
 *   `join_vs_bare_ws` (target ≥ 0.8): the joiner's fetch (resumable,
 *   verified against the manifest) against the same bytes over a bare
 *   WebSocket on the same link, alternated in the same run. As in a run, the
 *   keeper serves fetches from its low-priority serving thread (its direct
 *   endpoint; `direct_share` says which part of the bytes came that way);
 *   `--no-direct` measures chunk requests over the actor protocol instead.
 *   `pairs` lists each pair's [keeper, bare] MB/s.
 *
 * Benchmarks measure and print; they never assert.
 *
 * About 700 lines because it is one suite, meant to be read top to bottom
 * against the figures above: the harness (the trainer's compute Worker, the
 * bare WebSocket server, the joiner process, the shaped link) serves only
 * these measurements and is set up and torn down inside them, so each figure
 * and the code that made it sit in one file. Only the joiner's side is apart
 * (`_bench_joiner.ts`), because it runs in its own process.
 *
 * @module
 */
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";
import { ActorSystem } from "../actors/runtime/system.ts";
import { ActorTransport } from "../transport/remote.ts";
import { engineSettings } from "../actors/run_settings.ts";
import type { GptConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";
import { CheckpointStore } from "./store.ts";
import { keeperBehavior, type KeeperEvent } from "../actors/keeper.ts";
import type { KeeperPieceMsg } from "../actors/keeper_protocol.ts";
import { BENCH_RUN, BENCH_SECRET } from "./_bench_joiner.ts";
import { netnsUnavailable, runTool } from "../tests/_netns.ts";

import { retireWorker } from "../actors/_worker_thread.ts";

const JOINER = new URL("./_bench_joiner.ts", import.meta.url).pathname;
const WORKER = new URL("../actors/trainer_worker.ts", import.meta.url).href;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** A trainer's compute Worker, driven through its request protocol. */
class TrainerWorker {
  #worker = new Worker(WORKER, { type: "module" });
  #next = 0;
  #pending = new Map<number, (r: Record<string, unknown>) => void>();
  #thread?: number;
  theta?: Float32Array;

  constructor() {
    this.#worker.onmessage = (e: MessageEvent<Record<string, unknown>>) => {
      if (e.data.op === "thread") {
        this.#thread = e.data.thread as number | undefined;
        return;
      }
      const f = this.#pending.get(e.data.id as number);
      this.#pending.delete(e.data.id as number);
      f?.(e.data);
    };
  }

  async call(req: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = ++this.#next;
    const p = new Promise<Record<string, unknown>>((r) => this.#pending.set(id, r));
    this.#worker.postMessage({ ...req, id });
    const reply = await p;
    if (!reply.ok) throw new Error(`Trainer worker failed: ${reply.error}`);
    return reply;
  }

  async init(config: string, steps: number): Promise<void> {
    const engine = engineSettings({
      run: BENCH_RUN,
      config,
      rounds: 100,
      innerSteps: steps,
      outer: { lr: 0.7, momentum: 0.9 },
    });
    const r = await this.call({ op: "init", ...engine, dataShard: { index: 0, count: 16 } });
    this.theta = r.params as Float32Array;
  }

  /** Runs `steps` inner steps; ms per step. */
  async innerStepMs(round: number, steps: number): Promise<number> {
    const r = await this.call({
      op: "round",
      round,
      theta: new Float32Array(this.theta!),
      steps,
      dataShard: { index: 0, count: 16 },
    });
    return (r.innerMs as number) / steps;
  }

  /** Releases the device and waits for the Worker's thread: the bench exits right after. */
  async close(): Promise<void> {
    await retireWorker(this.#worker, {
      close: () => this.call({ op: "close" }),
      ...(this.#thread !== undefined ? { thread: this.#thread } : {}),
    });
  }
}

/** Serves `bytes` on a bare WebSocket: a text frame with the size, then binary chunks. */
function bareServer(
  bytes: Uint8Array,
  chunk: number,
  hostname: string,
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ port: 0, hostname, onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = async () => {
      socket.send(String(bytes.length));
      for (let o = 0; o < bytes.length; o += chunk) {
        while (socket.bufferedAmount > 4 * chunk) await new Promise((r) => setTimeout(r, 1));
        if (socket.readyState !== WebSocket.OPEN) return;
        socket.send(bytes.subarray(o, Math.min(bytes.length, o + chunk)));
      }
    };
    return response;
  });
}

let lowest: string[] | undefined;
/** The command prefix that runs a process at the lowest CPU priority here. */
function lowestPriority(): string[] {
  if (lowest === undefined) {
    const works = (cmd: string[]) => {
      try {
        return new Deno.Command(cmd[0], { args: [...cmd.slice(1), "true"] }).outputSync().success;
      } catch {
        return false;
      }
    };
    lowest = [["chrt", "-i", "0"], ["nice", "-n", "19"]].find(works) ?? [];
  }
  return lowest;
}

interface Joiner {
  child: Deno.ChildProcess;
  lines: Record<string, unknown>[];
  waitFor(kind: string): Promise<Record<string, unknown>>;
  done: Promise<unknown>;
}

/**
 * Starts the joiner process. `low`: at the lowest CPU priority (SCHED_IDLE),
 * standing in for a joiner on another machine (its own decoding and hashing
 * are not a cost to this machine's trainers in a real run; the keeper's
 * serving is).
 */
function joiner(args: string[], low = false, ns?: string, cpus?: string): Joiner {
  const deno = [Deno.execPath(), "run", "-A", JOINER, ...args];
  // A joiner with a core of its own stands in for another machine at its normal priority.
  const niced = cpus
    ? ["taskset", "-c", cpus, ...deno]
    : low
    ? [...lowestPriority(), ...deno]
    : deno;
  const [cmd, ...rest] = ns ? ["ip", "netns", "exec", ns, ...niced] : niced;
  const child = new Deno.Command(cmd, {
    args: rest,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: Record<string, unknown>[] = [];
  const waiters: { kind: string; resolve(l: Record<string, unknown>): void }[] = [];
  const done = (async () => {
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        lines.push(line);
        for (const w of waiters.filter((w) => w.kind === line.kind)) w.resolve(line);
      }
    }
    return await child.status;
  })();
  return {
    child,
    lines,
    waitFor(kind) {
      const hit = lines.find((l) => l.kind === kind);
      if (hit) return Promise.resolve(hit);
      const w = Promise.withResolvers<Record<string, unknown>>();
      waiters.push({ kind, resolve: w.resolve });
      return w.promise;
    },
    done,
  };
}

/** Where the joiner reaches the host, and how records of that path are named. */
interface NetPath {
  actorUrl: string;
  bareUrl: string;
  /** The joiner's network namespace, if any. */
  ns?: string;
  /** Appended to record names. */
  suffix: string;
  /** CPUs the joiner runs on, when it has its own (`split`). */
  joinerCpus?: string;
  /** Described in each record. */
  link: string;
}

/**
 * A network namespace for the joiner, joined to this one by a veth pair
 * whose both ends are shaped to `mbit` with tc tbf.
 */
async function openLink(mbit: number): Promise<{
  ns: string;
  hostIp: string;
  close(): Promise<void>;
}> {
  const tag = String(Deno.pid % 100000);
  const ns = `ckb-${tag}`;
  const [hostDev, nsDev] = [`ckbh${tag}`, `ckbj${tag}`];
  const net = 10 + (Deno.pid % 200);
  const hostIp = `10.79.${net}.1`;
  const must = (args: string[]) => {
    const r = runTool(args);
    if (!r.ok) throw new Error(`Cannot set up the bench link: ${args.join(" ")}: ${r.out}`);
  };
  const close = () => {
    runTool(["ip", "link", "del", hostDev]);
    runTool(["ip", "netns", "del", ns]);
    return Promise.resolve();
  };
  try {
    must(["ip", "netns", "add", ns]);
    must(["ip", "-n", ns, "link", "set", "lo", "up"]);
    must(["ip", "link", "add", hostDev, "type", "veth", "peer", "name", nsDev, "netns", ns]);
    must(["ip", "addr", "add", `${hostIp}/24`, "dev", hostDev]);
    must(["ip", "-n", ns, "addr", "add", `10.79.${net}.2/24`, "dev", nsDev]);
    must(["ip", "link", "set", hostDev, "up"]);
    must(["ip", "-n", ns, "link", "set", nsDev, "up"]);
    // A burst of 1 ms at the rate (at least 64 KiB) keeps tbf accurate at high rates.
    const burst = `${Math.max(64, Math.ceil((mbit * 1000) / 8 / 1024))}kb`;
    const shape = ["root", "tbf", "rate", `${mbit}mbit`, "burst", burst, "latency", "50ms"];
    must(["tc", "qdisc", "add", "dev", hostDev, ...shape]);
    must(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", nsDev, ...shape]);
  } catch (err) {
    await close();
    throw err;
  }
  return { ns, hostIp, close };
}

/** Options of the checkpoint bench (besides {@linkcode BenchOptions}). */
export interface CheckpointBenchOptions extends BenchOptions {
  /** Width of the synthetic model the keeper holds (default 384, quick 192). */
  width?: number;
  /** Bytes per chunk request of the joiner (default: the fetch's default). */
  chunkBytes?: number;
  /** Where the keeper writes (default "worker", as in a run). */
  writer?: "inline" | "worker";
  /** Serve joiners from the keeper's serving thread (default true, as in a run). */
  direct?: boolean;
  /** The keeper's `backgroundDuty` (default: the keeper's default). */
  duty?: number;
  /**
   * Two machines on one box: this process (trainer with one llvmpipe
   * thread, keeper) runs pinned to CPU 0 and the joiner to CPU 1; records
   * end in `_split`. The full bench runs this in a child process after its
   * other phases (`false` skips that).
   */
  split?: boolean;
  /** Repetitions of each measurement (default 3, quick 2). */
  reps?: number;
  /**
   * Rate of the shaped link the transfers are measured over a second time, in
   * Mbit/s (default 1000; 0 skips it). Needs root and `ip netns`/`tc`.
   */
  linkMbit?: number;
}

/** The checkpoint suite; see the module doc. */
export async function* bench(options: CheckpointBenchOptions): AsyncGenerator<BenchRecord> {
  yield* measureLayout(options);
  if (options.split === undefined && !options.quick) yield* splitLayout(options);
}

/**
 * The `split` layout (see {@linkcode CheckpointBenchOptions.split}) in a
 * child process pinned to CPU 0, with one llvmpipe thread.
 */
async function* splitLayout(options: CheckpointBenchOptions): AsyncGenerator<BenchRecord> {
  let why = navigator.hardwareConcurrency < 2 ? "needs 2 CPUs" : "";
  try {
    const ok = new Deno.Command("taskset", { args: ["-c", "1", "true"] }).outputSync().success;
    if (!ok) why ||= "taskset cannot pin to CPU 1";
  } catch {
    why ||= "taskset is not installed";
  }
  if (why) {
    yield { name: "split_skipped", value: 0, unit: "flag", note: why };
    return;
  }
  const flags = [
    ...(options.reps ? ["--reps", String(options.reps)] : []),
    ...(options.duty ? ["--duty", String(options.duty)] : []),
    ...(options.direct === false ? ["--no-direct"] : []),
  ];
  const child = new Deno.Command("taskset", {
    args: ["-c", "0", Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname, "--split"]
      .concat(flags),
    env: { LP_NUM_THREADS: "1" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let buf = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line.startsWith("{")) yield JSON.parse(line) as BenchRecord;
    }
  }
  const status = await child.status;
  if (!status.success) {
    yield { name: "split_failed", value: status.code, unit: "exit code" };
  }
}

/** One layout's figures: every process on all cores, or the `split` layout when asked. */
async function* measureLayout(options: CheckpointBenchOptions): AsyncGenerator<BenchRecord> {
  const width = options.width ?? (options.quick ? 192 : 384);
  const big: GptConfig = { nLayer: 4, nHead: 8, nEmbd: width, blockSize: 64, vocabSize: 256 };
  const n = buildLayout(big).totalLength;
  const reps = options.reps ?? (options.quick ? 2 : 10);
  const steps = options.quick ? 4 : 8;
  const chunk = options.chunkBytes ?? 0;
  const dir = await Deno.makeTempDir({ prefix: "ckpt_bench_" });
  const system = new ActorSystem({ node: "host" });
  const transport = new ActorTransport(system, {
    run: BENCH_RUN,
    secret: BENCH_SECRET,
    log: () => {},
  });
  const trainer = new TrainerWorker();
  let bare: Deno.HttpServer<Deno.NetAddr> | undefined;
  let listener: { url: string; shutdown(): Promise<void> } | undefined;
  const children: Joiner[] = [];
  try {
    // The round the keeper serves: a synthetic θ of `n` floats.
    const params = new Float32Array(n);
    for (let i = 0; i < n; i++) params[i] = Math.sin(i * 0.37) * 0.02;
    const keeperDir = `${dir}/keeper-0`;
    const store = new CheckpointStore(keeperDir, { retention: { keepLast: 2, keepEvery: 0 } });
    await store.commit({
      run: BENCH_RUN,
      round: 1,
      config: big,
      params,
      momentum: new Float32Array(n),
    });
    const modelBytes = await Deno.readFile(`${keeperDir}/rounds/1/model.safetensors`);
    let written = Promise.withResolvers<void>();
    let writes = 0;
    let writeMs = 0;
    await system.spawn(
      keeperBehavior({
        run: BENCH_RUN,
        id: "host/keepers/0",
        dir: keeperDir,
        config: big,
        retention: { keepLast: 2, keepEvery: 0 },
        writer: options.writer ?? "worker",
        ...(options.duty ? { backgroundDuty: options.duty } : {}),
        // As in a run: joiners take the bytes from the keeper's low-priority serving thread,
        // which listens on every address (the joiner dials the host it reached the node by).
        ...(options.direct === false ? {} : { serve: { hostname: "0.0.0.0" } }),
        onEvent: (e: KeeperEvent) => {
          if (e.type === "written") {
            writes++;
            writeMs += e.ms;
            written.resolve();
          }
        },
      }),
      { name: "keepers/0", shutdownMs: 30_000 },
    );
    listener = await transport.listen({ port: 0, hostname: "127.0.0.1" });
    bare = bareServer(modelBytes, 1 << 20, "127.0.0.1");
    await trainer.init("small", steps);
    await trainer.innerStepMs(0, 2); // warm
    const mb = round3(modelBytes.length / 2 ** 20);
    let round = 2;

    /** MB/s of one transfer line of the joiner. */
    const rate = (l: Record<string, unknown>) =>
      (l.bytes as number) / 2 ** 20 / ((l.ms as number) / 1000);

    /** (b) The joiner's transfer vs a bare WebSocket, alternated in one joiner process. */
    const compare = async function* (path: NetPath): AsyncGenerator<BenchRecord> {
      const pairs = options.quick ? 4 : 12;
      const cmp = joiner(
        ["compare", path.actorUrl, path.bareUrl, "1", String(pairs + 1), String(chunk)],
        false,
        path.ns,
        path.joinerCpus,
      );
      children.push(cmp);
      await cmp.done;
      // The first pair warms both paths (connections, JIT).
      const keeperRates = cmp.lines.filter((l) => l.kind === "keeper").slice(1).map(rate);
      const bareRates = cmp.lines.filter((l) => l.kind === "bare").slice(1).map(rate);
      const common = { model_mb: mb, params: n, reps: keeperRates.length, link: path.link };
      const x = path.suffix;
      const keeperLines = cmp.lines.filter((l) => l.kind === "keeper").slice(1);
      const directShare = keeperLines.reduce((s, l) => s + ((l.direct as number) ?? 0), 0) /
        Math.max(1, keeperLines.reduce((s, l) => s + (l.bytes as number), 0));
      yield {
        name: `join_transfer_mb_per_s${x}`,
        value: median(keeperRates),
        unit: "MB/s",
        direct_share: round3(directShare),
        ...common,
      };
      yield { name: `bare_ws_mb_per_s${x}`, value: median(bareRates), unit: "MB/s", ...common };
      // Each keeper fetch runs right after a bare transfer: the ratio of each pair shares the
      // machine's load of the moment, which on a shared box moves more than the effect.
      yield {
        name: `join_vs_bare_ws${x}`,
        value: round3(median(keeperRates.map((k, i) => k / bareRates[i]))),
        unit: "ratio",
        target: ">= 0.8",
        statistic: "median of back-to-back pairs",
        pairs: keeperRates.map((k, i) => [Math.round(k), Math.round(bareRates[i])]),
        ...common,
      };
      yield {
        name: `join_vs_bare_ws_best${x}`,
        value: round3(Math.max(...keeperRates) / Math.max(...bareRates)),
        unit: "ratio",
        statistic: "best keeper fetch / best bare transfer",
        ...common,
      };
    };

    /**
     * Starts a load beside the trainer; resolves to the function that stops
     * it, which returns the joiner's completed transfers (MB/s each).
     */
    const startLoad = async (load: string, path: NetPath): Promise<() => Promise<number[]>> => {
      if (load === "join_fetch" || load === "bare_ws") {
        const j = joiner(
          [
            load === "join_fetch" ? "loop" : "bareloop",
            path.actorUrl,
            path.bareUrl,
            "1",
            "600",
            String(chunk),
          ],
          true,
          path.ns,
          path.joinerCpus,
        );
        children.push(j);
        await j.waitFor("loop_started");
        // Let the first transfer get going.
        await new Promise((r) => setTimeout(r, 200));
        return async () => {
          const rates = j.lines.filter((l) => l.kind === "fetch").map(rate);
          try {
            j.child.kill("SIGKILL");
          } catch { /* exited */ }
          await j.done;
          return rates;
        };
      }
      if (load === "keeper_write") {
        // θ of two rounds, made before the phase: in a run the aggregators compute θ whether
        // or not keepers write it, so making it is no cost of checkpointing.
        const thetas = [1, 2].map((k) => params.map((x) => x + k * 1e-6));
        const momentum = new Float32Array(n);
        let on = true;
        const loop = (async () => {
          while (on) {
            written = Promise.withResolvers<void>();
            const piece: KeeperPieceMsg = {
              type: "keeper_piece",
              run: BENCH_RUN,
              round: round++,
              start: 0,
              total: n,
              params: thetas[round % 2],
              momentum,
              config: big,
            };
            system.ref("host/keepers/0").tell(piece);
            await written.promise;
          }
        })();
        await new Promise((r) => setTimeout(r, 50));
        return async () => {
          on = false;
          // The write in flight finishes before the next idle block.
          await loop;
          return [];
        };
      }
      return () => Promise.resolve([]);
    };

    /**
     * (a), (c): the trainer's inner steps under each load. Every loaded block
     * sits between two idle blocks and is compared with their mean: the
     * machine's speed drifts between blocks by more than the effect measured.
     */
    const innerSteps = async function* (
      loads: readonly string[],
      path: NetPath,
    ): AsyncGenerator<BenchRecord> {
      const times: Record<string, number[]> = { idle: [] };
      const ratios: Record<string, number[]> = {};
      const rates: Record<string, number[]> = {};
      for (const load of loads) [times[load], ratios[load], rates[load]] = [[], [], []];
      let before = await trainer.innerStepMs(1, steps);
      times.idle.push(before);
      for (let rep = 0; rep < reps; rep++) {
        for (const load of loads) {
          const stop = await startLoad(load, path);
          const loaded = await trainer.innerStepMs(rep + 1, steps);
          rates[load].push(...await stop());
          const after = await trainer.innerStepMs(rep + 1, steps);
          times[load].push(loaded);
          times.idle.push(after);
          ratios[load].push(loaded / ((before + after) / 2));
          before = after;
        }
      }
      const x = path.suffix;
      for (const load of ["idle", ...loads]) {
        yield {
          name: `inner_step_ms_${load}${x}`,
          value: round3(median(times[load])),
          unit: "ms",
          config: "small",
          steps,
          blocks: times[load].length,
          link: path.link,
        };
      }
      for (const load of loads) {
        yield {
          name: `inner_step_ratio_${load}${x}`,
          value: round3(median(ratios[load])),
          unit: "ratio",
          ...(load === "bare_ws" ? { note: "floor: a bare transfer of the same bytes" } : {
            target: "<= 1.05",
          }),
          statistic: "median over blocks of loaded / mean of the idle blocks around it",
          blocks: ratios[load].map(round3),
          model_mb: mb,
          link: path.link,
        };
        if (rates[load].length > 0) {
          yield {
            name: `${load === "bare_ws" ? "bare_ws" : "join"}_mb_per_s_during_steps${x}`,
            value: round3(median(rates[load])),
            unit: "MB/s",
            transfers: rates[load].length,
            note: "transfers completed while the trainer stepped",
            link: path.link,
          };
        }
      }
    };

    const loopback: NetPath = {
      actorUrl: listener.url,
      bareUrl: `ws://127.0.0.1:${bare.addr.port}/`,
      suffix: options.split ? "_split" : "",
      link: options.split ? "loopback; host on CPU 0, joiner on CPU 1" : "loopback",
      ...(options.split ? { joinerCpus: "1" } : {}),
    };
    yield* compare(loopback);
    yield* innerSteps(["join_fetch", "keeper_write", "bare_ws"], loopback);
    yield {
      name: `keeper_write_ms${loopback.suffix}`,
      value: round3(writeMs / Math.max(1, writes)),
      unit: "ms",
      writes,
      note: "encode + sha256 + write + fsync of one round",
      model_mb: mb,
    };

    // ---- The same transfers over a rate-limited link: a joiner in its own network namespace
    // behind a veth pair shaped with tc tbf, as a joiner on another machine would be.
    const why = options.linkMbit === 0 ? "disabled (--link-mbit 0)" : netnsUnavailable();
    if (why) {
      yield {
        name: `link_skipped${loopback.suffix}`,
        value: 0,
        unit: "flag",
        note: `rate-limited link not measured: ${why}`,
      };
    } else {
      const mbit = options.linkMbit ?? 1000;
      const link = await openLink(mbit);
      try {
        const linkListener = await transport.listen({ port: 0, hostname: link.hostIp });
        const linkBare = bareServer(modelBytes, 1 << 20, link.hostIp);
        try {
          const path: NetPath = {
            actorUrl: linkListener.url,
            bareUrl: `ws://${link.hostIp}:${linkBare.addr.port}/`,
            ns: link.ns,
            suffix: `${loopback.suffix}_link`,
            link: `${mbit} Mbit/s veth, tc tbf${options.split ? "; joiner on CPU 1" : ""}`,
            joinerCpus: loopback.joinerCpus,
          };
          yield* compare(path);
          yield* innerSteps(["join_fetch", "bare_ws"], path);
        } finally {
          await linkListener.shutdown();
          await linkBare.shutdown();
        }
      } finally {
        await link.close();
      }
    }
  } finally {
    for (const j of children) {
      try {
        j.child.kill("SIGKILL");
      } catch { /* exited */ }
      await j.done;
    }
    await trainer.close().catch(() => {});
    await transport.close();
    await listener?.shutdown();
    await bare?.shutdown();
    await system.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const writer = Deno.args.includes("--inline") ? "inline" : "worker";
  const flag = (name: string) => {
    const at = Deno.args.indexOf(name);
    return at >= 0 ? Number(Deno.args[at + 1]) : undefined;
  };
  const reps = flag("--reps");
  const linkMbit = flag("--link-mbit");
  const duty = flag("--duty");
  for await (
    const r of bench({
      quick: Deno.args.includes("--quick"),
      writer,
      reps,
      linkMbit,
      duty,
      ...(Deno.args.includes("--split") ? { split: true } : {}),
      ...(Deno.args.includes("--no-split") ? { split: false } : {}),
      direct: !Deno.args.includes("--no-direct"),
    })
  ) {
    console.log(JSON.stringify(r));
  }
}
