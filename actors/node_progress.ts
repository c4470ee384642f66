/**
 * What `deno task node` shows of a run: each event appended to the run log
 * (`<run dir>/run.jsonl`) and printed, either as one JSON object per line
 * (`--json`) or as one progress line on stderr (round, loss, trainers,
 * utilization, ETA, newest commit) with warnings and the summary on lines of
 * their own.
 *
 * @module
 */
import type { RunEvent } from "./monitor.ts";
import { ProgressLine } from "../kernels/cli.ts";
import { shortNumber } from "./dashboard/plot.ts";

/** Options of {@linkcode eventPrinter}. */
export interface PrinterOptions {
  /** One JSON object per event on stdout instead of the progress line. */
  json: boolean;
  /** Where the run log (run.jsonl) goes, when anywhere. */
  runDir?: string;
  /** The round the run ends before (for the progress line's ETA), when known. */
  rounds?: number;
  /** Where the progress line goes (default: stderr). */
  progress?: ProgressLine;
}

/**
 * Prints events as JSON lines or as one progress line (round, loss, trainers,
 * utilization, ETA) with warnings and the summary on lines of their own, and
 * appends every event to the run log.
 *
 * @example
 * ```ts
 * import { eventPrinter } from "./node_progress.ts";
 * const emit = eventPrinter({ json: true });
 * emit({ event: "log", level: "info", message: "hello", wall_s: 0 });
 * ```
 */
export function eventPrinter(args: PrinterOptions): (e: RunEvent) => void {
  let log: Deno.FsFile | undefined;
  if (args.runDir) {
    Deno.mkdirSync(args.runDir, { recursive: true });
    log = Deno.openSync(`${args.runDir}/run.jsonl`, { append: true, create: true });
  }
  const enc = new TextEncoder();
  const text = args.json ? undefined : roundText(args.rounds);
  const progress = args.progress ?? (args.json ? undefined : new ProgressLine());
  return (e) => {
    const line = JSON.stringify(e);
    log?.writeSync(enc.encode(line + "\n"));
    if (e.event === "done") log?.close();
    if (!progress || !text) {
      console.log(line);
      return;
    }
    const at = `[${typeof e.wall_s === "number" ? e.wall_s.toFixed(1) : "-"}s]`;
    if (e.event === "committed") {
      progress.refresh(text.committed(e.round, e.holders.length));
    } else if (e.event === "resumed") {
      progress.note(
        `resumed round ${e.round} from ${e.dir}: params hash ${e.params_hash}, ${e.cursors} data cursors`,
      );
    } else if (e.event === "round") {
      progress.update(text.round(e));
      if (new Set(e.theta_hashes).size > 1) {
        progress.note(`${at} warn: round ${e.round}: θ hashes DIFFER (${e.theta_hashes})`);
      }
      if (e.rejected.length) progress.note(`${at} warn: round ${e.round}: rejected ${e.rejected}`);
    } else if (e.event === "trained") {
      progress.update(text.trained(e));
    } else if (e.event === "eval") {
      const loss = `${at} eval after round ${e.round}: loss ${e.eval_loss.toFixed(4)}`;
      progress.note(
        e.sample ? sampleLines(`${loss}; the model writes`, e.sample.prompt, e.sample.text) : loss,
      );
    } else if (e.event === "log") {
      if (e.level === "warn") progress.note(`${at} warn: ${e.message}`);
      else progress.update(`${at} ${e.message}`);
      text.started(e.wall_s);
    } else {
      progress.done(text.last());
      console.log(`done: ${JSON.stringify(e, null, 2)}`);
      if (typeof e.final_sample === "string") {
        const title = `text from the final θ after ${e.rounds} rounds`;
        console.log(sampleLines(title, String(e.sample_prompt ?? ""), e.final_sample));
      }
    }
  };
}

/**
 * A text sample as a person reads it: `title`, then the prompt and what the
 * model wrote after it, each line indented, control bytes other than line
 * breaks and tabs shown as U+FFFD (they could move a terminal's cursor).
 *
 * @example
 * ```ts
 * import { sampleLines } from "./node_progress.ts";
 * console.log(sampleLines("text from the final θ", "The ", "people\nof"));
 * ```
 */
export function sampleLines(title: string, prompt: string, text: string): string {
  // deno-lint-ignore no-control-regex
  const shown = (prompt + text).replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, "\ufffd");
  return `${title}:\n` + shown.split("\n").map((l) => `  ${l}`).join("\n");
}

/**
 * The progress line's text: rounds done (so "round 2/10" is the state that
 * checkpoint round 2 holds), loss, trainers, utilization, time per round and
 * ETA, and the newest committed round.
 */
function roundText(rounds: number | undefined) {
  let base = "";
  let committed = "";
  let roundsSeen = 0;
  // Rounds are timed from the last event before the first one (trainers ready), not from
  // process start, so that engine warm-up does not inflate the ETA.
  let since: number | undefined;
  const eta = (done: number, wall: number) => {
    if (rounds === undefined || since === undefined) return "";
    const perRound = (wall - since) / roundsSeen;
    return ` | ${perRound.toFixed(1)} s/round | ETA ${Math.round(perRound * (rounds - done))} s`;
  };
  const line = () => [base, committed].filter((x) => x).join(" | ");
  return {
    started(wall: number) {
      if (roundsSeen === 0) since = wall;
    },
    round(e: Extract<RunEvent, { event: "round" }>): string {
      roundsSeen++;
      const of = rounds === undefined ? "" : `/${rounds}`;
      base = `round ${e.round + 1}${of} | loss ${e.loss.toFixed(4)} | ${e.trainers} trainers | ` +
        `utilization ${(e.utilization * 100).toFixed(1)}%${eta(e.round + 1, e.wall_s)}`;
      return line();
    },
    /** A joined trainer's round (its rounds are the host's: no ETA here). */
    trained(e: Extract<RunEvent, { event: "trained" }>): string {
      const own = e.loss === null ? "not counted" : `loss ${e.loss.toFixed(4)}`;
      const of = e.rounds > 0 ? `/${e.rounds}` : "";
      base = `round ${e.round + 1}${of} | ${own} | run loss ${e.run_loss.toFixed(4)} ` +
        `(${e.trainers} trainers) | ${shortNumber(e.tokens_per_s)} tok/s | ` +
        `utilization ${(e.utilization * 100).toFixed(1)}% | ` +
        `${shortNumber(e.bytes_up)}B up ${shortNumber(e.bytes_down)}B down`;
      return line();
    },
    committed(round: number, keepers: number): string {
      committed = `committed ${round} (${keepers} keepers)`;
      return line();
    },
    last: () => line() || "no round closed",
  };
}
