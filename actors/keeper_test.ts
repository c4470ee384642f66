import { deepEqual, equal, ok, rejects, throws } from "@std/assert";
import { ActorSystem } from "./runtime/system.ts";
import type { AggregatorState } from "./aggregation.ts";
import type { StartStateSource } from "./start_state.ts";
import type { ViewMsg } from "./run_protocol.ts";
import { buildLayout } from "../kernels/layout.ts";
import type { GptConfig } from "../kernels/config.ts";
import { keeperBehavior, type KeeperEvent } from "./keeper.ts";
import { commitCoordinatorBehavior, type CommitEvent } from "./keeper_commit.ts";
import { KeeperFeedSlot } from "./keeper_feed.ts";
import {
  CheckpointStore,
  CorruptCheckpointError,
  denoFs,
  type Manifest,
  type Retention,
  type StoreFs,
} from "../checkpoint/store.ts";
import { fetchRound } from "./keeper_fetch.ts";
import { keeperStateSource, type SourceEvent } from "./keeper_source.ts";
import { Lease } from "./_lease.ts";
import { SpareArrays } from "./_spares.ts";
import { PreparedShare } from "./keeper_share.ts";

const CONFIG: GptConfig = { nLayer: 1, nHead: 2, nEmbd: 8, blockSize: 4, vocabSize: 16 };
const N = buildLayout(CONFIG).totalLength;
const HALF = 512;
const SHARDS = [
  { index: 0, start: 0, length: HALF, aggregator: "n/agg0" },
  { index: 1, start: HALF, length: N - HALF, aggregator: "n/agg1" },
];

function theta(round: number): Float32Array {
  const layout = buildLayout(CONFIG);
  const x = new Float32Array(N);
  for (const v of layout.views) {
    for (let i = 0; i < v.length; i++) x[v.offset + i] = Math.cos(round * 3.3 + i * 0.11);
  }
  return x;
}

function viewOf(round: number): ViewMsg {
  return {
    type: "view",
    run: "r",
    epoch: round + 1,
    round,
    trainers: ["n/t0"],
    aggregators: ["n/agg0", "n/agg1"],
    shards: SHARDS,
    params: N,
    block: 256,
    dataShards: [0],
    started: true,
    rounds: 0,
  };
}

