/**
 * `GET /metrics`: a host's run in the Prometheus text exposition format
 * (version 0.0.4): one HELP and one TYPE line per family, then its samples.
 *
 * @module
 */
import type { LiveState } from "./history.ts";

/** The content type of the text exposition format. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** A metric family: name, type, help, and its samples (labels, value). */
interface Family {
  name: string;
  type: "counter" | "gauge" | "histogram";
  help: string;
  samples: { suffix?: string; labels?: Record<string, string>; value: number }[];
}

/**
 * Escapes a label value: backslash, double quote and line feed.
 *
 * @example Escaping a run id
 * ```ts
 * import { escapeLabelValue } from "./metrics.ts";
 * console.log(escapeLabelValue('a "b"\\c')); // a \"b\"\\c
 * ```
 */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** Escapes HELP text: backslash and line feed. */
function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** A sample value as the format writes it (`+Inf`, `-Inf`, `NaN`, or the number). */
function formatValue(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "+Inf";
  if (x === -Infinity) return "-Inf";
  return String(x);
}

function labelText(labels: Record<string, string> | undefined): string {
  const entries = Object.entries(labels ?? {});
  if (entries.length === 0) return "";
  return `{${entries.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(",")}}`;
}

/** The families of a run's live state, in the order they are written. */
function families(s: LiveState): Family[] {
  const one = (value: number | undefined) => value === undefined ? [] : [{ value }];
  const byLabel = (label: string, counts: Record<string, number>) =>
    Object.keys(counts).sort().map((k) => ({ labels: { [label]: k }, value: counts[k] }));
  const members: Record<string, number> = {};
  for (const m of s.members) {
    for (const role of m.roles) {
      const key = `${role}\u0000${m.state}`;
      members[key] = (members[key] ?? 0) + 1;
    }
  }
  const h = s.commit_latency;
  return [
    {
      name: "decentra_run_info",
      type: "gauge",
      help: "The run this host serves (always 1).",
      samples: [{ labels: { run: s.run }, value: 1 }],
    },
    {
      name: "decentra_round",
      type: "gauge",
      help: "The round of the newest view the run published.",
      samples: [{ value: s.round }],
    },
    {
      name: "decentra_view_epoch",
      type: "gauge",
      help: "The epoch of the newest view the run published.",
      samples: [{ value: s.epoch }],
    },
    {
      name: "decentra_rounds_total",
      type: "counter",
      help: "Rounds closed since this host started.",
      samples: [{ value: s.rounds_done }],
    },
    {
      name: "decentra_loss",
      type: "gauge",
      help: "Mean inner training loss of the last closed round, nats per byte.",
      samples: one(s.last_round?.loss),
    },
    {
      name: "decentra_eval_loss",
      type: "gauge",
      help: "Validation loss of the latest evaluation, nats per byte.",
      samples: one(s.last_eval?.eval_loss),
    },
    {
      name: "decentra_tokens_total",
      type: "counter",
      help: "Tokens (bytes) trained on by the contributions of closed rounds.",
      samples: [{ value: s.totals.tokens }],
    },
    {
      name: "decentra_bytes_up_total",
      type: "counter",
      help: "Encoded bytes trainers sent (their contributions) in closed rounds.",
      samples: [{ value: s.totals.bytes_up }],
    },
    {
      name: "decentra_bytes_down_total",
      type: "counter",
      help: "Encoded bytes trainers received (the rounds' updates) in closed rounds.",
      samples: [{ value: s.totals.bytes_down }],
    },
    {
      name: "decentra_utilization",
      type: "gauge",
      help: "Share of the last closed round the contributors spent training (0 to 1).",
      samples: one(s.last_round?.utilization),
    },
    {
      name: "decentra_trainers_in_view",
      type: "gauge",
      help: "Trainers in the newest view the run published.",
      samples: [{ value: s.trainers_in_view }],
    },
    {
      name: "decentra_members",
      type: "gauge",
      help: "Members of the run by role and state (a member counts once per role).",
      samples: Object.keys(members).sort().map((k) => {
        const [role, state] = k.split("\u0000");
        return { labels: { role, state }, value: members[k] };
      }),
    },
    {
      name: "decentra_evicted_members",
      type: "gauge",
      help: "Trainers evicted for silence that have not joined again.",
      samples: [{ value: Object.keys(s.evicted).length }],
    },
    {
      name: "decentra_restarts_total",
      type: "counter",
      help: "Restarts by supervisor and child, e.g. trainers/2.",
      samples: byLabel("child", s.restarts_by_child),
    },
    {
      name: "decentra_rejected_contributions_total",
      type: "counter",
      help: "Contributions the aggregators refused, by reason.",
      samples: byLabel("reason", s.rejected_by_reason),
    },
    {
      name: "decentra_checkpoint_commit_latency_seconds",
      type: "histogram",
      help: "Seconds from the close of a round to the commit of the state it produced.",
      samples: [
        ...h.bounds.map((b, i) => ({
          suffix: "_bucket",
          labels: { le: formatValue(b) },
          value: h.counts[i],
        })),
        { suffix: "_bucket", labels: { le: "+Inf" }, value: h.counts[h.bounds.length] },
        { suffix: "_sum", value: h.sum },
        { suffix: "_count", value: h.count },
      ],
    },
    {
      name: "decentra_latest_committed_round",
      type: "gauge",
      help: "The newest round the checkpoint keepers committed.",
      samples: one(s.latest_commit?.round),
    },
  ];
}

/**
 * Writes a run's live state in the Prometheus text format.
 *
 * @example
 * ```ts ignore
 * const text = renderMetrics(await history.live());
 * ```
 */
export function renderMetrics(state: LiveState): string {
  const lines: string[] = [];
  for (const f of families(state)) {
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      lines.push(`${f.name}${s.suffix ?? ""}${labelText(s.labels)} ${formatValue(s.value)}`);
    }
  }
  return lines.join("\n") + "\n";
}
