/**
 * What the browser-trainer suites share: Chromium's WebGPU flags, a host
 * process (`deno task node --host ... --json`) whose event lines are read as
 * they come, and each trainer's tokens/s from the round lines. Used by
 * tests/browser_join_test.ts and tests/browser_speed_main.ts.
 *
 * @module
 */

/** Debian's Chromium. */
export const CHROMIUM = "/usr/bin/chromium";
const ROOT = new URL("../", import.meta.url);
/** WebGPU on SwiftShader, the software Vulkan that ships with Chromium (works headless). */
export const WEBGPU_ARGS = [
  "--enable-unsafe-webgpu",
  "--enable-features=Vulkan",
  "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader",
  "--no-sandbox",
];

/** A round line of the host (`--json`), the fields the browser suites read. */
export interface RoundLine {
  event: "round";
  round: number;
  contributors: string[];
  tokens: number;
  loss: number;
  theta_hashes: string[];
  inner_ms: Record<string, number>;
}

/** Each trainer's tokens/s over `rounds` (its tokens over its inner-phase time), for the log. */
export function speeds(rounds: RoundLine[]): Record<string, number> {
  const sum: Record<string, { tokens: number; ms: number }> = {};
  for (const r of rounds) {
    for (const [trainer, ms] of Object.entries(r.inner_ms)) {
      sum[trainer] ??= { tokens: 0, ms: 0 };
      sum[trainer].tokens += r.tokens / r.contributors.length;
      sum[trainer].ms += ms;
    }
  }
  return Object.fromEntries(
    Object.entries(sum).map(([t, s]) => [t, Math.round(s.tokens / (s.ms / 1000))]),
  );
}

/** A `deno task node --host` process and the lines it printed (JSON events), read as they come. */
export class Host {
  readonly lines: Record<string, unknown>[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #reading: Promise<void>;
  readonly #stderr: Promise<string>;

  /** Starts `deno run -A actors/node_main.ts ARGS` in the repository root. */
  constructor(args: string[]) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "actors/node_main.ts", ...args],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#stderr = new Response(this.#child.stderr).text();
    this.#reading = (async () => {
      let buffer = "";
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          try {
            this.lines.push(JSON.parse(line));
          } catch {
            // Not an event line.
          }
        }
      }
    })();
  }

  /** The `HOST:PORT` the host listens on, once it says so. */
  url(): Promise<string> {
    return this.until(
      () =>
        this.logs().map((m) => /hosting run "[^"]+" on ws:\/\/([^ ]+)/.exec(m)?.[1]).find(Boolean),
      "the host to listen",
    );
  }

  /** The round lines so far. */
  rounds(): RoundLine[] {
    return this.lines.filter((l) => l.event === "round") as unknown as RoundLine[];
  }

  /** The log messages so far. */
  logs(): string[] {
    return this.lines.filter((l) => l.event === "log").map((l) => String(l.message));
  }

  /** Polls `find` until it finds something; fails naming `what`, with the host's log, after `ms`. */
  async until<T>(find: () => T | undefined, what: string, ms = 300_000): Promise<T> {
    const end = Date.now() + ms;
    while (true) {
      const found = find();
      if (found !== undefined) return found;
      if (Date.now() > end) {
        throw new Error(`Timed out waiting for ${what}; host said:\n${this.logs().join("\n")}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Waits for the host to end (its run is over), killing it after `ms`. */
  async end(ms = 120_000): Promise<number> {
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), ms);
    const status = await this.#child.status;
    clearTimeout(timer);
    await this.#reading;
    await this.#stderr;
    return status.code;
  }
}

/** Why the browser part cannot run here, or undefined when it can. */
export async function browserMissing(): Promise<string | undefined> {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    return `no Chromium at ${CHROMIUM} (Debian: apt-get install chromium)`;
  }
  try {
    await import("playwright-core");
  } catch (err) {
    return `playwright-core cannot be loaded: ${err instanceof Error ? err.message : err}`;
  }
  return undefined;
}
