/**
 * The dashboard's HTML shell: layout and style; `page.ts` (bundled as
 * `/dashboard.js`) fills it from the run's event stream. No outside
 * resource: it works offline.
 *
 * @module
 */

const STYLE = `
:root { --fg: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #fff;
  --blue: #2563eb; --orange: #ea580c; --green: #16a34a; --red: #dc2626; --amber: #d97706;
  --violet: #7c3aed; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap;
  padding: 16px 24px 8px; }
h1 { font-size: 20px; margin: 0; font-weight: 650; }
h1 .run { color: var(--muted); font-weight: 500; }
h2 { font-size: 13px; margin: 0 0 8px; color: var(--muted); font-weight: 600;
  text-transform: uppercase; letter-spacing: .04em; }
.sub { color: var(--muted); }
.sub b { color: var(--fg); font-weight: 600; }
.pill { font-size: 12px; padding: 2px 8px; border-radius: 999px; background: var(--line); }
.pill.live { background: #dcfce7; color: #166534; }
.pill.done { background: #dbeafe; color: #1e40af; }
.pill.lost { background: #fee2e2; color: #991b1b; }
main { padding: 8px 24px 24px; display: grid; gap: 16px; }
.cards { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 12px; }
@media (max-width: 700px) { .cards { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
.card, .panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
.card { padding: 10px 14px; }
.card .k { font-size: 12px; color: var(--muted); }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.card .d { font-size: 12px; color: var(--muted); white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 16px; }
.panel { padding: 12px 14px; min-width: 0; }
.chart { display: block; }
.chart .grid { stroke: var(--line); }
.chart .axis { stroke: #9aa5b1; }
.chart .tick, .chart .label, .chart .empty { font-size: 11px; fill: var(--muted); }
.chart .legend { font-size: 12px; fill: var(--fg); }
.chart .line { stroke-width: 2; stroke-linejoin: round; }
.lower { display: grid; grid-template-columns: minmax(0, 2fr) minmax(0, 1fr); gap: 16px; }
@media (max-width: 900px) { .lower { grid-template-columns: 1fr; } }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
table:not(.keys) th:nth-child(6), table:not(.keys) td:nth-child(6) { display: none; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.node { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px;
  word-break: break-all; }
.state { font-size: 12px; padding: 1px 8px; border-radius: 999px; color: #fff; }
.state.training { background: var(--green); } .state.blocked { background: var(--amber); }
.state.joining { background: var(--violet); } .state.evicted { background: var(--red); }
.state.idle, .state.active { background: #7b8794; } .state.silent { background: #3e4c59; }
ul.kv { list-style: none; margin: 0 0 12px; padding: 0; }
ul.kv li { display: flex; justify-content: space-between; padding: 3px 0;
  border-bottom: 1px solid var(--line); }
ul.kv li.none, td.none { color: var(--muted); }
code { font-size: 12px; }
#samples .none { color: var(--muted); }
.sample-head { font-size: 12px; color: var(--muted); margin-top: 8px; }
pre.sample { margin: 2px 0 0; padding: 8px 10px; background: var(--bg); border-radius: 6px;
  font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap;
  overflow-wrap: anywhere; }
pre.sample .prompt { color: var(--muted); }
`;

/** The page served at `GET /` (its script is `GET /dashboard.js`). */
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>decentra run</title>
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>decentra <span class="run" id="run"></span></h1>
  <span class="pill" id="conn">connecting</span>
  <span class="sub">round <b id="round">–</b> of <b id="target">–</b> · view epoch
    <b id="epoch">–</b> · <b id="in-view">–</b> trainers in view · <b id="elapsed">–</b></span>
</header>
<main>
  <section class="cards">
    <div class="card"><div class="k">loss (last round)</div><div class="v" id="last-loss">–</div>
      <div class="d" id="first-loss"></div></div>
    <div class="card"><div class="k">eval loss</div><div class="v" id="eval-loss">–</div>
      <div class="d" id="eval-round"></div></div>
    <div class="card"><div class="k">rounds closed</div><div class="v" id="rounds-done">0</div>
      <div class="d" id="params"></div></div>
    <div class="card"><div class="k">tokens</div><div class="v" id="tokens">0</div>
      <div class="d" id="tokens-round"></div></div>
    <div class="card"><div class="k">bytes / round (last)</div><div class="v" id="bytes">–</div>
      <div class="d" id="bytes-total"></div></div>
    <div class="card"><div class="k">utilization</div><div class="v" id="utilization">–</div>
      <div class="d">share of the round training</div></div>
    <div class="card"><div class="k">restarts</div><div class="v" id="restarts">0</div>
      <div class="d" id="rejected"></div></div>
    <div class="card"><div class="k">latest checkpoint</div><div class="v" id="commit">–</div>
      <div class="d" id="commit-detail">none committed yet</div></div>
  </section>
  <section class="charts">
    <div class="panel"><h2>Loss per round</h2><div id="chart-loss"></div></div>
    <div class="panel"><h2>Bytes per round</h2><div id="chart-bytes"></div></div>
    <div class="panel"><h2>Utilization per round</h2><div id="chart-util"></div></div>
  </section>
  <section class="panel"><h2>Text from the model</h2><div id="samples"></div></section>
  <section class="lower">
    <div class="panel"><h2>Members</h2>
      <table id="members-table"><thead><tr><th>node</th><th>roles</th><th>state</th><th>data shard</th>
        <th>last heard</th><th>key</th></tr></thead><tbody id="members"></tbody></table></div>
    <div class="panel">
      <h2>Restarts</h2><ul class="kv" id="restart-list"></ul>
      <h2>Refused contributions</h2><ul class="kv" id="reject-list"></ul>
      <h2>Checkpoints</h2><ul class="kv" id="commit-list"></ul>
    </div>
  </section>
</main>
<script src="/dashboard.js" defer></script>
</body>
</html>
`;
