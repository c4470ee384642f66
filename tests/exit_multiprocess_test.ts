/**
 * Multi-process suite: every entry point exits cleanly, on the GL and on the
 * Vulkan backend. Each of `deno task node`, `node --resume`, `train` and
 * `eval` runs as a subprocess (tiny config, two rounds or a few steps) and
 * must exit 0 with no crash report on stderr: no "Deno has panicked", no
 * "Failed to make EGL context current: BadDisplay", no glibc heap-corruption
 * abort ("corrupted double-linked list", exit code 134).
 *
 * What it pins: a node exiting while a compute Worker's thread still tore
 * down its GL context crashed in about one GL run in three (see
 * actors/_worker_thread.ts); the node and resume runs here (four on GL) saw
 * such a crash with a probability of about 0.95 before the fix. A backend
 * whose adapter is missing is skipped, with the reason printed.
 *
 * Slow (about 15 subprocesses): run alone with
 * `deno test -A tests/exit_multiprocess_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";

const ROOT = new URL("../", import.meta.url).pathname;

/** What a crash at exit leaves on stderr. */
const CRASH =
  /panicked|corrupted|BadDisplay|BadAccess|EGL|malloc|fastbin|double free|free\(\)|Segmentation|SIGSEGV|SIGABRT/i;

interface Run {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

async function deno(backend: string, args: string[]): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: {
      DENO_WEBGPU_BACKEND: backend,
      NO_COLOR: "1",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** The adapter's description on `backend`, or why there is none. */
async function probe(backend: string): Promise<{ adapter?: string; reason?: string }> {
  const code = `const a = await navigator.gpu.requestAdapter();
console.log(a ? a.info.description || a.info.vendor || "adapter" : "none");`;
  const r = await deno(backend, ["eval", code]);
  const line = r.stdout.trim();
  if (r.code !== 0) return { reason: `the probe failed (exit ${r.code}): ${r.stderr.trim()}` };
  if (line === "none") return { reason: `navigator.gpu.requestAdapter() gave no adapter` };
  return { adapter: line };
}

/** Asserts a clean exit: code 0, no signal, no crash report on stderr. */
function assertClean(what: string, r: Run): void {
  const crash = r.stderr.split("\n").filter((l) => CRASH.test(l));
  deepEqual(crash, [], `${what}: crash report on stderr:\n${r.stderr.slice(-3000)}`);
  equal(r.signal, null, `${what}: killed by ${r.signal}`);
  equal(r.code, 0, `${what}: exit code ${r.code}\n${r.stderr.slice(-3000)}`);
}

const NODE = ["run", "-A", "actors/node_main.ts", "--json"];
const TINY = ["--config", "tiny", "--trainers", "2"];

function rounds(r: Run): number[] {
  return r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l))
    .filter((e) => e.event === "round").map((e) => e.round as number);
}

for (const backend of ["gl", "vulkan"]) {
  const found = await probe(backend);
  if (found.reason) {
    console.log(`exit suite: skipping DENO_WEBGPU_BACKEND=${backend}: ${found.reason}`);
  }
  Deno.test({
    name: `exit (${backend}): node, node --resume, train and eval exit 0 with no crash report`,
    ignore: found.reason !== undefined,
    async fn() {
      const dir = await Deno.makeTempDir({ prefix: `exit_${backend}_` });
      try {
        const a = await deno(backend, [...NODE, ...TINY, "--rounds", "2", "--run-dir", `${dir}/a`]);
        assertClean("node", a);
        deepEqual(rounds(a), [0, 1]);
        const b = await deno(backend, [...NODE, ...TINY, "--rounds", "2", "--run-dir", `${dir}/b`]);
        assertClean("node (second run)", b);
        // Each resume extends the run by one round from the newest committed round.
        for (const n of [3, 4]) {
          const r = await deno(backend, [...NODE, "--resume", `${dir}/a`, "--rounds", String(n)]);
          assertClean(`node --resume --rounds ${n}`, r);
          equal(rounds(r).at(-1), n - 1, r.stdout);
        }
        const t = await deno(backend, [
          "run",
          "-A",
          "kernels/train_main.ts",
          "--config",
          "tiny",
          "--steps",
          "4",
          "--eval-every",
          "0",
          "--eval-windows",
          "8",
          "--out",
          `${dir}/train`,
          "--json",
        ]);
        assertClean("train", t);
        const ckpt = `${dir}/train/model.safetensors`;
        ok((await Deno.stat(ckpt)).size > 0);
        const e = await deno(backend, [
          "run",
          "-A",
          "kernels/eval_main.ts",
          "--checkpoint",
          ckpt,
          "--max-windows",
          "8",
          "--json",
        ]);
        assertClean("eval", e);
        ok(Number.isFinite(JSON.parse(e.stdout.trim()).eval_loss), e.stdout);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