/** What two aggregators save after closing round - 1: one state per shard. */
function shardStates(round: number): AggregatorState[] {
  const t = theta(round);
  return SHARDS.map((s) => ({
    run: "r",
    shard: s,
    round,
    theta: t.slice(s.start, s.start + s.length),
    momentum: new Float32Array(s.length).fill(round / 10),
    residual: new Float32Array(s.length),
    view: viewOf(round),
    norms: [],
  }));
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 10_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

interface Rig {
  system: ActorSystem;
  dirs: string[];
  keepers: string[];
  commits: CommitEvent[];
  events: KeeperEvent[];
  slot: KeeperFeedSlot;
  cleanup(): Promise<void>;
}

async function rig(
  count: number,
  options: {
    fs?: (i: number) => StoreFs | undefined;
    maxPending?: number;
    minReplicas?: number;
    retention?: Partial<Retention>;
    writer?: "inline" | "worker";
    share?: PreparedShare;
  } = {},
): Promise<Rig> {
  const system = new ActorSystem({ node: "n" });
  const dirs: string[] = [];
  const keepers = Array.from({ length: count }, (_, i) => `n/keepers/${i}`);
  const commits: CommitEvent[] = [];
  const events: KeeperEvent[] = [];
  await system.spawn(
    commitCoordinatorBehavior({
      run: "r",
      keepers,
      minReplicas: options.minReplicas,
      onEvent: (e) => commits.push(e),
    }),
    { name: "keepers/commit" },
  );
  for (let i = 0; i < count; i++) {
    const dir = await Deno.makeTempDir({ prefix: "keeper_" });
    dirs.push(dir);
    await system.spawn(
      keeperBehavior({
        run: "r",
        id: keepers[i],
        dir,
        config: CONFIG,
        coordinator: "n/keepers/commit",
        peers: keepers,
        fs: options.fs?.(i),
        maxPending: options.maxPending,
        ...(options.retention ? { retention: options.retention } : {}),
        ...(options.writer ? { writer: options.writer, backgroundDuty: 1 } : {}),
        ...(options.share ? { share: options.share } : {}),
        ackIntervalMs: 100,
        onEvent: (e) => events.push(e),
      }),
      { name: `keepers/${i}` },
    );
  }
  const slot = new KeeperFeedSlot({ system, run: "r", keepers, config: CONFIG });
  return {
    system,
    dirs,
    keepers,
    commits,
    events,
    slot,
    async cleanup() {
      await system.shutdown();
      for (const d of dirs) await Deno.remove(d, { recursive: true });
    },
  };
}

function committedRounds(commits: CommitEvent[]): number[] {
  return commits.flatMap((c) => c.type === "committed" ? [c.round] : []);
}

Deno.test("keeper: shard pieces from aggregators become durable rounds, committed and loadable", async () => {
  const r = await rig(1);
  try {
    for (let round = 0; round < 4; round++) {
      for (const s of shardStates(round)) r.slot.save(s);
      await until(`round ${round} committed`, () => committedRounds(r.commits).includes(round));
    }
    equal(r.slot.load(1)?.round, 3);
    const latest = await new CheckpointStore(r.dirs[0]).loadLatest({ expect: CONFIG });
    equal(latest?.state.round, 3);
    deepEqual(latest?.state.params, theta(3));
    deepEqual(latest?.state.momentum, new Float32Array(N).fill(0.3));
    deepEqual((latest?.state.view as ViewMsg).epoch, 4);
    const c = r.commits.find((e) => e.type === "committed" && e.round === 3);
    equal(c?.type === "committed" && c.params_hash, latest?.manifest.params_hash);
    const status = await r.system.ref(r.keepers[0]).ask<Record<string, unknown>>({
      type: "keeper_status",
    });
    equal(status.durable, 3);
    await until(
      "keeper learns the commit",
      async () =>
        (await r.system.ref(r.keepers[0]).ask<{ committed: number }>({ type: "keeper_status" }))
          .committed === 3,
    );
  } finally {
    await r.cleanup();
  }
});

Deno.test("keeper: with two keepers a round is committed only when both hold it; a failing disk is reported and the others go on", async () => {
  const enospc: StoreFs = {
    ...denoFs,
    writeFile: () =>
      Promise.reject(
        Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" }),
      ),
  };
  // Two keepers, one with a full disk: nothing may be reported committed.
  const two = await rig(2, { fs: (i) => i === 1 ? enospc : undefined });
  try {
    for (const s of shardStates(1)) two.slot.save(s);
    await until(
      "write failure reported",
      () =>
        two.commits.some((c) =>
          c.type === "write_failed" && c.keeper === "n/keepers/1" && c.code === "ENOSPC"
        ),
    );
    await until(
      "healthy keeper wrote",
      () => two.events.some((e) => e.type === "written" && e.round === 1),
    );
    await new Promise((r) => setTimeout(r, 300)); // several ack intervals
    deepEqual(committedRounds(two.commits), []);
  } finally {
    await two.cleanup();
  }
  // Three keepers, one failing: committed with the two healthy holders.
  const three = await rig(3, { fs: (i) => i === 2 ? enospc : undefined });
  try {
    for (let round = 1; round <= 2; round++) for (const s of shardStates(round)) three.slot.save(s);
    await until("round 2 committed", () => committedRounds(three.commits).includes(2));
    const c = three.commits.find((e) => e.type === "committed" && e.round === 2);
    deepEqual(c?.type === "committed" && c.holders, ["n/keepers/0", "n/keepers/1"]);
    const failed = three.events.filter((e) => e.type === "write_failed");
    ok(failed.length > 0 && failed.every((e) => e.type === "write_failed" && e.code === "ENOSPC"));
  } finally {
    await three.cleanup();
  }
});

Deno.test("keeper: a restarted keeper with an empty disk catches up from its peer", async () => {
  const r = await rig(2);
  try {
    for (let round = 0; round < 3; round++) for (const s of shardStates(round)) r.slot.save(s);
    await until("round 2 committed", () => committedRounds(r.commits).includes(2));
    // Keeper 1 dies and loses its disk; the run goes on meanwhile.
    await r.system.stop(r.system.ref(r.keepers[1]));
    await Deno.remove(r.dirs[1], { recursive: true });
    for (const s of shardStates(3)) r.slot.save(s);
    await until(
      "keeper 0 wrote round 3",
      () =>
        r.events.some((e) => e.type === "written" && e.keeper === r.keepers[0] && e.round === 3),
    );
    await r.system.spawn(
      keeperBehavior({
        run: "r",
        id: r.keepers[1],
        dir: r.dirs[1],
        config: CONFIG,
        coordinator: "n/keepers/commit",
        peers: r.keepers,
        ackIntervalMs: 100,
        onEvent: (e) => r.events.push(e),
      }),
      { name: "keepers/1" },
    );
    await until("round 3 committed", () => committedRounds(r.commits).includes(3));
    const caught = r.events.findLast((e) => e.type === "caught_up");
    deepEqual(caught, { type: "caught_up", keeper: r.keepers[1], round: 3, from: [r.keepers[0]] });
    const latest = await new CheckpointStore(r.dirs[1]).loadLatest();
    deepEqual(latest?.state.params, theta(3));
  } finally {
    await r.cleanup();
  }
});

Deno.test("keeper: writes never block the sender; older pending rounds are superseded by newer ones", async () => {
  let release = Promise.withResolvers<void>();
  const slowFs: StoreFs = {
    ...denoFs,
    async writeFile(path, bytes) {
      await release.promise;
      await denoFs.writeFile(path, bytes);
    },
  };
  const r = await rig(1, { fs: () => slowFs, maxPending: 1 });
  try {
    // Every save returns at once although no write can finish yet.
    for (let round = 0; round < 6; round++) for (const s of shardStates(round)) r.slot.save(s);
    type Status = { durable: number; pending: number[]; writing: number };
    const status = () => r.system.ref(r.keepers[0]).ask<Status>({ type: "keeper_status" });
    await until("keeper took round 5", async () => {
      const st = await status();
      return st.pending.includes(5) || st.writing === 5;
    });
    // While a write is stuck, the keeper still answers, and nothing is durable yet.
    const st = await status();
    equal(st.durable, -1);
    ok(st.pending.length <= 1, `pending ${st.pending}`);
    release.resolve();
    await until("round 5 committed", () => committedRounds(r.commits).includes(5));
    const superseded = r.events.flatMap((e) => e.type === "superseded" ? [e.round] : []);
    const written = r.events.flatMap((e) => e.type === "written" ? [e.round] : []);
    // Round 0 may be superseded too when it arrives while the keeper is still recovering.
    ok(superseded.length >= 4, `superseded ${superseded}`);
    deepEqual([...superseded, ...written].sort(), [0, 1, 2, 3, 4, 5]);
    equal(written.at(-1), 5);
  } finally {
    release.resolve();
    release = Promise.withResolvers<void>();
    release.resolve();
    await r.cleanup();
  }
});

Deno.test("keeper: a joiner fetches θ in chunks, resumes at the offset after failures, and verifies bit for bit", async () => {
  const r = await rig(2);
  try {
    for (const s of shardStates(4)) r.slot.save(s);
    await until("round 4 committed", () => committedRounds(r.commits).includes(4));
    // A flaky path to keeper 0: every third chunk request fails (a broken connection).
    let calls = 0;
    await r.system.spawn({
      receive(msg: { type: string }) {
        if (msg.type === "keeper_chunk" && ++calls % 3 === 0) {
          return { type: "error", error: "connection reset" };
        }
        return r.system.ref(r.keepers[0]).ask(msg);
      },
    }, { name: "flaky" });
    const sizes = (m: Manifest) =>
      m.files["model.safetensors"].size + m.files["state.safetensors"].size;
    const got = await fetchRound(r.system, ["n/flaky"], {
      run: "r",
      round: 4,
      chunkBytes: 512,
      backoffMs: 1,
      retries: 50,
    });
    ok(got.resumed > 0, "some chunk requests failed and were resumed");
    // Resumed at the offset: no byte was fetched twice.
    equal(got.bytes, sizes(got.manifest));
    // A keeper that dies mid-transfer: the fetch goes on from the same offset on the other one.
    let served = 0;
    await r.system.spawn({
      receive(msg: { type: string }, ctx) {
        if (msg.type === "keeper_chunk" && ++served > 2) {
          ctx.stop(); // the keeper is gone: this and later requests fail
          return undefined;
        }
        return r.system.ref(r.keepers[0]).ask(msg);
      },
    }, { name: "dying" });
    await r.system.spawn({
      async receive(msg: { type: string }) {
        if (msg.type === "keeper_manifest") await new Promise((res) => setTimeout(res, 100));
        return r.system.ref(r.keepers[1]).ask(msg);
      },
    }, { name: "slow" });
    const moved = await fetchRound(r.system, ["n/dying", "n/slow"], {
      run: "r",
      round: 4,
      chunkBytes: 512,
      backoffMs: 1,
      timeoutMs: 300,
    });
    deepEqual(moved.keepers, ["n/dying", "n/slow"]);
    equal(moved.bytes, sizes(moved.manifest));
    const events: SourceEvent[] = [];
    const source = keeperStateSource({
      keepers: r.keepers,
      fetch: { chunkBytes: 700 },
      onEvent: (e) => events.push(e),
    });
    const ctx = { system: r.system } as Parameters<StartStateSource["startState"]>[0];
    const states = await Promise.all(
      SHARDS.map((s) => source.startState(ctx, viewOf(4), { shard: s.index })),
    );
    const full = new Float32Array(N);
    for (const [i, s] of states.entries()) full.set(s.theta, SHARDS[i].start);
    deepEqual(new Uint32Array(full.buffer), new Uint32Array(theta(4).buffer));
    equal(states[0].round, 4);
    equal(events.filter((e) => e.type === "fetched").length, 1, "one fetch serves every shard");
  } finally {
    await r.cleanup();
  }
});

Deno.test("keeper: corrupt bytes from a keeper are never used; round 0 without keepers falls back", async () => {
  const r = await rig(1);
  try {
    for (const s of shardStates(2)) r.slot.save(s);
    await until("round 2 committed", () => committedRounds(r.commits).includes(2));
    await r.system.spawn({
      async receive(msg: { type: string }) {
        const reply = await r.system.ref(r.keepers[0]).ask<{ bytes?: Uint8Array }>(msg);
        if (msg.type === "keeper_chunk" && reply.bytes) {
          reply.bytes = reply.bytes.slice();
          reply.bytes[0] ^= 0x40;
        }
        return reply;
      },
    }, { name: "liar" });
    await rejects(
      fetchRound(r.system, ["n/liar"], { run: "r", round: 2, retries: 2, backoffMs: 1 }),
      (e: unknown) =>
        e instanceof CorruptCheckpointError && /does not match the manifest/.test(e.message),
    );
    // With an honest keeper beside it, the fetch ends with verified bytes.
    const ok2 = await fetchRound(r.system, ["n/liar", r.keepers[0]], {
      run: "r",
      round: 2,
      retries: 4,
      backoffMs: 1,
    });
    equal(ok2.round, 2);
    // No keeper holds round 0 of a fresh run: the fallback source answers.
    const events: SourceEvent[] = [];
    const fallback: StartStateSource = {
      startState: (_ctx, view, req) =>
        Promise.resolve({
          type: "state",
          run: "r",
          round: view.round,
          shard: req.shard,
          theta: new Float32Array(1),
        }),
    };
    const source = keeperStateSource({
      keepers: r.keepers,
      fallback,
      onEvent: (e) => events.push(e),
    });
    const ctx = { system: r.system } as Parameters<StartStateSource["startState"]>[0];
    const st = await source.startState(ctx, viewOf(0), { shard: 0 });
    equal(st.theta.length, 1);
    equal(events[0].type, "fallback");
  } finally {
    await r.cleanup();
  }
});

Deno.test("keeper: malformed messages are refused with the field named and never fail the keeper", async () => {
  const r = await rig(1);
  try {
    const k = r.system.ref(r.keepers[0]);
    const bad = [
      [{
        type: "keeper_piece",
        run: "r",
        round: 1,
        start: 0,
        total: N,
        params: new Float32Array(2),
      }, /momentum/],
      [{
        type: "keeper_piece",
        run: "r",
        round: 1,
        start: 0,
        total: N,
        params: new Float32Array([NaN]),
        momentum: new Float32Array(1),
      }, /non-finite/],
      [
        { type: "keeper_chunk", run: "r", round: 1, file: "../etc/passwd", offset: 0, length: 4 },
        /file must be one of/,
      ],
      [{
        type: "keeper_chunk",
        run: "other",
        round: 1,
        file: "model.safetensors",
        offset: 0,
        length: 4,
      }, /run other/],
      [{ type: "nope", run: "r" }, /unknown type/],
      ["hello", /not an object/],
    ] as const;
    for (const [msg, re] of bad) {
      const reply = await k.ask<{ type: string; error: string }>(msg);
      equal(reply.type, "error");
      ok(re.test(reply.error), reply.error);
    }
    const missing = await k.ask<{ type: string; newest: number }>({
      type: "keeper_manifest",
      run: "r",
      round: 9,
    });
    deepEqual([missing.type, missing.newest], ["keeper_missing", -1]);
    equal(r.events.filter((e) => e.type === "refused").length, bad.length);
  } finally {
    await r.cleanup();
  }
});

Deno.test("keeper: a background CPU budget outside (0, 1] is refused by name", () => {
  const config: GptConfig = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };
  for (const backgroundDuty of [0, -0.1, 1.5, NaN]) {
    throws(
      () =>
        keeperBehavior({
          run: "r",
          id: "a/keepers/0",
          dir: "/nonexistent",
          config,
          backgroundDuty,
        }),
      /backgroundDuty must be in \(0, 1\]/,
    );
  }
});

