/**
 * A keeper process for tests/checkpoint_kill_test.ts: hosts a checkpoint
 * keeper and a commit coordinator, feeds it rounds from `start` on (two shard
 * pieces per round, as two aggregators would), and prints one line per event
 * on stdout, written synchronously so that a SIGKILL loses nothing printed:
 * `WRITE <round> <file>` before each file write and `COMMITTED <round> <hash>`
 * when the coordinator reports a round committed.
 *
 * Usage: deno run -A tests/_checkpoint_kill_child.ts DIR START
 *
 * @module
 */
import { ActorSystem } from "../actors/runtime/system.ts";
import type { GptConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";
import { keeperBehavior } from "../actors/keeper.ts";
import { commitCoordinatorBehavior } from "../actors/keeper_commit.ts";
import { KeeperFeedSlot } from "../actors/keeper_feed.ts";
import { denoFs, type StoreFs } from "../checkpoint/store.ts";

/** The model of the kill test: big enough that a round takes a while to write. */
export const KILL_CONFIG: GptConfig = {
  nLayer: 2,
  nHead: 4,
  nEmbd: 128,
  blockSize: 64,
  vocabSize: 256,
};

/** θ of `round` (deterministic, so the test knows what every round must hold). */
export function roundParams(round: number): Float32Array {
  const layout = buildLayout(KILL_CONFIG);
  const x = new Float32Array(layout.totalLength);
  let s = (round * 2654435761) >>> 0;
  for (const v of layout.views) {
    for (let i = 0; i < v.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      x[v.offset + i] = (s / 2 ** 32 - 0.5) * 0.1;
    }
  }
  return x;
}

const enc = new TextEncoder();
function say(line: string): void {
  const bytes = enc.encode(line + "\n");
  let at = 0;
  while (at < bytes.length) at += Deno.stdout.writeSync(bytes.subarray(at));
}

if (import.meta.main) {
  const [dir, startArg] = Deno.args;
  const start = Number(startArg);
  const n = buildLayout(KILL_CONFIG).totalLength;
  const half = Math.floor(n / 2 / 256) * 256;
  const system = new ActorSystem({ node: "k" });
  const committed = new Set<number>();
  await system.spawn(
    commitCoordinatorBehavior({
      run: "kill",
      keepers: ["k/keeper"],
      onEvent: (e) => {
        if (e.type === "committed") {
          committed.add(e.round);
          say(`COMMITTED ${e.round} ${e.params_hash}`);
        }
      },
    }),
    { name: "commit" },
  );
  const fs: StoreFs = {
    ...denoFs,
    writeFile(path, bytes) {
      say(`WRITE ${path.split("/").slice(-2).join("/")}`);
      return denoFs.writeFile(path, bytes);
    },
  };
  await system.spawn(
    keeperBehavior({
      run: "kill",
      id: "k/keeper",
      dir,
      config: KILL_CONFIG,
      coordinator: "k/commit",
      retention: { keepLast: 3, keepEvery: 5 },
      fs,
      ackIntervalMs: 50,
    }),
    { name: "keeper" },
  );
  const slot = new KeeperFeedSlot({
    system,
    run: "kill",
    keepers: ["k/keeper"],
    config: KILL_CONFIG,
    total: n,
  });
  say("READY");
  for (let round = start;; round++) {
    const params = roundParams(round);
    const momentum = new Float32Array(n).fill(round);
    for (const [index, a, b] of [[0, 0, half], [1, half, n]]) {
      slot.save({
        run: "kill",
        shard: { index, start: a, length: b - a, aggregator: `agg${index}` },
        round,
        theta: params.slice(a, b),
        momentum: momentum.slice(a, b),
        residual: new Float32Array(b - a),
        norms: [],
      });
    }
    // The next round closes once this one is committed: writes run back to back.
    while (!committed.has(round)) await new Promise((r) => setTimeout(r, 2));
  }
}
