/**
 * The whole run in one process (tracker, aggregator, trainers in Workers on
 * WebGPU), with faults injected: each role's actor throws once, and trainers
 * send a NaN, a wrong-shape and a stale-round contribution. The run must
 * finish every round, with bit-identical θ on all trainers at every round,
 * the restarts counted and every bad contribution refused by name.
 *
 * Slow (several Workers compile shaders): run alone with
 * `deno test -A tests/run_embedded_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";
import { type EmbeddedOptions, runEmbedded } from "../actors/embedded.ts";
import type { RunEvent } from "../actors/monitor.ts";
import { resumeRunDir } from "../checkpoint/resume.ts";
import { acquireGpu } from "../kernels/device.ts";
import { createModel } from "../kernels/model.ts";
import { getConfig } from "../kernels/config.ts";
import { sampleText, textSample } from "../kernels/sample.ts";

/** A run of the tiny model with 3 trainers and H = 3, and the events it emitted. */
async function tinyRun(
  options: Pick<EmbeddedOptions, "run" | "rounds" | "faults" | "sync" | "fragments" | "exchange">,
) {
  const events: RunEvent[] = [];
  const summary = await runEmbedded({
    config: "tiny",
    trainers: 3,
    innerSteps: 3,
    outer: { lr: 1, momentum: 0 },
    evalWindows: 8,
    timeoutMs: 240_000,
    emit: (e) => events.push(e),
    ...options,
  });
  return { summary, events, roundEvents: events.filter((e) => e.event === "round") };
}

Deno.test({
  name: "embedded run survives a crash of every role and refuses bad contributions by name",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const rounds = 6;
    const { summary, events, roundEvents } = await tinyRun({
      run: "embedded-test",
      rounds,
      faults: [
        { afterRound: 0, target: "tracker", fault: { type: "crash", reason: "test" } },
        { afterRound: 0, target: "trainer:1", fault: { type: "poison", kind: "nan" } },
        { afterRound: 1, target: "aggregator:0", fault: { type: "crash", reason: "test" } },
        { afterRound: 1, target: "trainer:2", fault: { type: "poison", kind: "shape" } },
        { afterRound: 2, target: "trainer:0", fault: { type: "poison", kind: "stale" } },
        { afterRound: 3, target: "trainer:2", fault: { type: "crash", reason: "test" } },
      ],
    });
    // Every round closed once, in order.
    deepEqual(roundEvents.map((e) => e.round), [...Array(rounds).keys()]);
    for (const e of roundEvents) {
      ok(e.trainers >= 1, `round ${e.round} closed with ${e.trainers}`);
      equal(new Set(e.theta_hashes).size, 1, `round ${e.round}: ${e.theta_hashes}`);
      ok(e.bytes_up > 0 && e.bytes_down > 0);
    }
    ok(summary.hashes_equal);
    equal(summary.rounds, rounds);
    ok(Number.isFinite(summary.final_eval_loss));
    // Each role's supervisor restarted it.
    const by = summary.restarts_by_child as Record<string, number>;
    ok(by["tracker/tracker"] >= 1, JSON.stringify(by));
    ok(by["aggregators/0"] >= 1, JSON.stringify(by));
    ok(by["trainers/2"] >= 1, JSON.stringify(by));
    ok(summary.restarts >= 3);
    // Bad contributions were refused and named, with the trainer that sent them.
    const logs = events.filter((e) => e.event === "log").map((e) => String(e.message));
    const rejected = logs.filter((l) => l.startsWith("rejected contribution"));
    ok(
      rejected.some((l) => l.includes("non_finite") && l.includes("trainers/1")),
      rejected.join("\n"),
    );
    ok(
      rejected.some((l) => /malformed|wrong_shape/.test(l) && l.includes("trainers/2")),
      rejected.join("\n"),
    );
    ok(
      rejected.some((l) => l.includes("stale_round") && l.includes("trainers/0")),
      rejected.join("\n"),
    );
    // Loss fell over the run.
    ok(summary.last_loss < summary.first_loss, `${summary.first_loss} -> ${summary.last_loss}`);
  },
});