Deno.test("keeper: lent pieces are let go only once copied, replaced or superseded: arrays refilled by later rounds never reach a round's file", async () => {
  let open = Promise.withResolvers<void>();
  const gatedFs: StoreFs = {
    ...denoFs,
    async writeFile(path, bytes) {
      await open.promise;
      await denoFs.writeFile(path, bytes);
    },
  };
  // Three rounds pending: a round's arrays come back to the lender (from the keepers' memory
  // slot) two saves after it, while it is still waiting to be written.
  const r = await rig(2, {
    fs: () => gatedFs,
    maxPending: 3,
    retention: { keepLast: 100, keepEvery: 0 },
  });
  // The lender's pool, as an aggregator's: a state's arrays come back when every holder let go,
  // and the next states are copied into them.
  const pools = SHARDS.map(() => new SpareArrays(16));
  let reused = 0;
  const save = (round: number) => {
    const t = theta(round);
    SHARDS.forEach((s, i) => {
      const take = (fill: (x: Float32Array) => void) => {
        const before = pools[i].size;
        const x = pools[i].take(s.length);
        if (pools[i].size < before) reused++;
        fill(x);
        return x;
      };
      const state: AggregatorState = {
        run: "r",
        shard: s,
        round,
        theta: take((x) => x.set(t.subarray(s.start, s.start + s.length))),
        momentum: take((x) => x.fill(round / 10)),
        residual: take((x) => x.fill(-round / 10)),
        view: viewOf(round),
        norms: [],
      };
      const lease = new Lease(() => pools[i].give([state.theta, state.momentum, state.residual]));
      r.slot.save(state, lease);
      lease.seal();
    });
  };
  try {
    // Rounds come while no write can finish: keepers hold pieces of rounds waiting to be written.
    for (let round = 0; round < 8; round++) {
      save(round);
      await new Promise((res) => setTimeout(res, 20));
    }
    open.resolve();
    await until("round 7 committed", () => committedRounds(r.commits).includes(7));
    for (let round = 8; round < 12; round++) {
      save(round);
      await until(`round ${round} committed`, () => committedRounds(r.commits).includes(round));
    }
    ok(reused > 0, "later states were saved in arrays let go");
    const written = r.events.flatMap((e) => e.type === "written" ? [e.round] : []);
    ok(written.some((round) => round > 0 && round < 8), `rounds written while held: ${written}`);
    for (const dir of r.dirs) {
      const store = new CheckpointStore(dir);
      for (const round of await store.rounds()) {
        const { state } = await store.load(round);
        deepEqual(state.params, theta(round), `${dir} round ${round}: θ`);
        deepEqual(state.momentum, new Float32Array(N).fill(round / 10), `round ${round}: momentum`);
        deepEqual(
          state.residual,
          new Float32Array(N).fill(-round / 10),
          `round ${round}: residual`,
        );
      }
    }
  } finally {
    open.resolve();
    open = Promise.withResolvers<void>();
    open.resolve();
    await r.cleanup();
  }
});

