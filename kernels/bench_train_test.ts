import { equal } from "@std/assert";
import { trainStepFlops } from "./bench_train.ts";

Deno.test("trainStepFlops is 6·N·tokens plus attention", () => {
  // L=2, C=64, T=64, 120576 params, 1024 tokens.
  const n = 120576 - 64 * 64;
  equal(
    trainStepFlops({ nLayer: 2, nEmbd: 64, blockSize: 64 }, 120576, 1024),
    6 * n * 1024 + 12 * 2 * 64 * 64 * 1024,
  );
});
