import { deepEqual, equal, rejects } from "@std/assert";
import { PendingAsks } from "./_asks.ts";
import { AskTimeoutError } from "../actors/runtime/ref.ts";

// The op sanitizer fails this test if the aborted ask leaves its timeout timer running.
Deno.test("an ask whose signal is already aborted rejects with the reason and starts no timer", async () => {
  const asks = new PendingAsks();
  const controller = new AbortController();
  controller.abort(new Error("gone"));
  const posted: number[] = [];
  await rejects(
    asks.ask("peer/x", { signal: controller.signal, timeoutMs: 60_000 }, 60_000, (id) => {
      posted.push(id);
    }),
    /gone/,
  );
  deepEqual(posted, []);
});

Deno.test("an ask times out with AskTimeoutError and is no longer pending", async () => {
  const asks = new PendingAsks();
  let id = -1;
  await rejects(
    asks.ask("peer/x", { timeoutMs: 5 }, 60_000, (i) => {
      id = i;
    }),
    AskTimeoutError,
  );
  equal(asks.answer({ kind: "reply", corr: id, payload: 1 } as never), false);
});
