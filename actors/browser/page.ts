/**
 * The script of `GET /join` (runs in the browser; bundled by esbuild as
 * `/join/page.js`): it keeps the tab's key in the page's storage, joins the
 * run with the token typed in (actors/browser/join.ts), and shows each round:
 * the local loss, whether and what the tab contributed, the round's global
 * loss (the host's `GET /status`) and the θ hash. "Leave" tells the tracker;
 * closing the tab ends it all, and the host evicts the silent trainer.
 *
 * The figures are also on `document.body.dataset` (`rounds`, a JSON list of
 * reports) for a test to read.
 *
 * @module
 */
import { freshKeyPem, identityFromPem, type NodeIdentity } from "../../transport/identity.ts";
import type { RunNews, TrainerReportMsg } from "../run_protocol.ts";
import { joinFromTab, type TabTrainer } from "./join.ts";
import { engineSettings } from "../run_settings.ts";

/**
 * The few browser APIs the page uses, typed here: the DOM library's global
 * types would clash with Deno's in a whole-repo `deno check`.
 */
interface Element {
  textContent: string | null;
  value: string;
  disabled: boolean;
  scrollTop: number;
  scrollHeight: number;
  appendChild(child: Element): Element;
  addEventListener(type: string, listener: (ev: { preventDefault(): void }) => void): void;
}
interface Browser {
  document: {
    body: { dataset: Record<string, string | undefined> };
    getElementById(id: string): Element | null;
    createElement(tag: string): Element;
  };
  localStorage: { getItem(key: string): string | null; setItem(key: string, value: string): void };
  location: { protocol: string; host: string };
}
const { document, localStorage, location } = globalThis as unknown as Browser;

const KEY_ITEM = "decentra.node.key";

function $(id: string): Element {
  const el = document.getElementById(id);
  if (!el) throw new Error(`Join page: no element #${id}`);
  return el;
}

/** The tab's key: kept in localStorage, so that it keeps its node id (and allow-list entry). */
async function tabIdentity(): Promise<NodeIdentity> {
  let pem = localStorage.getItem(KEY_ITEM);
  if (!pem) {
    pem = await freshKeyPem();
    localStorage.setItem(KEY_ITEM, pem);
  }
  return await identityFromPem(pem, "this page's storage");
}

function log(line: string): void {
  const el = $("log");
  el.textContent += `${new Date().toISOString().slice(11, 19)} ${line}\n`;
  el.scrollTop = el.scrollHeight;
}

const reports: (TrainerReportMsg & { globalLoss: number })[] = [];
let tokensPerRound = 0;

/** The run's newest evaluation as a log line: its loss, and the text the model wrote. */
function newsLine(n: RunNews): string {
  const loss = `eval after round ${n.round}: loss ${n.eval_loss.toFixed(4)}`;
  return n.sample ? `${loss}; the model writes: ${n.sample.prompt}${n.sample.text}` : loss;
}

/** A round's row: the trainer's report, and the round's loss as its update told it. */
function showReport(r: TrainerReportMsg, globalLoss: number): void {
  const row: (typeof reports)[number] = { ...r, globalLoss };
  reports.push(row);
  document.body.dataset.rounds = JSON.stringify(reports);
  const tr = document.createElement("tr");
  [
    String(r.round),
    r.contributed ? r.loss.toFixed(4) : "-",
    r.contributed ? `yes, ${tokensPerRound} tokens` : "no",
    `${(r.bytesUp / 1024).toFixed(1)} KiB`,
    globalLoss.toFixed(4),
    r.hash.slice(0, 16),
  ].forEach((c) => {
    tr.appendChild(document.createElement("td")).textContent = c;
  });
  $("rounds").appendChild(tr);
  if (r.contributed && r.innerMs > 0) {
    $("speed").textContent = `${Math.round(tokensPerRound / (r.innerMs / 1000))} (inner phase)`;
  }
  $("state").textContent = `training: round ${r.round + 1}`;
}

async function join(ev: { preventDefault(): void }): Promise<void> {
  ev.preventDefault();
  $("go").disabled = true;
  if (!("gpu" in navigator)) {
    $("state").textContent = "no WebGPU in this browser (navigator.gpu is missing)";
    return;
  }
  const adapter = await navigator.gpu.requestAdapter();
  $("adapter").textContent = adapter
    ? [adapter.info.vendor, adapter.info.architecture, adapter.info.description]
      .filter(Boolean).join(" ")
    : "none";
  const identity = await tabIdentity();
  $("state").textContent = "joining";
  const token = $("token").value;
  let tab: TabTrainer;
  try {
    tab = await joinFromTab({
      url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`,
      run: document.body.dataset.run ?? "",
      ...(token ? { secret: token } : {}),
      identity,
      onEvent: (e) => {
        if (e.type === "report") showReport(e.report, e.update.loss);
        else if (e.type === "rejected") log(`rejected: ${e.reason}: ${e.detail}`);
        else if (e.type === "news") log(newsLine(e.news));
        else if (e.type === "run_over") {
          log(`the run is over: all ${e.rounds} rounds closed before this tab held θ`);
        } else log(e.message);
      },
    });
  } catch (err) {
    $("state").textContent = err instanceof Error ? err.message : String(err);
    $("go").disabled = false;
    return;
  }
  const engine = engineSettings(tab.settings);
  tokensPerRound = tab.settings.innerSteps * engine.batch * (engine.gradAccum ?? 1) *
    engine.config.blockSize;
  document.body.dataset.node = tab.path;
  $("node").textContent = tab.path;
  $("state").textContent = "joined: waiting for the next round";
  void tab.closed.then(() => {
    $("state").textContent = "the host closed the connection";
  });
  // Leaving says so to the tracker at once; closing the tab leaves it to evict the silent trainer.
  $("leave").disabled = false;
  $("leave").addEventListener("click", () => {
    $("leave").disabled = true;
    void tab.leave().then(() => $("state").textContent = "left the run");
  });
}

$("join").addEventListener("submit", (ev) => void join(ev));
// The key shows before joining: a run with an allow-list admits the tab once its host lists it.
void tabIdentity().then((id) => $("key").textContent = id.fingerprint);