/** Checks that every round in each of `dirs` verifies and holds θ(round) and its momentum. */
async function checkRounds(dirs: string[], rounds: number[]) {
  for (const dir of dirs) {
    const store = new CheckpointStore(dir);
    deepEqual(await store.rounds(), rounds, dir);
    for (const round of rounds) {
      const { state } = await store.load(round);
      deepEqual(state.params, theta(round), `${dir} round ${round}: θ`);
      deepEqual(state.momentum, new Float32Array(N).fill(round / 10), `round ${round}: momentum`);
    }
  }
}

Deno.test("keeper: keepers of one process sharing a PreparedShare encode each round once, and each writes and verifies its replica", async () => {
  const r = await rig(2, {
    writer: "worker",
    share: new PreparedShare(),
    retention: { keepLast: 100, keepEvery: 0 },
  });
  try {
    for (let round = 0; round < 4; round++) {
      for (const s of shardStates(round)) r.slot.save(s);
      await until(`round ${round} committed`, () => committedRounds(r.commits).includes(round));
    }
    const written = r.events.filter((e) => e.type === "written");
    for (let round = 0; round < 4; round++) {
      const of = written.filter((e) => e.round === round);
      equal(of.length, 2, `round ${round} written by both keepers`);
      const copies = of.filter((e) => e.encoded_by !== undefined);
      equal(copies.length, 1, `round ${round}: one keeper wrote the other's bytes`);
      ok(copies[0].encoded_by !== copies[0].keeper && r.keepers.includes(copies[0].encoded_by!));
    }
    await checkRounds(r.dirs, [0, 1, 2, 3]);
  } finally {
    await r.cleanup();
  }
});

Deno.test("keeper: when the keeper encoding a shared round fails, the keepers waiting for it encode it themselves", async () => {
  const share = new PreparedShare();
  const r = await rig(2, { writer: "worker", share });
  try {
    const states = shardStates(0);
    // Another keeper of the process claimed round 0 first (the pieces' very arrays, in order).
    const ghost = share.claim(0, states.map((s) => s.theta), "n/keepers/ghost");
    ok(ghost.own);
    for (const s of states) r.slot.save(s);
    await new Promise((res) => setTimeout(res, 300));
    equal(r.events.filter((e) => e.type === "written").length, 0, "the keepers wait for it");
    if (ghost.own) ghost.fail(new Error("its writer thread died"));
    await until("round 0 committed", () => committedRounds(r.commits).includes(0));
    const written = r.events.filter((e) => e.type === "written" && e.round === 0);
    equal(written.length, 2);
    ok(
      written.every((e) => e.type === "written" && e.encoded_by !== "n/keepers/ghost"),
      "nothing was taken from the failed keeper",
    );
    await checkRounds(r.dirs, [0]);
  } finally {
    await r.cleanup();
  }
});
