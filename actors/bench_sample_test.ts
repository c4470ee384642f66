import { deepEqual, ok } from "@std/assert";
import { bench } from "./bench_sample.ts";
import type { BenchRecord } from "../tests/bench_main.ts";

Deno.test({
  name: "the sample bench gives every figure, finite and positive",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const records: BenchRecord[] = [];
    for await (const r of bench({ quick: true })) records.push(r);
    deepEqual(records.map((r) => r.name), [
      "eval_64_windows_ms",
      "sample_ms",
      "sample_ms_per_byte",
      "sample_vs_eval",
      "eval_forward_ms",
      "sample_estimate_vs_measured",
    ]);
    for (const r of records) ok(Number.isFinite(r.value) && r.value > 0, `${r.name}: ${r.value}`);
  },
});
