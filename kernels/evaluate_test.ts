import { deepEqual, equal, throws } from "@std/assert";
import { selectWindows, windowCount } from "./evaluate.ts";

Deno.test("windowCount drops a trailing window shorter than T+1 bytes", () => {
  equal(windowCount(64, 64), 0);
  equal(windowCount(65, 64), 1);
  equal(windowCount(128, 64), 1);
  equal(windowCount(129, 64), 2);
  equal(windowCount(10, 3), 3);
});

Deno.test("selectWindows takes the first N, or N spread evenly", () => {
  deepEqual(selectWindows(5), [0, 1, 2, 3, 4]);
  deepEqual(selectWindows(5, { maxWindows: 3 }), [0, 1, 2]);
  deepEqual(selectWindows(10, { maxWindows: 4, selection: "spread" }), [0, 2, 5, 7]);
  deepEqual(selectWindows(3, { maxWindows: 9, selection: "spread" }), [0, 1, 2]);
  throws(() => selectWindows(3, { maxWindows: 0 }), /Invalid max windows/);
});
