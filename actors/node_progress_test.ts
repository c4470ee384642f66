import { deepEqual, equal } from "@std/assert";
import { eventPrinter, sampleLines } from "./node_progress.ts";
import { ProgressLine } from "../kernels/cli.ts";

/** A progress line writing to a file (no terminal), and what it wrote. */
function fileProgress() {
  const written: string[] = [];
  const dec = new TextDecoder();
  const out = {
    isTerminal: () => false,
    writeSync(p: Uint8Array) {
      written.push(dec.decode(p));
      return p.length;
    },
  };
  return { written, progress: new ProgressLine({ out }) };
}

Deno.test("evaluations during a run get lines of their own, with the text the model wrote", () => {
  const { written, progress } = fileProgress();
  const print = eventPrinter({ json: false, progress, rounds: 10 });
  print({ event: "eval", round: 3, eval_loss: 2.95449, wall_s: 23.9 });
  print({
    event: "eval",
    round: 9,
    eval_loss: 2.5468,
    sample: { prompt: "The ", text: "people of\nthe\x07 Union" },
    wall_s: 40.2,
  });
  deepEqual(written.join("").split("\n"), [
    "[23.9s] eval after round 3: loss 2.9545",
    "[40.2s] eval after round 9: loss 2.5468; the model writes:",
    "  The people of",
    "  the\ufffd Union",
    "",
  ]);
});

Deno.test("a sample is shown indented, control bytes replaced so they cannot move the cursor", () => {
  equal(
    sampleLines("text from the final θ after 3 rounds", "The ", "people\x1b[2Jof\r\tthe\nUnion"),
    "text from the final θ after 3 rounds:\n  The people\ufffd[2Jof\ufffd\tthe\n  Union",
  );
});

Deno.test("a joined trainer's rounds show on its progress line, its totals at the end", () => {
  const { written, progress } = fileProgress();
  const print = eventPrinter({ json: false, progress });
  print({
    event: "trained",
    round: 4,
    rounds: 10,
    loss: 2.91234,
    run_loss: 2.95,
    trainers: 3,
    contributed: true,
    tokens: 163840,
    tokens_per_s: 65536,
    inner_ms: 2500,
    blocked_ms: 100,
    utilization: 0.9615,
    bytes_up: 122590,
    bytes_down: 122666,
    theta_hash: "h",
    wall_s: 30,
  });
  equal(
    written.join(""),
    "round 5/10 | loss 2.9123 | run loss 2.9500 (3 trainers) | 65.5k tok/s | utilization 96.2% | " +
      "123kB up 123kB down\n",
  );
});
