import { deepEqual, equal, match, ok, throws } from "@std/assert";
import { escapeLabelValue, renderMetrics } from "./metrics.ts";
import { LATENCY_BOUNDS, type LiveState } from "./history.ts";
import { escapeXml, lineChart, ticks } from "./plot.ts";
import { dashboardScript } from "./bundle.ts";
import { parseExposition } from "../../tests/_prometheus.ts";

function liveState(over: Partial<LiveState> = {}): LiveState {
  const counts = LATENCY_BOUNDS.map((b) => (b >= 0.5 ? 2 : b >= 0.25 ? 1 : 0)).concat(2);
  return {
    run: 'r "1"\\x\ny',
    round: 3,
    epoch: 5,
    rounds_target: 4,
    rounds_done: 3,
    params: 1000,
    inner_steps: 2,
    trainers_in_view: 2,
    members: [
      {
        node: "host/t0",
        roles: ["trainer"],
        status: "member",
        state: "training",
        dataShard: 0,
        silentMs: 1,
      },
      {
        node: "host/t1",
        roles: ["trainer"],
        status: "member",
        state: "training",
        dataShard: 1,
        silentMs: 1,
      },
      {
        node: "host/a0",
        roles: ["aggregator"],
        status: "member",
        state: "active",
        dataShard: 2,
        silentMs: 1,
      },
    ],
    evicted: { "host/t2": 1 },
    restarts: 3,
    restarts_by_child: { "trainers/1": 2, "tracker/tracker": 1 },
    rejected_by_reason: { non_finite: 1 },
    last_round: {
      round: 2,
      view: 5,
      trainers: 2,
      loss: 4.5,
      tokens: 10,
      bytes_up: 7,
      bytes_down: 9,
      utilization: 0.875,
      rejected: 0,
      missing: 0,
      wall_s: 3,
    },
    last_eval: { round: 2, eval_loss: 4.25, wall_s: 3.5 },
    latest_commit: { round: 3, params_hash: "ab", holders: ["k0"], wall_s: 4, latency_s: 0.3 },
    commit_latency: { bounds: LATENCY_BOUNDS, counts, sum: 0.9, count: 2 },
    totals: { tokens: 30, bytes_up: 21, bytes_down: 27 },
    done: false,
    wall_s: 5,
    ...over,
  };
}

Deno.test("metrics text parses strictly, with types, escaped labels and a valid histogram", () => {
  const families = parseExposition(renderMetrics(liveState()));
  const types = Object.fromEntries([...families.values()].map((f) => [f.name, f.type]));
  equal(types.decentra_rounds_total, "counter");
  equal(types.decentra_loss, "gauge");
  equal(types.decentra_checkpoint_commit_latency_seconds, "histogram");
  for (const f of families.values()) {
    ok(f.help.length > 0, f.name);
    if (f.type === "counter") ok(f.name.endsWith("_total"), f.name);
  }
  // The run id's quote, backslash and line feed survive the round trip.
  deepEqual(families.get("decentra_run_info")!.samples[0].labels, { run: 'r "1"\\x\ny' });
  deepEqual(
    families.get("decentra_members")!.samples.map((s) => [s.labels.role, s.labels.state, s.value]),
    [["aggregator", "active", 1], ["trainer", "training", 2]],
  );
  const h = families.get("decentra_checkpoint_commit_latency_seconds")!.samples;
  equal(h.find((s) => s.name.endsWith("_count"))!.value, 2);
  equal(h.find((s) => s.labels.le === "0.25")!.value, 1);
});

Deno.test("metrics leave out gauges that have no value yet", () => {
  const families = parseExposition(
    renderMetrics(liveState({ last_round: null, last_eval: null, latest_commit: null })),
  );
  equal(families.get("decentra_loss")!.samples.length, 0);
  equal(families.get("decentra_eval_loss")!.samples.length, 0);
  equal(families.get("decentra_latest_committed_round")!.samples.length, 0);
});

Deno.test("the exposition reader refuses what the format does not allow", () => {
  const ok = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n";
  equal(parseExposition(ok).get("a_total")!.samples[0].value, 1);
  throws(() => parseExposition("a_total 1\n"), /no TYPE line/);
  throws(() => parseExposition('# TYPE a gauge\na{l="\\q"} 1\n'), /bad escape/);
  throws(() => parseExposition("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n"), /split/);
  throws(() => parseExposition("# TYPE a gauge\na 1\na 2\n"), /twice/);
  throws(() => parseExposition("# TYPE a counter\na -1\n"), /counter/);
  throws(() => parseExposition("# TYPE a gauge\na one\n"), /bad value/);
  throws(
    () =>
      parseExposition(
        '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      ),
    /cumulative/,
  );
  throws(
    () => parseExposition('# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 1\n'),
    /count/,
  );
});

Deno.test("label values escape backslash, quote and line feed", () => {
  equal(escapeLabelValue('a\\b"c\nd'), 'a\\\\b\\"c\\nd');
});

Deno.test("charts escape series names and draw one path per series", () => {
  const svg = lineChart([
    { name: "<loss>", color: "#000", points: [[0, 3], [1, 2], [2, NaN]] },
    { name: "eval", color: "#111", points: [[1, 2.5]], dots: true },
  ]);
  ok(svg.includes("&lt;loss&gt;"));
  ok(!svg.includes("<loss>"));
  equal(svg.match(/<path /g)?.length, 1);
  match(lineChart([{ name: "x", color: "#000", points: [] }]), /waiting for the first round/);
  deepEqual(ticks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  equal(escapeXml('"&'), "&quot;&amp;");
});

Deno.test("the page script bundles with deno.json's esbuild", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  const source = await Deno.readTextFile(new URL("../browser/bundle.ts", import.meta.url));
  ok(source.includes(`import("${config.imports.esbuild}")`), "bundle.ts loads another esbuild");
  const js = await dashboardScript();
  ok(js.includes("EventSource"));
  ok(!/\bimport\s*[{("]/.test(js), "the bundle has no imports left");
});
