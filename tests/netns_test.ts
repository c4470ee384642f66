/**
 * Multi-host test: a host and two joined trainers, each in its own network
 * namespace, joined by veth pairs whose links are limited to 10 Mbit/s with
 * tc tbf (netem is not available on these machines: delay and loss are
 * injected by the transport's own fault layer in the fault suite instead).
 *
 *   fe-host 10.77.1.1 ── veth (tbf 10mbit) ── 10.77.1.2 fe-t1
 *   fe-host 10.77.2.1 ── veth (tbf 10mbit) ── 10.77.2.2 fe-t2
 *
 * Needs root and `ip netns` / `tc`; otherwise the test is ignored and says
 * why. Every namespace is deleted in `finally`.
 */
import { equal, ok } from "@std/assert";
import { netnsUnavailable } from "./_netns.ts";

const MAIN = new URL("../actors/node_main.ts", import.meta.url).pathname;

const reason = netnsUnavailable();
if (reason) console.log(`netns_test: skipped: ${reason}`);

async function sh(args: string[]): Promise<string> {
  const r = await new Deno.Command(args[0], {
    args: args.slice(1),
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  const out = dec.decode(r.stdout) + dec.decode(r.stderr);
  if (!r.success) throw new Error(`Command failed: ${args.join(" ")}: ${out.trim()}`);
  return out;
}

interface Proc {
  child: Deno.ChildProcess;
  lines: Record<string, unknown>[];
  done: Promise<Deno.CommandStatus>;
}

function startIn(ns: string, args: string[]): Proc {
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", ns, Deno.execPath(), "run", "-A", MAIN, ...args, "--json"],
    stdout: "piped",
    stderr: "piped",
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).spawn();
  const lines: Record<string, unknown>[] = [];
  const pump = async (s: ReadableStream<Uint8Array>) => {
    let buf = "";
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          lines.push(JSON.parse(text));
        } catch {
          lines.push({ event: "text", text });
        }
      }
    }
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  return { child, lines, done: pumped.then(() => child.status) };
}

async function waitFor(p: Proc, pred: (l: Record<string, unknown>) => boolean, what: string) {
  for (let i = 0; i < 1800; i++) {
    if (p.lines.some(pred)) return p.lines.find(pred)!;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`Timed out waiting for ${what}: ${JSON.stringify(p.lines.slice(-10))}`);
}

Deno.test({
  name: `netns: host and two trainers in separate namespaces over 10 Mbit/s veth links${
    reason ? ` (skipped: ${reason})` : ""
  }`,
  ignore: reason !== undefined,
  async fn() {
    const tag = `${Deno.pid % 10000}`;
    const host = `fe-host-${tag}`;
    const trainers = [`fe-t1-${tag}`, `fe-t2-${tag}`];
    const procs: Proc[] = [];
    const created: string[] = [];
    try {
      for (const ns of [host, ...trainers]) {
        await sh(["ip", "netns", "add", ns]);
        created.push(ns);
        await sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
      }
      for (const [i, ns] of trainers.entries()) {
        const net = i + 1;
        const a = `feh${net}-${tag}`;
        const b = `fet${net}-${tag}`;
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
            "10mbit",
            "burst",
            "32kbit",
            "latency",
            "400ms",
          ]);
        }
      }
      const port = 7811;
      const rounds = 4;
      const h = startIn(host, [
        "--host",
        `0.0.0.0:${port}`,
        "--secret",
        "netns",
        "--min-trainers",
        "2",
        "--rounds",
        String(rounds),
        "--config",
        "tiny",
        "--inner-steps",
        "3",
      ]);
      procs.push(h);
      await waitFor(h, (l) => String(l.message ?? "").startsWith("hosting run"), "the host");
      for (const [i, ns] of trainers.entries()) {
        procs.push(startIn(ns, ["--join", `ws://10.77.${i + 1}.1:${port}`, "--secret", "netns"]));
      }
      const done = await waitFor(h, (l) => l.event === "done", "the end of the run");
      const rs = h.lines.filter((l) => l.event === "round");
      equal(rs.length, rounds);
      for (const r of rs) {
        equal(r.trainers, 2, `round ${r.round}: ${r.contributors}`);
        equal(new Set(r.theta_hashes as string[]).size, 1, `round ${r.round}`);
      }
      ok(done.hashes_equal);
      // The bytes went through the rate-limited qdiscs.
      for (const [i, ns] of trainers.entries()) {
        const stats = await sh([
          "ip",
          "netns",
          "exec",
          ns,
          "tc",
          "-s",
          "qdisc",
          "show",
          "dev",
          `fet${i + 1}-${tag}`,
        ]);
        ok(/tbf .*rate 10Mbit/.test(stats), stats);
        const sent = Number(/Sent (\d+) bytes/.exec(stats)?.[1] ?? 0);
        ok(sent > 10_000, `trainer ${i + 1} sent ${sent} bytes through tbf`);
        console.log(`netns_test: ${ns} sent ${sent} bytes through tbf 10mbit`);
      }
      equal((await h.done).code, 0);
    } finally {
      for (const p of procs) {
        try {
          p.child.kill("SIGKILL");
        } catch { /* already exited */ }
        await p.done;
      }
      for (const ns of created) await sh(["ip", "netns", "del", ns]).catch(() => {});
    }
  },
});
