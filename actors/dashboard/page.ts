/**
 * The dashboard's script (runs in the browser; bundled by esbuild into
 * `/dashboard.js`): keeps the run's history from `GET /events` (a snapshot on
 * connect, then rounds, evaluations, commits and the live state as they
 * come) and redraws the page from it. The body's `data-rounds` and
 * `data-last-loss` attributes carry the shown figures for tests.
 *
 * @module
 */
import { type ChartOptions, lineChart, type Series, shortNumber } from "./plot.ts";
import type { DashboardSnapshot, LiveState, MemberRow } from "./history.ts";

/**
 * The few browser APIs the page uses, typed here: the DOM library's global
 * types would clash with Deno's in a whole-repo `deno check`.
 */
interface Node {
  textContent: string | null;
  className: string;
  innerHTML: string;
  dataset: Record<string, string | undefined>;
  /** Of a table cell. */
  colSpan?: number;
  append(...nodes: Node[]): void;
  replaceChildren(...nodes: Node[]): void;
}
interface Browser {
  document: {
    title: string;
    body: Node;
    getElementById(id: string): Node | null;
    createElement(tag: string): Node;
  };
  EventSource: new (url: string) => {
    addEventListener(type: string, listener: (ev: { data: string }) => void): void;
    onerror: (() => void) | null;
    close(): void;
  };
}
const { document, EventSource } = globalThis as unknown as Browser;

let state: DashboardSnapshot | undefined;

function byId(id: string): Node {
  const el = document.getElementById(id);
  if (!el) throw new Error(`Dashboard page: no element #${id}`);
  return el;
}

function text(id: string, value: string): void {
  byId(id).textContent = value;
}

function fixed(x: number | undefined, digits: number): string {
  return x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(digits);
}

function duration(s: number): string {
  const m = Math.floor(s / 60);
  return m > 0 ? `${m} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`;
}

/** Samples shown at once, newest first. */
const SAMPLES_SHOWN = 3;

/**
 * The text samples of the last evaluations, newest first: the round and
 * eval loss, then the prompt (muted) and what the model wrote after it. Set
 * as text, never as HTML: the bytes are the model's.
 */
function samples(evals: DashboardSnapshot["evals"]): void {
  const box = byId("samples");
  box.replaceChildren();
  const shown = evals.filter((e) => e.sample).slice(-SAMPLES_SHOWN).reverse();
  if (shown.length === 0) {
    const p = document.createElement("div");
    p.className = "none";
    p.textContent = "no sample yet (taken with each evaluation)";
    box.append(p);
  }
  for (const e of shown) {
    const head = document.createElement("div");
    head.className = "sample-head";
    head.textContent = `after round ${e.round} · eval loss ${fixed(e.eval_loss, 4)}`;
    const pre = document.createElement("pre");
    pre.className = "sample";
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = e.sample!.prompt;
    const written = document.createElement("span");
    written.textContent = e.sample!.text;
    pre.append(prompt, written);
    box.append(head, pre);
  }
}

function list(id: string, entries: [string, string][], none: string): void {
  const ul = byId(id);
  ul.replaceChildren();
  if (entries.length === 0) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = none;
    ul.append(li);
  }
  for (const [k, v] of entries) {
    const li = document.createElement("li");
    const a = document.createElement("span");
    const b = document.createElement("b");
    a.textContent = k;
    b.textContent = v;
    li.append(a, b);
    ul.append(li);
  }
}

function memberRows(live: LiveState): void {
  const body = byId("members");
  body.replaceChildren();
  // The key column only where the host knows keys (a run with identities).
  byId("members-table").className = live.members.some((m) => "key" in m) ? "keys" : "";
  const rows: (MemberRow | { node: string; roles: string[]; state: "evicted"; round: number })[] = [
    ...live.members,
    ...Object.entries(live.evicted).map(([node, round]) => ({
      node,
      roles: ["trainer"],
      state: "evicted" as const,
      round,
    })),
  ];
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.className = "none";
    td.colSpan = 6;
    td.textContent = "The tracker knows no member yet (starting, or rebuilding after a restart).";
    tr.append(td);
    body.append(tr);
  }
  for (const m of rows) {
    const tr = document.createElement("tr");
    tr.dataset.state = m.state;
    const cells = [
      m.node,
      m.roles.join(", "),
      "",
      "dataShard" in m && m.roles.includes("trainer") ? String(m.dataShard) : "",
      "silentMs" in m ? `${(m.silentMs / 1000).toFixed(1)} s ago` : `evicted in round ${m.round}`,
      "key" in m && m.key ? m.key : "",
    ];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i === 0 || i === 5) td.className = "node";
      if (i === 2) {
        const badge = document.createElement("span");
        badge.className = `state ${m.state}`;
        badge.textContent = m.state;
        td.append(badge);
      } else td.textContent = c;
      tr.append(td);
    });
    body.append(tr);
  }
}

