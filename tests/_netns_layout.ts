/**
 * The multi-host layout of the netns tests: a host namespace and trainer
 * namespaces, each trainer joined to the host by a veth pair whose two ends
 * are shaped with tc tbf (netem is not available on these machines), and
 * `deno task node` processes started inside them with `--json`.
 *
 *   host 10.77.1.1 ── veth (tbf RATE) ── 10.77.1.2 trainer 1
 *   host 10.77.2.1 ── veth (tbf RATE) ── 10.77.2.2 trainer 2
 *
 * Needs root and `ip netns` / `tc` (see {@linkcode netnsUnavailable}).
 *
 * @module
 */

import { killNode, type NodeProcess, startNode } from "./_node_process.ts";

/** Runs a command; throws with its output when it fails. */
export async function sh(args: string[]): Promise<string> {
  const r = await new Deno.Command(args[0], {
    args: args.slice(1),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const out = dec.decode(r.stdout) + dec.decode(r.stderr);
  if (!r.success) throw new Error(`Command failed: ${args.join(" ")}: ${out.trim()}`);
  return out;
}

/** The namespaces of one layout; `close` kills its processes and deletes them. */
export interface NetnsLayout {
  host: string;
  trainers: string[];
  /** The veth device of trainer i (0-based) in its namespace. */
  trainerDev(i: number): string;
  /** The host's address as trainer i (0-based) reaches it. */
  hostAddr(i: number): string;
  /** Starts `deno task node ARGS --json` in namespace `ns`. */
  start(ns: string, args: string[]): NodeProcess;
  close(): Promise<void>;
}

/**
 * Builds the layout with `trainers` trainer namespaces and links shaped to
 * `rate` (a tc rate, "10mbit"). Namespace names end in `tag`.
 */
export async function netnsLayout(
  options: { tag: string; trainers: number; rate: string },
): Promise<NetnsLayout> {
  const { tag } = options;
  const host = `fe-host-${tag}`;
  const trainers = Array.from({ length: options.trainers }, (_, i) => `fe-t${i + 1}-${tag}`);
  const created: string[] = [];
  const procs: NodeProcess[] = [];
  const layout: NetnsLayout = {
    host,
    trainers,
    trainerDev: (i) => `fet${i + 1}-${tag}`,
    hostAddr: (i) => `10.77.${i + 1}.1`,
    start(ns, args) {
      const p = startNode(args, { wrap: ["ip", "netns", "exec", ns], timeoutMs: 180_000 });
      procs.push(p);
      return p;
    },
    async close() {
      for (const p of procs) {
        killNode(p);
        await p.done;
      }
      for (const ns of created) await sh(["ip", "netns", "del", ns]).catch(() => {});
    },
  };
  try {
    for (const ns of [host, ...trainers]) {
      await sh(["ip", "netns", "add", ns]);
      created.push(ns);
      await sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    for (const [i, ns] of trainers.entries()) {
      const net = i + 1;
      const a = `feh${net}-${tag}`;
      const b = layout.trainerDev(i);
      await sh([
        "ip",
        "link",
        "add",
        a,
        "netns",
        host,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns,
      ]);
      await sh(["ip", "-n", host, "addr", "add", `10.77.${net}.1/24`, "dev", a]);
      await sh(["ip", "-n", ns, "addr", "add", `10.77.${net}.2/24`, "dev", b]);
      for (const [n, dev] of [[host, a], [ns, b]]) {
        await sh(["ip", "-n", n, "link", "set", dev, "up"]);
        await sh([
          "ip",
          "netns",
          "exec",
          n,
          "tc",
          "qdisc",
          "add",
          "dev",
          dev,
          "root",
          "tbf",
          "rate",
          options.rate,
          "burst",
          "32kbit",
          "latency",
          "400ms",
        ]);
      }
    }
  } catch (err) {
    await layout.close();
    throw err;
  }
  return layout;
}

/**
 * Hosts a run in the layout's host namespace with `args` (after `--host`,
 * `--secret`, `--min-trainers`), joins every trainer namespace to it, and
 * returns the host's process once its "done" line came.
 */
export async function hostAndJoin(
  layout: NetnsLayout,
  options: { port: number; args: string[] },
): Promise<NodeProcess> {
  const h = layout.start(layout.host, [
    "--host",
    `0.0.0.0:${options.port}`,
    "--secret",
    "netns",
    "--min-trainers",
    String(layout.trainers.length),
    ...options.args,
  ]);
  await h.waitFor((l) => String(l.message ?? "").startsWith("hosting run"), "the host");
  const joined = layout.trainers.map((ns, i) =>
    layout.start(ns, ["--join", `ws://${layout.hostAddr(i)}:${options.port}`, "--secret", "netns"])
  );
  try {
    await h.waitFor((l) => l.event === "done", "the end of the run");
  } catch (err) {
    const tails = joined.map((p, i) => `trainer ${i + 1}: ${JSON.stringify(p.lines.slice(-5))}`);
    throw new Error(`${err instanceof Error ? err.message : err}\n${tails.join("\n")}`);
  }
  return h;
}
