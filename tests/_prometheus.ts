/**
 * A strict reader of the Prometheus text exposition format (0.0.4) for
 * tests: every line is parsed, and anything the format does not allow is an
 * error naming the line (a sample before its TYPE, a family split in two,
 * a bad name, a bad escape, a duplicate series, a histogram whose buckets
 * are not cumulative or whose +Inf bucket is not its count).
 *
 * @module
 */

/** One sample line. */
export interface Sample {
  /** The sample's name (with a histogram's `_bucket`, `_sum` or `_count`). */
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A metric family: its HELP, TYPE and samples. */
export interface Family {
  name: string;
  type: "counter" | "gauge" | "histogram" | "summary" | "untyped";
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

function parseValue(text: string, where: string): number {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) {
    throw new SyntaxError(`${where}: bad value "${text}"`);
  }
  return Number(text);
}

/** Reads `{a="x",b="y"}` from `text` at `i` (at the `{`); returns the labels and the end. */
function parseLabels(text: string, i: number, where: string): [Record<string, string>, number] {
  const labels: Record<string, string> = {};
  i++;
  while (text[i] !== "}") {
    const eq = text.indexOf("=", i);
    if (eq < 0) throw new SyntaxError(`${where}: label without "="`);
    const name = text.slice(i, eq).trim();
    if (!LABEL.test(name) || name.startsWith("__")) {
      throw new SyntaxError(`${where}: bad label name "${name}"`);
    }
    if (name in labels) throw new SyntaxError(`${where}: label "${name}" twice`);
    if (text[eq + 1] !== '"') throw new SyntaxError(`${where}: label "${name}" value not quoted`);
    let value = "";
    let j = eq + 2;
    for (;; j++) {
      const c = text[j];
      if (c === undefined) throw new SyntaxError(`${where}: unterminated label value`);
      if (c === '"') break;
      if (c === "\n") throw new SyntaxError(`${where}: raw line feed in a label value`);
      if (c === "\\") {
        const e = text[++j];
        if (e === "\\") value += "\\";
        else if (e === '"') value += '"';
        else if (e === "n") value += "\n";
        else throw new SyntaxError(`${where}: bad escape "\\${e}" in a label value`);
      } else value += c;
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ",") i++;
    else if (text[i] !== "}") throw new SyntaxError(`${where}: expected "," or "}" after a label`);
  }
  return [labels, i + 1];
}

function unescapeHelp(text: string, where: string): string {
  return text.replace(/\\(.)/g, (_, e) => {
    if (e === "\\") return "\\";
    if (e === "n") return "\n";
    throw new SyntaxError(`${where}: bad escape "\\${e}" in HELP`);
  });
}

/** The family a sample name belongs to, given the declared families. */
function familyOf(name: string, families: Map<string, Family>): Family | undefined {
  const exact = families.get(name);
  if (exact) return exact;
  const m = /^(.*)(_bucket|_sum|_count)$/.exec(name);
  const base = m ? families.get(m[1]) : undefined;
  if (!base) return undefined;
  if (base.type === "histogram") return base;
  if (base.type === "summary" && m![2] !== "_bucket") return base;
  return undefined;
}

function checkHistogram(f: Family): void {
  const buckets = f.samples.filter((s) => s.name === `${f.name}_bucket`);
  const count = f.samples.find((s) => s.name === `${f.name}_count`);
  const sum = f.samples.find((s) => s.name === `${f.name}_sum`);
  if (!count || !sum) throw new SyntaxError(`${f.name}: histogram without _sum or _count`);
  let last = -Infinity;
  let lastCount = 0;
  for (const b of buckets) {
    if (!("le" in b.labels)) throw new SyntaxError(`${f.name}: bucket without "le"`);
    const le = parseValue(b.labels.le, `${f.name} le`);
    if (!(le > last)) throw new SyntaxError(`${f.name}: bucket bounds not increasing at ${le}`);
    if (b.value < lastCount) throw new SyntaxError(`${f.name}: buckets not cumulative at ${le}`);
    last = le;
    lastCount = b.value;
  }
  if (last !== Infinity) throw new SyntaxError(`${f.name}: no +Inf bucket`);
  if (lastCount !== count.value) {
    throw new SyntaxError(`${f.name}: +Inf bucket ${lastCount} is not _count ${count.value}`);
  }
}

/**
 * Parses an exposition; throws a SyntaxError naming the line for anything
 * the format does not allow. Families by name, in order.
 */
export function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const series = new Set<string>();
  let current: Family | undefined;
  const lines = text.split("\n");
  if (lines.at(-1) !== "") throw new SyntaxError("Exposition does not end with a line feed");
  lines.pop();
  lines.forEach((line, n) => {
    const where = `line ${n + 1} (${line.slice(0, 60)})`;
    const meta = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
    if (meta) {
      const [, kind, name, rest = ""] = meta;
      if (!NAME.test(name)) throw new SyntaxError(`${where}: bad metric name "${name}"`);
      let f = families.get(name);
      if (!f) {
        f = { name, type: "untyped", help: "", samples: [] };
        families.set(name, f);
      } else if (f !== current) throw new SyntaxError(`${where}: family ${name} split in two`);
      if (f.samples.length > 0) throw new SyntaxError(`${where}: ${kind} after samples`);
      current = f;
      if (kind === "HELP") f.help = unescapeHelp(rest, where);
      else {
        if (!TYPES.has(rest)) throw new SyntaxError(`${where}: bad type "${rest}"`);
        f.type = rest as Family["type"];
      }
      return;
    }
    if (line.startsWith("#") || line.trim() === "") return;
    const nameEnd = line.search(/[{ ]/);
    if (nameEnd <= 0) throw new SyntaxError(`${where}: no sample name`);
    const name = line.slice(0, nameEnd);
    if (!NAME.test(name)) throw new SyntaxError(`${where}: bad metric name "${name}"`);
    let labels: Record<string, string> = {};
    let i = nameEnd;
    if (line[i] === "{") [labels, i] = parseLabels(line, i, where);
    if (line[i] !== " ") throw new SyntaxError(`${where}: expected a space before the value`);
    const fields = line.slice(i + 1).split(" ");
    if (fields.length > 2 || (fields[1] !== undefined && !/^-?\d+$/.test(fields[1]))) {
      throw new SyntaxError(`${where}: expected "value [timestamp]"`);
    }
    const value = parseValue(fields[0], where);
    const f = familyOf(name, families);
    if (!f) throw new SyntaxError(`${where}: sample ${name} has no TYPE line before it`);
    if (f !== current) throw new SyntaxError(`${where}: family ${f.name} split in two`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (series.has(key)) throw new SyntaxError(`${where}: series given twice`);
    series.add(key);
    if (f.type === "counter" && !(value >= 0)) {
      throw new SyntaxError(`${where}: counter value ${value} is not >= 0`);
    }
    f.samples.push({ name, labels, value });
  });
  for (const f of families.values()) if (f.type === "histogram") checkHistogram(f);
  return families;
}
