import { deepEqual, rejects } from "@std/assert";
import { RunMonitor } from "./monitor.ts";
import { type ReportCursor, sealReport, type TrainerReportMsg } from "./run_protocol.ts";

const cursor = (index: number, step: number): ReportCursor => ({
  seed: 1,
  shard: { index, count: 16 },
  step,
});

function report(trainer: string, round: number, c: ReportCursor): TrainerReportMsg {
  return sealReport({
    type: "trainer_report",
    run: "r",
    trainer,
    round,
    hash: "h",
    loss: 1,
    contributed: true,
    innerMs: 1,
    blockedMs: 0,
    bytesUp: 0,
    bytesDown: 0,
    cursor: c,
  });
}

Deno.test("a resumed run's saved cursors that no trainer reads on from go into every later round", () => {
  const monitor = new RunMonitor({ params: 1, innerSteps: 2, rounds: 0, startRound: 5 }, () => {});
  const saved = { "host/run/trainers/0": cursor(0, 10), "host/run/trainers/1": cursor(1, 10) };
  monitor.seedCursors(5, saved);
  deepEqual(monitor.cursorsAt(5), saved);
  // Resumed with one trainer: it reads on from shard 0; shard 1 waits at step 10.
  monitor.report(report("host/run/trainers/0", 5, cursor(0, 12)));
  deepEqual(monitor.cursorsAt(6), {
    "host/run/trainers/0": cursor(0, 12),
    "host/run/trainers/1": cursor(1, 10),
  });
  // A trainer under a saved id that reads another shard keeps its id; the saved cursor is kept too.
  monitor.report(report("host/run/trainers/1", 6, cursor(2, 2)));
  monitor.report(report("host/run/trainers/0", 6, cursor(0, 14)));
  deepEqual(monitor.cursorsAt(7), {
    "host/run/trainers/0": cursor(0, 14),
    "host/run/trainers/1": cursor(2, 2),
    "parked/1/16": cursor(1, 10),
  });
  // Once a trainer reads the saved shard on, its own cursor is the only one.
  monitor.report(report("host/run/trainers/2", 7, cursor(1, 12)));
  deepEqual(monitor.cursorsAt(8), { "host/run/trainers/2": cursor(1, 12) });
});

Deno.test("a run that fails before its last round rejects done; after it, failing is a no-op", async () => {
  const logs: string[] = [];
  const failed = new RunMonitor({ params: 1, innerSteps: 2, rounds: 3 }, (e) => {
    if (e.event === "log") logs.push(e.message);
  });
  failed.fail(new Error("Run stopped: boom"));
  await rejects(failed.done, /Run stopped: boom/);
  deepEqual(logs, ["Run stopped: boom"]);
  // A monitor whose failure nobody awaits raises no unhandled rejection (the test would fail).
  new RunMonitor({ params: 1, innerSteps: 2, rounds: 3 }, () => {}).fail(new Error("unheard"));
});