Deno.test({
  name:
    "embedded runs in int4 and top-k (top-k both ways) keep every trainer's θ bit-identical and count real bytes",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const up: Record<string, number> = {};
    const down: Record<string, number> = {};
    for (const exchange of ["int4", "topk:0.05"]) {
      // The top-k run's updates are top-k too; the int4 run's stay int8.
      const updateExchange = exchange === "int4" ? undefined : exchange;
      const events: RunEvent[] = [];
      const summary = await runEmbedded({
        run: `embedded-${exchange.replace(":", "-")}`,
        config: "tiny",
        trainers: 2,
        rounds: 2,
        innerSteps: 3,
        outer: { lr: 1, momentum: 0 },
        exchange,
        ...(updateExchange ? { updateExchange } : {}),
        evalWindows: 8,
        timeoutMs: 240_000,
        emit: (e) => events.push(e),
        faults: [{ afterRound: 0, target: "trainer:1", fault: { type: "poison", kind: "shape" } }],
      });
      const rounds = events.filter((e) => e.event === "round");
      equal(rounds.length, 2, exchange);
      for (const e of rounds) {
        equal(new Set(e.theta_hashes).size, 1, `${exchange} round ${e.round}`);
      }
      ok(summary.hashes_equal);
      equal(summary.exchange, exchange);
      equal(summary.update_exchange, updateExchange ?? "int8");
      ok(Number.isFinite(summary.final_eval_loss));
      // A contribution cut short is refused by name, and the run goes on.
      const logs = events.filter((e) => e.event === "log").map((e) => String(e.message));
      ok(
        logs.some((l) => /rejected contribution.*(malformed|wrong_shape)/.test(l)),
        logs.join("\n"),
      );
      up[exchange] = summary.bytes_up_per_round_per_trainer;
      down[exchange] = summary.bytes_down_per_round_per_trainer;
    }
    // The tiny model's codes: int4 a byte per two values and a scale per 64; top-5% 13 values of
    // 256 at two bytes each and a scale: the messages' sizes follow (msgpack framing aside).
    ok(up["topk:0.05"] < up["int4"] / 3, JSON.stringify(up));
    // What a trainer downloads: an int8 update (a byte a value) against a top-5% one.
    ok(down["topk:0.05"] < down["int4"] / 6, JSON.stringify(down));
    // With 2 fragments an int4 round sends half of the codes, and θ stays bit-identical.
    const { summary: halves, roundEvents } = await tinyRun({
      run: "embedded-int4-fragments",
      rounds: 3,
      exchange: "int4",
      fragments: 2,
    });
    equal(roundEvents.length, 3);
    for (const e of roundEvents) {
      equal(new Set(e.theta_hashes).size, 1, `int4, fragments, ${e.round}`);
    }
    ok(Number.isFinite(halves.final_eval_loss));
    ok(halves.bytes_up_per_round_per_trainer < 0.6 * up["int4"], JSON.stringify(halves));
  },
});

Deno.test({
  name: "embedded run, overlapped with 2 fragments: θ equal every round through crashes",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const rounds = 6;
    const { summary, roundEvents } = await tinyRun({
      run: "embedded-overlap-test",
      rounds,
      sync: "overlapped",
      fragments: 2,
      faults: [
        // A trainer that dies while a round ahead misses an update: it comes back to θ.
        { afterRound: 1, target: "trainer:1", fault: { type: "crash", reason: "test" } },
        { afterRound: 2, target: "aggregator:0", fault: { type: "crash", reason: "test" } },
      ],
    });
    deepEqual(roundEvents.map((e) => e.round), [...Array(rounds).keys()]);
    for (const e of roundEvents) {
      equal(new Set(e.theta_hashes).size, 1, `round ${e.round}: ${e.theta_hashes}`);
      // A fragment's exchange: about half of the parameters' int8 codes per trainer.
      ok(e.bytes_up < 0.6 * e.params * e.trainers, `round ${e.round}: ${e.bytes_up} B up`);
    }
    ok(summary.hashes_equal);
    const by = summary.restarts_by_child as Record<string, number>;
    ok(by["trainers/1"] >= 1, JSON.stringify(by));
    ok(by["aggregators/0"] >= 1, JSON.stringify(by));
    // The restarted trainer contributed again after its restart.
    ok(roundEvents.at(-1)!.trainers === 3, JSON.stringify(roundEvents.at(-1)));
    ok(summary.last_loss < summary.first_loss, `${summary.first_loss} -> ${summary.last_loss}`);
  },
});

Deno.test({
  name:
    "an overlapped run is reproducible: a straggler changes when updates arrive, not where they are merged",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const rounds = 4;
    const plain = await tinyRun({ run: "embedded-repro", rounds, sync: "overlapped" });
    // A trainer held at the first step of a phase a round ahead: the open round's update
    // arrives before that step instead of after it.
    const stalled = await tinyRun({
      run: "embedded-repro",
      rounds,
      sync: "overlapped",
      faults: [{
        afterRound: 0,
        target: "trainer:1",
        fault: { type: "worker_fault", kind: "stall", atStep: 0, ms: 1500 },
      }],
    });
    const hashes = (r: typeof plain) => r.roundEvents.map((e) => e.theta_hashes[0]);
    equal(new Set(hashes(plain)).size, rounds, "θ moved every round");
    deepEqual(hashes(stalled), hashes(plain));
    equal(stalled.summary.final_eval_loss, plain.summary.final_eval_loss);
    for (const r of [plain, stalled]) {
      ok(r.summary.hashes_equal);
      for (const e of r.roundEvents) equal(e.contributors.length, 3, `round ${e.round}`);
    }
  },
});

