/**
 * The dashboard, `/events`, `/status` and `/metrics` of a real run (the tiny
 * model, two trainers in Workers on WebGPU, two checkpoint keepers), with a
 * NaN contribution and a tracker crash injected so that rejections and
 * restarts show. `/metrics` is read with a strict parser of the text format
 * and checked against `/status` of the same run; headless Chromium
 * (playwright-core, `/usr/bin/chromium`) loads the page while the run goes,
 * checks what it shows against `/status` and saves screenshots to
 * `.ci/out/dashboard-live.png` (during the run) and `.ci/out/dashboard.png`
 * (at its end); the paths are printed. The browser part is skipped,
 * with the reason printed, where Chromium or playwright-core is missing.
 *
 * Slow (Workers compile shaders): run alone with
 * `deno test -A tests/dashboard_run_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";
import { Hono } from "hono";
import { type RunHost, startRunHost } from "../actors/host.ts";
import { type Dashboard, mountDashboard } from "../actors/dashboard/serve.ts";
import type { EvalPoint, LiveState, RoundPoint } from "../actors/dashboard/history.ts";
import { textSample } from "../kernels/sample.ts";
import { shortNumber } from "../actors/dashboard/plot.ts";
import { type Family, parseExposition } from "./_prometheus.ts";
import { ActorSystem } from "../actors/runtime/system.ts";
import { ActorTransport } from "../transport/remote.ts";

const ROUNDS = 4;
/** Each evaluation's text sample: 24 bytes after a prompt with characters HTML would take as markup. */
const SAMPLE = textSample({ prompt: "<b>&amp;", tokens: 24 });
const CHROMIUM = "/usr/bin/chromium";
const SHOT_DIR = new URL("../.ci/out/", import.meta.url);

interface Status {
  run: string;
  round: number;
  epoch: number;
  rounds_done: number;
  members: LiveState["members"];
  live: LiveState;
  history: { rounds: RoundPoint[]; evals: EvalPoint[] };
}

/** Waits for `check` to hold, polling; fails naming `what` after `ms`. */
async function until(check: () => boolean | Promise<boolean>, what: string, ms = 120_000) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Reads server-sent events from `/events` until `count` events arrived; returns their types and data. */
async function readEvents(base: string, count: number): Promise<{ type: string; data: unknown }[]> {
  const res = await fetch(`${base}/events`);
  equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const out: { type: string; data: unknown }[] = [];
  let buffer = "";
  while (out.length < count) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const type = /^event: (.*)$/m.exec(block)?.[1] ?? "message";
      const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? "null");
      out.push({ type, data });
    }
  }
  await reader.cancel();
  return out;
}

/** The single value of a family's sample with `labels` (or its only sample). */
function value(f: Family | undefined, labels: Record<string, string> = {}): number | undefined {
  return f?.samples.find((s) => JSON.stringify(s.labels) === JSON.stringify(labels))?.value;
}

