/**
 * A resumed run keeps its shape: a 2-trainer embedded run (trainers in
 * Workers on WebGPU, a checkpoint keeper) is resumed as `deno task node
 * --resume DIR` would resume it. With no `--trainers`, 2 trainers come back
 * and each reads on from its own saved data cursor. With `--trainers 3`, the
 * two read on from theirs and the new one reads a shard no saved cursor
 * names; with `--trainers 1`, the one reads on from its own and the other
 * saved cursor is carried, unread, into the next checkpoint.
 *
 * Slow (four runs, each compiling shaders in Workers): run alone with
 * `deno test -A tests/resume_embedded_test.ts`.
 */
import { deepEqual, equal, notEqual, ok } from "@std/assert";
import { runEmbedded } from "../actors/embedded.ts";
import type { RunEvent } from "../actors/monitor.ts";
import type { ReportCursor } from "../actors/run_protocol.ts";
import { parseNodeArgs, resumedArgs } from "../actors/node_args.ts";
import { resumeRunDir } from "../checkpoint/resume.ts";

const INNER_STEPS = 2;
const TRAINER = (i: number) => `host/run/trainers/${i}`;

/** Runs `deno task node`'s embedded run with these flags; returns its events. */
async function node(argv: string[], dir: string): Promise<RunEvent[]> {
  let args = parseNodeArgs(argv);
  const resumed = args.resumeDir ? await resumeRunDir(args.resumeDir) : undefined;
  if (resumed) args = resumedArgs(args, resumed);
  const { resumeDir: _, role: __, keeperCpu: ___, ...rest } = args;
  const events: RunEvent[] = [];
  await runEmbedded({
    ...rest,
    evalWindows: 1,
    timeoutMs: 240_000,
    checkpoint: { dir, keepers: 1 },
    ...(resumed ? { resume: resumed } : {}),
    emit: (e) => events.push(e),
  });
  return events;
}

/** "data shard <i> resumes at step <s>" lines of the run's trainers, by trainer id. */
function resumedAt(events: RunEvent[]): Record<string, { index: number; step: number }> {
  const out: Record<string, { index: number; step: number }> = {};
  for (const e of events) {
    if (e.event !== "log") continue;
    const m = /^(\S+): data shard (\d+) resumes at step (\d+)$/.exec(e.message);
    if (m) out[m[1]] = { index: Number(m[2]), step: Number(m[3]) };
  }
  return out;
}

async function cursorsOf(dir: string): Promise<Record<string, ReportCursor>> {
  return (await resumeRunDir(dir, { onSkip: () => {} })).cursors as Record<string, ReportCursor>;
}

Deno.test({
  name: "resume keeps the run's trainers and each one's data shard; another --trainers re-deals",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "resume_embedded_" });
    try {
      const first = `${tmp}/first`;
      const common = ["--config", "tiny", "--inner-steps", String(INNER_STEPS), "--run-id", "re"];
      await node([...common, "--trainers", "2", "--rounds", "2"], first);
      const saved = await cursorsOf(first);
      deepEqual(Object.keys(saved).sort(), [TRAINER(0), TRAINER(1)]);
      const shard = (id: string) => saved[id].shard.index;
      notEqual(shard(TRAINER(0)), shard(TRAINER(1)));
      const mine = (id: string) => ({ index: shard(id), step: saved[id].step });

      // No --trainers: the 2 trainers come back, each on its own shard at its own step.
      const same = await node(["--resume", first, "--rounds", "3"], `${tmp}/same`);
      const resumedRound = same.find((e) => e.event === "resumed");
      equal(resumedRound?.event === "resumed" && resumedRound.cursors, 2);
      const rounds = same.filter((e) => e.event === "round");
      deepEqual(rounds.map((e) => [e.round, e.trainers]), [[2, 2]]);
      deepEqual(resumedAt(same), {
        [TRAINER(0)]: mine(TRAINER(0)),
        [TRAINER(1)]: mine(TRAINER(1)),
      });
      const after = await cursorsOf(`${tmp}/same`);
      for (const id of [TRAINER(0), TRAINER(1)]) {
        deepEqual(after[id], { ...saved[id], step: saved[id].step + INNER_STEPS }, id);
      }

      // --trainers 3: the two read on from their cursors, the new one a shard none of them names.
      const more = await node(
        ["--resume", first, "--rounds", "3", "--trainers", "3"],
        `${tmp}/more`,
      );
      deepEqual(more.filter((e) => e.event === "round").map((e) => e.trainers), [3]);
      deepEqual(resumedAt(more), {
        [TRAINER(0)]: mine(TRAINER(0)),
        [TRAINER(1)]: mine(TRAINER(1)),
      });
      const grown = await cursorsOf(`${tmp}/more`);
      deepEqual(Object.keys(grown).sort(), [TRAINER(0), TRAINER(1), TRAINER(2)]);
      const shards = Object.values(grown).map((c) => c.shard.index);
      equal(new Set(shards).size, 3, `shards ${shards}`);
      ok(![shard(TRAINER(0)), shard(TRAINER(1))].includes(grown[TRAINER(2)].shard.index));
      equal(grown[TRAINER(2)].step, INNER_STEPS, "the new shard is read from its start");

      // --trainers 1: trainer 0 reads on from its cursor; trainer 1's waits, unread, in the checkpoint.
      const fewer = await node(
        ["--resume", first, "--rounds", "3", "--trainers", "1"],
        `${tmp}/fewer`,
      );
      deepEqual(fewer.filter((e) => e.event === "round").map((e) => e.trainers), [1]);
      deepEqual(resumedAt(fewer), { [TRAINER(0)]: mine(TRAINER(0)) });
      deepEqual(await cursorsOf(`${tmp}/fewer`), {
        [TRAINER(0)]: { ...saved[TRAINER(0)], step: saved[TRAINER(0)].step + INNER_STEPS },
        [TRAINER(1)]: saved[TRAINER(1)],
      });
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
