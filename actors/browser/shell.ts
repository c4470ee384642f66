/**
 * The HTML of `GET /join`: a form for the run's token, and the figures the
 * tab's trainer fills in (actors/browser/page.ts, bundled as `/join/page.js`).
 * The run id goes into the page, since the handshake signs it. No outside
 * resource: it works offline.
 *
 * @module
 */
import { JOIN_PATHS } from "./join.ts";

const STYLE = `
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1f2933; background: #f5f7fa; }
main { max-width: 760px; margin: 0 auto; padding: 16px 24px; display: grid; gap: 12px; }
h1 { font-size: 20px; margin: 0; } h1 span { color: #616e7c; font-weight: 500; }
form, section { background: #fff; border: 1px solid #e4e7eb; border-radius: 8px; padding: 12px 14px; }
input { font: inherit; padding: 4px 8px; width: 16em; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dt { color: #616e7c; } dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: 2px 8px; border-bottom: 1px solid #e4e7eb; }
#log { font: 12px ui-monospace, monospace; white-space: pre-wrap; max-height: 12em; overflow: auto; }
`;

function escapeHtml(s: string): string {
  return s.replace(
    /[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!,
  );
}

/**
 * The join page of run `run`.
 *
 * @example
 * ```ts
 * import { joinPageHtml } from "./shell.ts";
 * console.log(joinPageHtml("demo").includes('data-run="demo"')); // true
 * ```
 */
export function joinPageHtml(run: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Join ${escapeHtml(run)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>${STYLE}</style></head>
<body data-run="${escapeHtml(run)}"><main>
<h1>Train with this tab <span>run ${escapeHtml(run)}</span></h1>
<form id="join"><label>Run token <input id="token" type="password" autocomplete="off"></label>
<button id="go" type="submit">Join</button> <button id="leave" type="button" disabled>Leave</button>
</form>
<section><dl>
<dt>State</dt><dd id="state">not joined (WebGPU needed)</dd>
<dt>Node</dt><dd id="node">-</dd><dt>Key</dt><dd id="key">-</dd>
<dt>Adapter</dt><dd id="adapter">-</dd><dt>Tokens/s</dt><dd id="speed">-</dd>
</dl></section>
<section><table><thead><tr><th>round</th><th>local loss</th><th>contributed</th><th>sent</th>
<th>global loss</th><th>θ hash</th></tr></thead><tbody id="rounds"></tbody></table></section>
<section id="log"></section>
</main><script type="module" src="${JOIN_PATHS.script}"></script></body></html>`;
}
