/**
 * Line charts as SVG markup, for the dashboard page (no chart library: the
 * page works offline). Plain functions of the data, so that they run and are
 * tested outside a browser too.
 *
 * @module
 */

/** One line of a chart. */
export interface Series {
  name: string;
  /** A CSS colour. */
  color: string;
  /** [x, y] points; non-finite ones are left out. */
  points: readonly (readonly [number, number])[];
  /** Draw a dot on every point (sparse series such as evaluations). */
  dots?: boolean;
  /** Dash the line (a series that may lie on top of another). */
  dashed?: boolean;
}

/** Options of {@linkcode lineChart}. */
export interface ChartOptions {
  width?: number;
  height?: number;
  /** Label of the x axis (default "round"). */
  xLabel?: string;
  /** Formats a y tick (default: up to 3 significant digits). */
  formatY?: (y: number) => string;
  /** Fixed y range instead of the data's. */
  yMin?: number;
  yMax?: number;
}

/**
 * Up to about `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k).
 *
 * @example
 * ```ts
 * import { ticks } from "./plot.ts";
 * console.log(ticks(0, 10, 5)); // [0, 2, 4, 6, 8, 10]
 * ```
 */
export function ticks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  }
  return out;
}

/** Escapes text for SVG/HTML content and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

/**
 * A number in a short form: 3 significant digits, k/M/G suffixes above a
 * thousand.
 *
 * @example
 * ```ts
 * import { shortNumber } from "./plot.ts";
 * console.log(shortNumber(123456)); // 123k
 * ```
 */
export function shortNumber(x: number): string {
  if (!Number.isFinite(x)) return "–";
  const a = Math.abs(x);
  for (const [d, s] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]] as const) {
    if (a >= d) return `${Number((x / d).toPrecision(3))}${s}`;
  }
  return String(Number(x.toPrecision(3)));
}

/**
 * An SVG line chart of `series` with axes, grid, ticks and a legend; a
 * placeholder text when no series has a point.
 *
 * @example
 * ```ts
 * import { lineChart } from "./plot.ts";
 * const svg = lineChart([{ name: "loss", color: "#2563eb", points: [[0, 5], [1, 4]] }]);
 * console.log(svg.startsWith("<svg")); // true
 * ```
 */
export function lineChart(series: readonly Series[], options: ChartOptions = {}): string {
  const width = options.width ?? 420;
  const height = options.height ?? 220;
  const fmt = options.formatY ?? shortNumber;
  const pad = { left: 52, right: 12, top: 30, bottom: 34 };
  const clean = series.map((s) => ({
    ...s,
    points: s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)),
  }));
  const all = clean.flatMap((s) => s.points);
  const open = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" ` +
    `width="100%" role="img" class="chart">`;
  if (all.length === 0) {
    return `${open}<text x="${width / 2}" y="${height / 2}" text-anchor="middle" ` +
      `class="empty">waiting for the first round</text></svg>`;
  }
  const x0 = Math.min(...all.map((p) => p[0]));
  let x1 = Math.max(...all.map((p) => p[0]));
  if (x1 === x0) x1 = x0 + 1;
  let y0 = options.yMin ?? Math.min(...all.map((p) => p[1]));
  let y1 = options.yMax ?? Math.max(...all.map((p) => p[1]));
  if (y1 === y0) {
    const d = Math.abs(y0) * 0.1 || 1;
    y0 -= d;
    y1 += d;
  } else if (options.yMin === undefined || options.yMax === undefined) {
    const d = (y1 - y0) * 0.08;
    if (options.yMin === undefined) y0 -= d;
    if (options.yMax === undefined) y1 += d;
  }
  const iw = width - pad.left - pad.right;
  const ih = height - pad.top - pad.bottom;
  const sx = (x: number) => pad.left + (x - x0) / (x1 - x0) * iw;
  const sy = (y: number) => pad.top + (1 - (y - y0) / (y1 - y0)) * ih;
  const f1 = (v: number) => v.toFixed(1);
  const parts: string[] = [open];
  for (const t of ticks(y0, y1, 4)) {
    parts.push(
      `<line x1="${pad.left}" x2="${width - pad.right}" y1="${f1(sy(t))}" y2="${f1(sy(t))}" ` +
        `class="grid"/>`,
      `<text x="${pad.left - 6}" y="${f1(sy(t) + 4)}" text-anchor="end" class="tick">` +
        `${escapeXml(fmt(t))}</text>`,
    );
  }
  for (const t of ticks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
    parts.push(
      `<text x="${f1(sx(t))}" y="${height - pad.bottom + 16}" text-anchor="middle" ` +
        `class="tick">${t}</text>`,
    );
  }
  parts.push(
    `<line x1="${pad.left}" x2="${width - pad.right}" y1="${pad.top + ih}" ` +
      `y2="${pad.top + ih}" class="axis"/>`,
    `<text x="${width - pad.right}" y="${height - 4}" text-anchor="end" class="label">` +
      `${escapeXml(options.xLabel ?? "round")}</text>`,
  );
  let lx = pad.left;
  for (const s of clean) {
    if (s.points.length > 1) {
      const d = s.points.map(([x, y], i) => `${i ? "L" : "M"}${f1(sx(x))},${f1(sy(y))}`).join("");
      const dash = s.dashed ? ` stroke-dasharray="6 4"` : "";
      parts.push(
        `<path d="${d}" fill="none" stroke="${escapeXml(s.color)}"${dash} class="line"/>`,
      );
    }
    const dotted = s.dots || s.points.length === 1 ? s.points : s.points.slice(-1);
    for (const [x, y] of dotted) {
      parts.push(
        `<circle cx="${f1(sx(x))}" cy="${f1(sy(y))}" r="3" fill="${escapeXml(s.color)}"/>`,
      );
    }
    parts.push(
      `<rect x="${lx}" y="9" width="10" height="10" rx="2" fill="${escapeXml(s.color)}"/>`,
      `<text x="${lx + 14}" y="18" class="legend">${escapeXml(s.name)}</text>`,
    );
    lx += 26 + 7 * s.name.length;
  }
  parts.push("</svg>");
  return parts.join("");
}