/** The page's charts: the element each goes in, its lines, its axis. */
const CHARTS: { id: string; series: (s: DashboardSnapshot) => Series[]; options: ChartOptions }[] =
  [
    {
      id: "chart-loss",
      series: ({ rounds, evals }) => [
        { name: "train loss", color: "#2563eb", points: rounds.map((r) => [r.round, r.loss]) },
        {
          name: "eval loss",
          color: "#ea580c",
          points: evals.map((e) => [e.round, e.eval_loss]),
          dots: true,
        },
      ],
      options: { formatY: (y) => y.toFixed(2) },
    },
    {
      id: "chart-bytes",
      series: ({ rounds }) => [
        { name: "sent ↑", color: "#7c3aed", points: rounds.map((r) => [r.round, r.bytes_up]) },
        // Sent and received are often nearly equal: the dashes keep both lines visible.
        {
          name: "received ↓",
          color: "#16a34a",
          points: rounds.map((r) => [r.round, r.bytes_down]),
          dashed: true,
        },
      ],
      options: { formatY: (y) => `${shortNumber(y)} B`, yMin: 0 },
    },
    {
      id: "chart-util",
      series: ({ rounds }) => [
        {
          name: "utilization",
          color: "#0891b2",
          points: rounds.map((r) => [r.round, r.utilization]),
        },
      ],
      options: { formatY: (y) => `${Math.round(y * 100)}%`, yMin: 0, yMax: 1 },
    },
  ];

function render(): void {
  if (!state) return;
  const { live, rounds, evals, commits } = state;
  const last = rounds.at(-1);
  document.title = `decentra ${live.run}: round ${live.round}`;
  text("run", live.run);
  text("round", String(live.round));
  text("target", live.rounds_target > 0 ? String(live.rounds_target) : "∞");
  text("epoch", String(live.epoch));
  text("in-view", String(live.trainers_in_view));
  text("elapsed", duration(live.wall_s));
  text("last-loss", fixed(last?.loss, 4));
  text(
    "first-loss",
    rounds.length ? `first ${fixed(rounds[0].loss, 4)} (round ${rounds[0].round})` : "",
  );
  const ev = evals.at(-1);
  text("eval-loss", fixed(ev?.eval_loss, 4));
  text("eval-round", ev ? `after round ${ev.round}` : "no evaluation yet");
  text("rounds-done", String(rounds.length));
  text(
    "params",
    live.params
      ? `${shortNumber(live.params)} parameters · ${live.inner_steps} inner steps/round`
      : "",
  );
  // Totals from the rounds shown, so that they agree with them (the live state comes a moment later).
  const total = (f: (r: DashboardSnapshot["rounds"][number]) => number) =>
    rounds.reduce((a, r) => a + f(r), 0);
  text("tokens", shortNumber(total((r) => r.tokens)));
  text("tokens-round", last ? `${shortNumber(last.tokens)} in the last round` : "");
  text("bytes", last ? `${shortNumber(last.bytes_up)} ↑ ${shortNumber(last.bytes_down)} ↓` : "–");
  text(
    "bytes-total",
    `total ↑ ${shortNumber(total((r) => r.bytes_up))} ↓ ${
      shortNumber(total((r) => r.bytes_down))
    } B`,
  );
  text("utilization", last ? `${(last.utilization * 100).toFixed(1)}%` : "–");
  text("restarts", String(live.restarts));
  const refused = Object.values(live.rejected_by_reason).reduce((a, b) => a + b, 0);
  text("rejected", `${refused} contribution${refused === 1 ? "" : "s"} refused`);
  const c = live.latest_commit;
  text("commit", c ? `round ${c.round}` : "–");
  text(
    "commit-detail",
    c
      ? `${c.params_hash.slice(0, 10)} · ${c.holders.length} holders${
        c.latency_s === null ? "" : ` · in ${c.latency_s.toFixed(1)} s`
      }`
      : "none committed yet",
  );
  const pill = byId("conn");
  if (live.done) {
    pill.textContent = "finished";
    pill.className = "pill done";
  }
  document.body.dataset.rounds = String(rounds.length);
  document.body.dataset.lastLoss = last ? String(last.loss) : "";
  document.body.dataset.lastRound = last ? String(last.round) : "";

  for (const chart of CHARTS) {
    byId(chart.id).innerHTML = lineChart(chart.series(state), chart.options);
  }

  memberRows(live);
  samples(evals);
  list(
    "restart-list",
    Object.entries(live.restarts_by_child).sort().map(([k, v]) => [k, String(v)]),
    "none",
  );
  list(
    "reject-list",
    Object.entries(live.rejected_by_reason).sort().map(([k, v]) => [k, String(v)]),
    "none",
  );
  list(
    "commit-list",
    commits.slice(-5).reverse().map((
      p,
    ) => [`round ${p.round}`, `${p.params_hash.slice(0, 10)} · ${p.holders.length} holders`]),
    "none yet",
  );
}

function connect(): void {
  const source = new EventSource("/events");
  const pill = byId("conn");
  const on = <T>(type: string, apply: (data: T) => void) =>
    source.addEventListener(type, (ev) => {
      apply(JSON.parse(ev.data) as T);
      render();
    });
  on<DashboardSnapshot>("snapshot", (s) => {
    state = s;
    pill.textContent = "live";
    pill.className = "pill live";
  });
  on<DashboardSnapshot["rounds"][number]>("round", (r) => {
    if (state && !state.rounds.some((x) => x.round === r.round)) state.rounds.push(r);
  });
  on<DashboardSnapshot["evals"][number]>("eval", (e) => state?.evals.push(e));
  on<DashboardSnapshot["commits"][number]>("commit", (c) => state?.commits.push(c));
  on<LiveState>("live", (live) => {
    if (state) state.live = live;
  });
  source.onerror = () => {
    if (state?.live.done) {
      // The host closed the stream at the end of the run: keep the last picture.
      source.close();
      return;
    }
    pill.textContent = "reconnecting";
    pill.className = "pill lost";
  };
}

connect();
