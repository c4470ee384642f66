/**
 * The `aggregation` bench suite (`deno task bench --only aggregation`): what
 * a round costs the host's event loop at a large shard, the work every actor
 * beside the aggregator waits for.
 *
 * A {@linkcode ShardAggregator} of n parameters (16M; 2M with `--quick`) takes
 * two int8 contributions a round for five rounds. Per round it times `close`
 * (decode, token-weighted mean, outer Nesterov step, int8 update with error
 * feedback, applied to θ), `state` (the copies the keepers and a restart
 * get, in fresh arrays), `state_lent` (the same copies as the aggregator
 * actor saves them, in the arrays of the state before, which the slot and the
 * keepers let go: actors/_lease.ts) and `thetaChecksum`; the records give round 0 (the work arrays
 * allocated) and the median of rounds 1-4, in ms and in ns per parameter,
 * and against the baseline run in the same process, one copy of the shard
 * into a reused array (`close_vs_copy`: how many θ-sized copies a close
 * costs).
 *
 * The trainer's side of the same rounds, also on the host's event loop for
 * a host's own trainers: applying the update to its θ (`trainer_apply`), the
 * θ hash its report carries, against WebCrypto's digest of the same bytes
 * run beside it (`theta_hash_vs_webcrypto`: the digest copies its input into
 * fresh memory first), and counting the update's bytes on the wire without
 * packing it, against packing it (`wire_count_vs_pack`).
 *
 * @module
 */
import { ShardAggregator } from "./aggregation.ts";
import { quantizeInt8, thetaHash } from "./int8_exchange.ts";
import { applyCoded } from "./exchange.ts";
import { encode, encodedSize } from "../transport/codec.ts";
import { shardMap, type ViewMsg } from "./run_protocol.ts";
import type { BenchOptions, BenchRecord } from "../tests/bench_main.ts";

const ROUNDS = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function timed(work: () => void): number {
  const t0 = performance.now();
  work();
  return performance.now() - t0;
}

async function timedAsync(work: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await work();
  return performance.now() - t0;
}

/** The suite. */
export async function* bench(options: BenchOptions): AsyncGenerator<BenchRecord> {
  const n = options.quick ? 1 << 21 : 1 << 24;
  const [shard] = shardMap(n, { aggregators: ["a0"] });
  const theta = new Float32Array(n);
  for (let i = 0; i < n; i++) theta[i] = ((i * 37) % 1001) * 1e-5;
  const agg = new ShardAggregator({
    run: "bench",
    shard,
    theta,
    outer: { lr: 0.7, momentum: 0.9 },
  });
  const contributions = [3, 5].map((k) => {
    const delta = new Float32Array(n);
    for (let i = 0; i < n; i++) delta[i] = (((i * k) % 997) - 498) * 1e-6;
    return quantizeInt8(delta);
  });
  // The baseline: one copy of the shard into an array written before (no page faults).
  const copy = new Float32Array(n);
  copy.set(theta);
  const copies: number[] = [];
  const close: number[] = [];
  const state: number[] = [];
  const checksum: number[] = [];
  const lent: number[] = [];
  let saved: Awaited<ReturnType<ShardAggregator["stateInRanges"]>> | undefined;
  // A trainer's θ, moved by each round's update as the aggregator's is.
  const trainerTheta = new Float32Array(theta);
  const apply: number[] = [];
  const hash: number[] = [];
  const webcrypto: number[] = [];
  const count: number[] = [];
  const pack: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const view: ViewMsg = {
      type: "view",
      run: "bench",
      epoch: round + 1,
      round,
      trainers: ["t0", "t1"],
      aggregators: ["a0"],
      shards: [shard],
      params: n,
      block: 256,
      dataShards: [0, 1],
      started: true,
      rounds: 0,
    };
    agg.setView(view);
    for (const [i, c] of contributions.entries()) {
      agg.offer({
        type: "contribution",
        run: "bench",
        round,
        epoch: round + 1,
        trainer: `t${i}`,
        shard: 0,
        tokens: 512,
        n,
        q: c.q,
        scales: c.scales,
        loss: 3,
      });
    }
    copies.push(timed(() => copy.set(theta)));
    let update: ReturnType<ShardAggregator["close"]>["update"] | undefined;
    close.push(timed(() => update = agg.close().update));
    state.push(timed(() => agg.state()));
    // The state before comes back as the slot replaces it; this one is copied into its arrays.
    if (saved) agg.recycleState(saved);
    const t0 = performance.now();
    saved = await agg.stateInRanges({ chunk: n, pause: () => Promise.resolve() });
    lent.push(performance.now() - t0);
    checksum.push(timed(() => agg.thetaChecksum()));
    apply.push(timed(() => applyCoded(trainerTheta, update!, { block: 256 })));
    hash.push(await timedAsync(() => thetaHash(trainerTheta)));
    const bytes = new Uint8Array(trainerTheta.buffer);
    webcrypto.push(await timedAsync(() => crypto.subtle.digest("SHA-256", bytes)));
    let counted = 0, packed = 0;
    count.push(timed(() => counted = encodedSize(update)));
    pack.push(timed(() => packed = encode(update).byteLength));
    if (counted !== packed) throw new Error(`wire size counted ${counted}, packed ${packed}`);
    // Let the event loop turn, as between an aggregator's rounds.
    await new Promise((r) => setTimeout(r, 0));
  }
  const steady = (xs: number[]) => median(xs.slice(1));
  const base = { params: n, trainers: 2, exchange: "int8", rounds: ROUNDS };
  const perParam = (ms: number) => ms * 1e6 / n;
  yield { name: "aggregator_close_first_ms", value: close[0], unit: "ms", ...base };
  for (
    const [name, xs] of [
      ["close", close],
      ["state", state],
      ["state_lent", lent],
      ["checksum", checksum],
    ] as const
  ) {
    yield {
      name: `aggregator_${name}_ms`,
      value: steady(xs),
      unit: "ms",
      ...base,
      of: "rounds 1-4",
    };
    yield {
      name: `aggregator_${name}_ns_per_param`,
      value: perParam(steady(xs)),
      unit: "ns",
      ...base,
    };
  }
  yield { name: "shard_copy_ms", value: steady(copies), unit: "ms", ...base, baseline: true };
  yield {
    name: "close_vs_copy",
    value: steady(close) / steady(copies),
    unit: "ratio",
    ...base,
  };
  const of = "rounds 1-4";
  yield { name: "trainer_apply_ms", value: steady(apply), unit: "ms", ...base, of };
  yield { name: "theta_hash_ms", value: steady(hash), unit: "ms", ...base, of };
  yield {
    name: "theta_hash_webcrypto_ms",
    value: steady(webcrypto),
    unit: "ms",
    ...base,
    of,
    baseline: true,
  };
  yield {
    name: "theta_hash_vs_webcrypto",
    value: steady(hash) / steady(webcrypto),
    unit: "ratio",
    ...base,
  };
  yield { name: "wire_count_ms", value: steady(count), unit: "ms", ...base, of };
  yield { name: "wire_pack_ms", value: steady(pack), unit: "ms", ...base, of, baseline: true };
  yield {
    name: "wire_count_vs_pack",
    value: steady(count) / steady(pack),
    unit: "ratio",
    ...base,
  };
}
