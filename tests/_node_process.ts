/**
 * Test helper: runs `deno task node ... --json` as a child process and
 * collects its output lines (JSON events; other text as `{event: "text"}`),
 * for the multi-process suites.
 *
 * @module
 */

const MAIN = new URL("../actors/node_main.ts", import.meta.url).pathname;

/** One line of a node's output. */
export type Line = Record<string, unknown>;

/** A running node process. */
export interface NodeProcess {
  /** The child process. */
  child: Deno.ChildProcess;
  /** Every line printed so far, stdout and stderr. */
  lines: Line[];
  /** Resolves with the first line matching `pred`; rejects after the timeout naming `what`. */
  waitFor(pred: (l: Line) => boolean, what: string): Promise<Line>;
  /** Resolves when the process has exited and its output is read. */
  done: Promise<Deno.CommandStatus>;
}

/** Options of {@linkcode startNode}. */
export interface StartNodeOptions {
  /** How long `waitFor` waits, ms (default 120 000). */
  timeoutMs?: number;
  /**
   * Raise the process's open-file limit (`ulimit -n`) to this before it
   * starts, as far as the hard limit allows (a node that holds many sockets).
   */
  fileLimit?: number;
  /** The script to run instead of actors/node_main.ts (its own flags, no `--json` added). */
  script?: string;
  /** A command the node runs under (`["ip", "netns", "exec", NS]`: in a network namespace). */
  wrap?: string[];
}

/** The command line of a node: through `sh` when the open-file limit must be raised first. */
function command(args: string[], options: StartNodeOptions): { cmd: string; args: string[] } {
  const deno = [
    "run",
    "-A",
    ...(options.script ? [options.script, ...args] : [MAIN, ...args, "--json"]),
  ];
  const wrap = options.wrap ?? [];
  const run = options.fileLimit === undefined ? [Deno.execPath(), ...deno] : [
    "sh",
    "-c",
    `ulimit -n ${Math.floor(options.fileLimit)} 2>/dev/null; exec "$0" "$@"`,
    Deno.execPath(),
    ...deno,
  ];
  const line = [...wrap, ...run];
  return { cmd: line[0], args: line.slice(1) };
}

/** Starts `deno run -A actors/node_main.ts ...args --json` (or `options.script ...args`). */
export function startNode(args: string[], options: StartNodeOptions = {}): NodeProcess {
  const timeoutMs = options.timeoutMs ?? 120_000;
  const line = command(args, options);
  const child = new Deno.Command(line.cmd, {
    args: line.args,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: Line[] = [];
  const waiters: { pred: (l: Line) => boolean; resolve(l: Line): void }[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let buf = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let line: Line;
        try {
          line = JSON.parse(text);
        } catch {
          line = { event: "text", text };
        }
        lines.push(line);
        for (const w of [...waiters]) {
          if (w.pred(line)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(line);
          }
        }
      }
    }
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  return {
    child,
    lines,
    waitFor(pred, what) {
      const hit = lines.find(pred);
      if (hit) return Promise.resolve(hit);
      const { promise, resolve, reject } = Promise.withResolvers<Line>();
      waiters.push({ pred, resolve });
      const t = setTimeout(
        () =>
          reject(new Error(`Timed out waiting for ${what}: ${JSON.stringify(lines.slice(-5))}`)),
        timeoutMs,
      );
      return promise.finally(() => clearTimeout(t));
    },
    done: pumped.then(() => child.status),
  };
}

/** Kills a node process with SIGKILL; no error if it has already exited. */
export function killNode(p: NodeProcess): void {
  try {
    p.child.kill("SIGKILL");
  } catch {
    // Already exited.
  }
}

/** Kills every node process (SIGKILL) and waits until each has exited and its output is read. */
export async function stopNodes(procs: NodeProcess[]): Promise<void> {
  for (const p of procs) {
    killNode(p);
    await p.done;
  }
}

/** Flags of the smallest run the suites train: the tiny model, three inner steps per round. */
export const TINY_RUN: readonly string[] = ["--config", "tiny", "--inner-steps", "3"];

/** Flags of a host on loopback `port` that writes its run directory under `runDir`. */
export function hostFlags(runDir: string, port: number): string[] {
  return ["--run-dir", runDir, "--host", `127.0.0.1:${port}`];
}