function checkMetrics(families: Map<string, Family>, status: Status): void {
  const live = status.live;
  const types: Record<string, string> = {
    decentra_run_info: "gauge",
    decentra_round: "gauge",
    decentra_view_epoch: "gauge",
    decentra_rounds_total: "counter",
    decentra_loss: "gauge",
    decentra_eval_loss: "gauge",
    decentra_tokens_total: "counter",
    decentra_bytes_up_total: "counter",
    decentra_bytes_down_total: "counter",
    decentra_utilization: "gauge",
    decentra_trainers_in_view: "gauge",
    decentra_members: "gauge",
    decentra_evicted_members: "gauge",
    decentra_restarts_total: "counter",
    decentra_rejected_contributions_total: "counter",
    decentra_checkpoint_commit_latency_seconds: "histogram",
    decentra_latest_committed_round: "gauge",
  };
  deepEqual(
    Object.fromEntries([...families.values()].map((f) => [f.name, f.type])),
    types,
  );
  const f = (name: string) => families.get(name);
  // The run id has a quote and a backslash: the label value reads back unchanged.
  equal(value(f("decentra_run_info"), { run: status.run }), 1);
  equal(value(f("decentra_round")), live.round);
  equal(value(f("decentra_view_epoch")), live.epoch);
  // At the end the tracker and the monitor hold the same view.
  equal(live.round, status.round);
  equal(live.epoch, status.epoch);
  equal(value(f("decentra_rounds_total")), status.rounds_done);
  equal(value(f("decentra_loss")), live.last_round!.loss);
  equal(value(f("decentra_eval_loss")), live.last_eval!.eval_loss);
  equal(value(f("decentra_utilization")), live.last_round!.utilization);
  const rounds = status.history.rounds;
  equal(value(f("decentra_tokens_total")), rounds.reduce((s, r) => s + r.tokens, 0));
  equal(value(f("decentra_bytes_up_total")), rounds.reduce((s, r) => s + r.bytes_up, 0));
  equal(value(f("decentra_bytes_down_total")), rounds.reduce((s, r) => s + r.bytes_down, 0));
  equal(value(f("decentra_trainers_in_view")), live.trainers_in_view);
  // Members by role and state, counted from /status's member list.
  const byRole: Record<string, number> = {};
  for (const m of status.members) {
    for (const role of m.roles) {
      byRole[`${role}/${m.state}`] = (byRole[`${role}/${m.state}`] ?? 0) + 1;
    }
  }
  deepEqual(
    Object.fromEntries(
      f("decentra_members")!.samples.map((s) => [`${s.labels.role}/${s.labels.state}`, s.value]),
    ),
    byRole,
  );
  ok(byRole["trainer/idle"] === 2 && byRole["aggregator/active"] === 1, JSON.stringify(byRole));
  const labelled = (name: string, label: string) =>
    Object.fromEntries(f(name)!.samples.map((s) => [s.labels[label], s.value]));
  deepEqual(labelled("decentra_restarts_total", "child"), live.restarts_by_child);
  ok(live.restarts_by_child["tracker/tracker"] >= 1, JSON.stringify(live.restarts_by_child));
  deepEqual(labelled("decentra_rejected_contributions_total", "reason"), live.rejected_by_reason);
  ok(live.rejected_by_reason.non_finite >= 1, JSON.stringify(live.rejected_by_reason));
  const h = f("decentra_checkpoint_commit_latency_seconds")!;
  const count = h.samples.find((s) => s.name.endsWith("_count"))!.value;
  equal(count, live.commit_latency.count);
  // Keepers may skip a round while busy; the final one is always committed (the test waits).
  ok(count >= 1, `commits observed: ${count}`);
  ok(
    Math.abs(h.samples.find((s) => s.name.endsWith("_sum"))!.value - live.commit_latency.sum) <
      1e-9,
  );
  equal(value(f("decentra_latest_committed_round")), live.latest_commit!.round);
  equal(live.latest_commit!.round, ROUNDS);
}

/** Loads the page in headless Chromium while the run goes; returns why it was skipped, if it was. */
async function checkPage(base: string, host: RunHost): Promise<string | undefined> {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    return `no Chromium at ${CHROMIUM}`;
  }
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (err) {
    return `playwright-core cannot be loaded: ${err}`;
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(base);
    // Page-side conditions are strings: the test is type-checked without the DOM's types.
    await page.waitForFunction("Number(document.body.dataset.rounds || 0) >= 2", null, {
      timeout: 180_000,
    });
    // What the page shows of a round agrees with /status's history of that round.
    // Read at one instant: a round may arrive between two reads.
    const shown = await page.evaluate(`(() => {
      const b = document.body.dataset;
      return {
        rounds: Number(b.rounds),
        lastRound: Number(b.lastRound),
        lastLoss: Number(b.lastLoss),
        lossText: document.getElementById("last-loss").textContent,
        roundsText: document.getElementById("rounds-done").textContent,
      };
    })()`) as {
      rounds: number;
      lastRound: number;
      lastLoss: number;
      lossText: string;
      roundsText: string;
    };
    await Deno.mkdir(SHOT_DIR, { recursive: true });
    const liveShot = new URL("dashboard-live.png", SHOT_DIR).pathname;
    await page.screenshot({ path: liveShot, fullPage: true });
    console.log(`dashboard screenshot during the run: ${liveShot}`);
    const status: Status = await (await fetch(`${base}/status`)).json();
    ok(status.rounds_done >= shown.rounds, `${status.rounds_done} < ${shown.rounds}`);
    const round = status.history.rounds.find((r) => r.round === shown.lastRound)!;
    equal(shown.lastLoss, round.loss);
    equal(shown.lossText, round.loss.toFixed(4));
    equal(shown.roundsText, String(shown.rounds));
    // At the end the page shows every round and the final commit.
    await host.monitor.done;
    await page.waitForFunction(
      `Number(document.body.dataset.rounds) === ${ROUNDS} && ` +
        `document.getElementById("commit").textContent === "round ${ROUNDS}"`,
      null,
      { timeout: 120_000 },
    );
    const final: Status = await (await fetch(`${base}/status`)).json();
    equal(
      Number(await page.locator("body").getAttribute("data-last-loss")),
      final.history.rounds.at(-1)!.loss,
    );
    equal(await page.locator("#tokens").textContent(), shortNumber(final.live.totals.tokens));
    // The newest text sample first, the prompt as text (no markup made of it).
    const newest = final.history.evals.filter((e) => e.sample).at(-1)!;
    await page.waitForFunction(
      `document.querySelector("#samples pre.sample")?.textContent === ${
        JSON.stringify(SAMPLE.prompt + newest.sample!.text)
      }`,
      null,
      { timeout: 30_000 },
    );
    equal(await page.locator("#samples pre.sample b").count(), 0);
    equal(
      await page.locator("#members tr").count(),
      final.members.length + Object.keys(final.live.evicted).length,
    );
    deepEqual(errors, []);
    const shot = new URL("dashboard.png", SHOT_DIR).pathname;
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`dashboard screenshot: ${shot}`);
  } finally {
    await browser.close();
  }
  return undefined;
}

