import { deepEqual, equal, ok, throws } from "@std/assert";
import {
  checkSync,
  DEFAULT_SYNC,
  defaultOverlapSteps,
  keepsRunning,
  mergeRange,
  reportCursor,
  syncOptions,
} from "./overlap.ts";

Deno.test("overlap: the merge replaces the local move of a round by the global one", () => {
  // θ_r, the trainer's parameters at the end of round r, Δ_r, then 3 more local steps.
  const thetaR = new Float32Array([1, -2, 0.5, 3]);
  const localR = new Float32Array([0.75, -1.5, 0.25, 3.5]);
  const delta = thetaR.map((x, i) => x - localR[i]);
  const steps = new Float32Array([0.01, -0.02, 0.03, 0]);
  const running = localR.map((x, i) => x + steps[i]);
  const thetaNext = new Float32Array([0.8, -1.7, 0.4, 3.2]);
  const global = new Float32Array(thetaR);
  // Only [1, 3) is synchronised this round (a fragment).
  mergeRange({ running, global, incoming: thetaNext, delta }, { lo: 1, hi: 3 });
  for (const i of [1, 2]) {
    // θ_{r+1} + the steps taken since round r ended.
    ok(Math.abs(running[i] - (thetaNext[i] + steps[i])) < 1e-6, `element ${i}: ${running[i]}`);
    equal(global[i], thetaNext[i]);
  }
  // Outside the range nothing moves.
  equal(running[0], Math.fround(localR[0] + steps[0]));
  equal(global[3], thetaR[3]);
});

Deno.test("overlap: settings are checked and named", () => {
  equal(checkSync("overlapped"), "overlapped");
  throws(() => checkSync("eager", "--sync"), /Invalid --sync: expected blocking or overlapped/);
  equal(keepsRunning({}), false);
  equal(keepsRunning({ sync: "blocking", fragments: 1 }), false);
  equal(keepsRunning({ sync: "overlapped" }), true);
  equal(keepsRunning({ fragments: 2 }), true);
  // A run that names no mode gets the default, overlapped; blocking is kept when named.
  deepEqual(syncOptions({}), { sync: DEFAULT_SYNC });
  equal(DEFAULT_SYNC, "overlapped");
  deepEqual(syncOptions({ sync: "blocking" }), { sync: "blocking" });
  deepEqual(syncOptions({ sync: "overlapped", overlapSteps: 3 }), {
    sync: "overlapped",
    overlapSteps: 3,
  });
  deepEqual([1, 3, 10, 30].map(defaultOverlapSteps), [1, 1, 2, 6]);
});

Deno.test("overlap: a round's report carries the data position of its own inner phase, not the next one's", () => {
  const cursors = new Map([[2, "after 2"], [3, "after 3"], [4, "after 4"]]);
  // Overlapped, phase 4 ended before round 3's update came.
  equal(reportCursor(cursors, 3), "after 3");
  deepEqual([...cursors.keys()], [3, 4]);
  equal(reportCursor(cursors, 4), "after 4");
  // A round whose phase this trainer did not run (it fetched θ): its latest phase before.
  equal(reportCursor(new Map([[5, "after 5"]]), 7), "after 5");
  equal(reportCursor(new Map([[8, "after 8"]]), 7), undefined);
});
