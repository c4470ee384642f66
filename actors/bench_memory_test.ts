import { deepEqual, ok } from "@std/assert";
import { bench } from "./bench_memory.ts";
import type { BenchRecord } from "../tests/bench_main.ts";

Deno.test("the memory bench runs a host and a joiner at two widths and gives every figure, finite and positive", async () => {
  const records: BenchRecord[] = [];
  for await (const r of bench({ quick: true })) records.push(r);
  deepEqual(records.map((r) => r.name), [
    "memory_host_peak_mb",
    "memory_joiner_peak_mb",
    "memory_host_peak_mb",
    "memory_joiner_peak_mb",
    "memory_host_bytes_per_param",
    "memory_joiner_bytes_per_param",
  ]);
  for (const r of records) ok(Number.isFinite(r.value) && r.value > 0, `${r.name}: ${r.value}`);
  ok(Number(records[2].params) > Number(records[0].params), "the second width is the larger");
});
