import { deepEqual, ok } from "@std/assert";
import { bench } from "./bench_aggregation.ts";
import type { BenchRecord } from "../tests/bench_main.ts";

Deno.test("the aggregation bench gives every figure, finite and positive", async () => {
  const records: BenchRecord[] = [];
  for await (const r of bench({ quick: true })) records.push(r);
  deepEqual(records.map((r) => r.name), [
    "aggregator_close_first_ms",
    "aggregator_close_ms",
    "aggregator_close_ns_per_param",
    "aggregator_state_ms",
    "aggregator_state_ns_per_param",
    "aggregator_state_lent_ms",
    "aggregator_state_lent_ns_per_param",
    "aggregator_checksum_ms",
    "aggregator_checksum_ns_per_param",
    "shard_copy_ms",
    "close_vs_copy",
    "trainer_apply_ms",
    "theta_hash_ms",
    "theta_hash_webcrypto_ms",
    "theta_hash_vs_webcrypto",
    "wire_count_ms",
    "wire_pack_ms",
    "wire_count_vs_pack",
  ]);
  for (const r of records) ok(Number.isFinite(r.value) && r.value > 0, `${r.name}: ${r.value}`);
});
