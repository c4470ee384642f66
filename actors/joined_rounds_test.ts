import { deepEqual, equal } from "@std/assert";
import { JoinedRounds } from "./joined_rounds.ts";
import { sealReport, type TrainerReportMsg } from "./run_protocol.ts";

function report(round: number, contributed: boolean): TrainerReportMsg {
  return sealReport({
    type: "trainer_report",
    run: "r",
    trainer: "n/node/trainer",
    round,
    hash: `h${round}`,
    loss: contributed ? 3.123456 : 0,
    contributed,
    innerMs: contributed ? 2000 : 0,
    blockedMs: contributed ? 500 : 0,
    bytesUp: contributed ? 1000 : 0,
    bytesDown: 2000,
  });
}

Deno.test("a joined trainer's rounds: its loss, speed and share of the round beside the run's, and the totals", () => {
  let wall = 10;
  // tiny: batch 2 (its config's), context 8; 4 inner steps of 2 micro-batches: 128 tokens a round.
  const rounds = new JoinedRounds({
    run: "r",
    config: "tiny",
    rounds: 3,
    innerSteps: 4,
    gradAccum: 2,
    outer: { lr: 1, momentum: 0 },
  }, () => wall);
  const first = rounds.record({
    type: "report",
    report: report(0, true),
    update: { loss: 3.5, trainers: 3 },
  });
  deepEqual(first, {
    event: "trained",
    round: 0,
    rounds: 3,
    loss: 3.1235,
    run_loss: 3.5,
    trainers: 3,
    contributed: true,
    tokens: 128,
    tokens_per_s: 64,
    inner_ms: 2000,
    blocked_ms: 500,
    utilization: 0.8,
    bytes_up: 1000,
    bytes_down: 2000,
    theta_hash: "h0",
    wall_s: 10,
  });
  wall = 12.5;
  // A round its contribution missed (it came late): applied, not counted.
  const second = rounds.record({
    type: "report",
    report: report(1, false),
    update: { loss: 3.25, trainers: 2 },
  });
  equal(second.loss, null);
  equal(second.tokens, 0);
  equal(second.utilization, 0);
  deepEqual(rounds.summary("n/node/trainer"), {
    node: "n/node/trainer",
    rounds: 2,
    rounds_contributed: 1,
    last_round: 1,
    tokens: 128,
    tokens_per_s: 64,
    utilization: 0.8,
    bytes_up: 1000,
    bytes_down: 4000,
    wall_s: 12.5,
  });
});