Deno.test({
  name: "a host's dashboard, events and metrics show the run as /status does",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "dashboard-run-" });
    const host = await startRunHost({
      run: 'dash "run" \\ 1',
      config: "tiny",
      rounds: ROUNDS,
      innerSteps: 3,
      outer: { lr: 1, momentum: 0 },
      localTrainers: 2,
      checkpoint: { dir, keepers: 2 },
      emit: () => {},
    });
    let dashboard: Dashboard | undefined;
    let http: Deno.HttpServer | undefined;
    const transport = new ActorTransport(host.system, { run: "dash", secret: "s" });
    try {
      host.monitor.roundEmitted(0).then(() =>
        host.system.ref(host.trainerPaths[1]).tell({ type: "poison", kind: "nan" })
      );
      host.monitor.roundEmitted(1).then(() =>
        host.system.ref(host.trackerPath).tell({ type: "crash", reason: "test" })
      );
      const app = new Hono();
      // As a networked host does: the page and the actor transport share the path "/".
      dashboard = mountDashboard(app, host, {
        peers: () => transport.peers,
        evalEvery: 1,
        evalWindows: 4,
        liveEveryMs: 300,
        sample: SAMPLE,
      });
      transport.mount(app, "/");
      const listening = Promise.withResolvers<Deno.NetAddr>();
      http = Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen: (a) => listening.resolve(a) },
        app.fetch,
      );
      const base = `http://127.0.0.1:${(await listening.promise).port}`;

      // A peer's WebSocket upgrade on "/" reaches the transport, not the page.
      const peerSystem = new ActorSystem({ node: "peer" });
      const peer = new ActorTransport(peerSystem, { run: "dash", secret: "s" });
      try {
        await peer.connect(`ws://127.0.0.1:${new URL(base).port}/`, {
          expectedPeer: "host",
          maxAttempts: 3,
        }).ready();
        const peers = (await (await fetch(`${base}/status`)).json()).peers;
        deepEqual(peers, ["peer"]);
      } finally {
        await peer.close();
        await peerSystem.shutdown();
      }

      const page = await (await fetch(`${base}/`)).text();
      ok(page.includes('<script src="/dashboard.js"'));
      const js = await fetch(`${base}/dashboard.js`);
      equal(js.status, 200);
      ok((await js.text()).includes("EventSource"));

      // The event stream opens with a snapshot and pushes the live state.
      const events = await readEvents(base, 2);
      equal(events[0].type, "snapshot");
      ok(events.slice(1).some((e) => ["live", "round", "eval", "commit"].includes(e.type)));

      const skipped = await checkPage(base, host);
      if (skipped) console.log(`dashboard page check skipped: ${skipped}`);

      await host.monitor.done;
      const history = dashboard.history;
      await until(() => host.committed(ROUNDS, 60_000), `the commit of round ${ROUNDS}`);
      await until(() => history.evals.at(-1)?.round === ROUNDS - 1, "the last evaluation");

      const status: Status = await (await fetch(`${base}/status`)).json();
      const metrics = await fetch(`${base}/metrics`);
      equal(metrics.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
      checkMetrics(parseExposition(await metrics.text()), status);
      equal(status.rounds_done, ROUNDS);
      deepEqual(status.history.rounds.map((r) => r.round), [...Array(ROUNDS).keys()]);
      // Evaluations come with a text sample as its pacing allows, the last one always:
      // 24 bytes, more where U+FFFD stands for a byte that is not UTF-8.
      ok(status.history.evals.at(-1)!.sample, JSON.stringify(status.history.evals));
      for (const e of status.history.evals.filter((e) => e.sample)) {
        equal(e.sample?.prompt, SAMPLE.prompt);
        const n = new TextEncoder().encode(e.sample!.text).length;
        ok(n >= 24 && n <= 24 * 3, `${n} bytes: ${JSON.stringify(e.sample)}`);
      }
    } finally {
      await dashboard?.close();
      await transport.close();
      await http?.shutdown();
      await host.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
