/**
 * SIGKILL a checkpoint keeper process at random points of its writes, many
 * times, and check after every kill that no corrupt checkpoint was reported
 * committed or is loaded, that loading returns the newest round reported
 * committed before the kill (or a later one), and that its θ hashes equal the
 * hash recorded at commit.
 *
 * The kill times come from a seeded generator; the seed is printed, and
 * `CHECKPOINT_KILL_SEED=<seed>` replays a run.
 *
 * Multi-process and slow-ish (about 20 s): run alone with
 * `deno test -A tests/checkpoint_kill_test.ts`.
 */
import { equal, ok } from "@std/assert";
import { CheckpointStore, sha256Hex } from "../checkpoint/store.ts";
import { KILL_CONFIG, roundParams } from "./_checkpoint_kill_child.ts";

const KILLS = 20;
const CHILD = new URL("./_checkpoint_kill_child.ts", import.meta.url).pathname;

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Life {
  committed: Map<number, string>;
  lastLine: string;
  writes: number;
}

/** Runs the keeper process from `start` and SIGKILLs it `delayMs` after its first write. */
async function liveAndDie(dir: string, start: number, delayMs: number): Promise<Life> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", CHILD, dir, String(start)],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const life: Life = { committed: new Map(), lastLine: "", writes: 0 };
  let timer: ReturnType<typeof setTimeout> | undefined;
  // A bound on the life of the child even if it never gets ready.
  const guard = setTimeout(() => child.kill("SIGKILL"), 20_000);
  let buffered = "";
  for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
    buffered += text;
    const lines = buffered.split("\n");
    buffered = lines.pop()!;
    for (const line of lines) {
      life.lastLine = line;
      const [what, a, b] = line.split(" ");
      if (what === "COMMITTED") life.committed.set(Number(a), b);
      else if (what === "WRITE" && life.writes++ === 0) {
        // Counted from the first write, so that the kill lands among the writes.
        timer = setTimeout(() => child.kill("SIGKILL"), delayMs);
      }
    }
  }
  const status = await child.status;
  clearTimeout(timer);
  clearTimeout(guard);
  equal(status.signal, "SIGKILL", `the keeper process ended by ${status.signal ?? status.code}`);
  return life;
}

Deno.test("checkpoint kill: SIGKILL in the middle of writes never yields a corrupt or lost committed round", async () => {
  const seed = Number(Deno.env.get("CHECKPOINT_KILL_SEED") ?? Math.floor(Math.random() * 2 ** 31));
  console.log(`checkpoint kill seed: ${seed} (replay with CHECKPOINT_KILL_SEED=${seed})`);
  const rand = mulberry32(seed);
  const dir = await Deno.makeTempDir({ prefix: "ckpt_kill_" });
  const expectedHash = new Map<number, string>();
  const hashOf = async (round: number) => {
    let h = expectedHash.get(round);
    if (!h) {
      h = (await sha256Hex(new Uint8Array(roundParams(round).buffer))).slice(0, 16);
      expectedHash.set(round, h);
    }
    return h;
  };
  try {
    const reported = new Map<number, string>();
    let newestReported = -1;
    let start = 0;
    let midWrite = 0;
    for (let kill = 0; kill < KILLS; kill++) {
      const delay = Math.floor(rand() * 400);
      const life = await liveAndDie(dir, start, delay);
      if (life.lastLine.startsWith("WRITE")) midWrite++;
      for (const [round, hash] of life.committed) {
        // A round reported committed holds exactly the θ fed for that round.
        equal(hash, await hashOf(round), `round ${round} committed with a wrong hash`);
        reported.set(round, hash);
        newestReported = Math.max(newestReported, round);
      }
      const store = new CheckpointStore(dir, { retention: { keepLast: 3, keepEvery: 5 } });
      const latest = await store.loadLatest({ expect: KILL_CONFIG });
      if (newestReported < 0) {
        start = latest ? latest.state.round + 1 : 0;
        continue;
      }
      if (!latest) {
        throw new Error(
          `kill ${kill}: nothing loads although round ${newestReported} was committed`,
        );
      }
      // Nothing under a round's name is ever corrupt: a kill leaves whole rounds or temp folders.
      equal(latest.skipped.length, 0, `kill ${kill}: ${JSON.stringify(latest.skipped)}`);
      ok(
        latest.state.round >= newestReported,
        `kill ${kill}: loaded round ${latest.state.round}, but ${newestReported} was reported committed`,
      );
      const loadedHash = (await sha256Hex(new Uint8Array(latest.state.params.buffer))).slice(0, 16);
      equal(loadedHash, await hashOf(latest.state.round));
      if (reported.has(latest.state.round)) equal(loadedHash, reported.get(latest.state.round));
      // Every round still on disk verifies, and every reported round retention keeps is there.
      const onDisk = await store.rounds();
      for (const r of onDisk) equal((await store.verify(r)).params_hash, await hashOf(r));
      for (
        const r of store.kept([...new Set([...onDisk, ...reported.keys()])].sort((a, b) => a - b))
      ) {
        if (reported.has(r)) ok(onDisk.includes(r), `kill ${kill}: committed round ${r} is gone`);
      }
      // The run resumes after the newest round on disk, like `--resume` would.
      start = latest.state.round + 1;
    }
    console.log(
      `checkpoint kill: ${KILLS} kills, ${midWrite} between a file write and its round's commit, ` +
        `${reported.size} rounds reported committed, newest ${newestReported}`,
    );
    ok(newestReported >= 0, "some rounds were committed at all");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