Deno.test({
  name: "a stall of the host's event loop longer than the eviction silence evicts nobody",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const rounds = 4;
    const events: RunEvent[] = [];
    let stalled = false;
    const summary = await runEmbedded({
      run: "embedded-stall",
      config: "tiny",
      trainers: 2,
      rounds,
      innerSteps: 3,
      outer: { lr: 1, momentum: 0 },
      evalWindows: 8,
      timeoutMs: 240_000,
      emit: (e) => {
        events.push(e);
        // The process's one event loop (tracker, aggregator, trainer actors) is
        // busy for 8 s, longer than the 6 s of silence that evicts a member, as
        // an aggregator's close of a large model or a suspended VM keeps it.
        if (e.event === "round" && e.round === 1 && !stalled) {
          stalled = true;
          const until = Date.now() + 8000;
          while (Date.now() < until) { /* busy */ }
        }
      },
    });
    const logs = events.filter((e) => e.event === "log").map((e) => String(e.message));
    ok(stalled);
    deepEqual(logs.filter((l) => /evicted/.test(l)), [], logs.join("\n"));
    ok(logs.some((l) => /^tracker stalled \d+\.\d s/.test(l)), logs.join("\n"));
    const roundEvents = events.filter((e) => e.event === "round");
    deepEqual(roundEvents.map((e) => e.round), [...Array(rounds).keys()]);
    for (const e of roundEvents) equal(e.contributors.length, 2, `round ${e.round}`);
    ok(summary.hashes_equal);
    equal(summary.restarts, 0);
  },
});

Deno.test({
  name: "the final text sample is the text the committed final θ writes",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "embedded-sample-" });
    try {
      const sample = textSample({ tokens: 48 });
      const events: RunEvent[] = [];
      const summary = await runEmbedded({
        run: "embedded-sample",
        config: "tiny",
        trainers: 2,
        rounds: 2,
        innerSteps: 3,
        outer: { lr: 1, momentum: 0 },
        evalWindows: 8,
        timeoutMs: 240_000,
        checkpoint: { dir, keepers: 1 },
        sample,
        evalEvery: 1,
        emit: (e) => events.push(e),
      });
      equal(summary.sample_prompt, "The ");
      const text = summary.final_sample!;
      ok(new TextEncoder().encode(text).length >= 48, JSON.stringify(text));
      // Evaluations during the run are events; the first takes no sample (it measures what
      // one would cost), the last round's (unless the one before still ran) wrote the final text.
      const evals = events.filter((e) => e.event === "eval");
      ok(evals.length >= 1 && evals[0].round === 0, JSON.stringify(evals));
      equal(evals[0].sample, undefined);
      const last = evals.find((e) => e.round === 1);
      if (last) equal(last.sample?.text, text);
      // The final θ as the keepers committed it (round 2) writes the same text
      // on a model of the trainers' shape and batch, with the same settings.
      const final = await resumeRunDir(dir);
      equal(final.round, 2);
      const gpu = await acquireGpu();
      try {
        const model = await createModel(gpu, final.config, {
          batch: getConfig("tiny").train.batch,
        });
        model.setParams(final.params);
        equal(await sampleText(model, sample), text);
        model.dispose();
      } finally {
        gpu.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "every round the keepers commit holds that round's θ, while the aggregator saves its states in arrays the keepers let go",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "embedded_lease_" });
    try {
      const rounds = 10;
      const events: RunEvent[] = [];
      await runEmbedded({
        run: "embedded-lease",
        config: "tiny",
        trainers: 2,
        rounds,
        innerSteps: 2,
        outer: { lr: 0.7, momentum: 0.9 },
        evalWindows: 8,
        timeoutMs: 240_000,
        // Writers slower than the rounds: keepers hold pieces of rounds waiting to be written
        // while the aggregator saves later states.
        checkpoint: { dir, keepers: 2, backgroundDuty: 0.02 },
        emit: (e) => events.push(e),
      });
      const rs = events.filter((e) => e.event === "round");
      equal(rs.length, rounds);
      // θ at the start of round r is what round r - 1's update made.
      const thetaAt = (r: number) => rs[r - 1].theta_hashes[0];
      const commits = events.filter((e) => e.event === "committed");
      ok(new Set(commits.map((c) => c.round)).size >= 3, JSON.stringify(commits));
      for (const c of commits.filter((c) => c.round > 0)) {
        equal(c.params_hash, thetaAt(c.round), `round ${c.round}`);
      }
      // The newest round's state on disk resumes to the run's last θ.
      equal((await resumeRunDir(dir)).paramsHash, thetaAt(rounds));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
