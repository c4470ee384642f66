import { equal, notEqual, ok, rejects } from "@std/assert";
import { retireWorker, threadEnded, workerThreadId } from "./_worker_thread.ts";

const FIXTURE = new URL("../tests/fixtures/thread_worker.ts", import.meta.url).href;

/** Starts the fixture Worker and returns it with the thread id it reported. */
async function start(): Promise<{ worker: Worker; thread: number }> {
  const worker = new Worker(FIXTURE, { type: "module" });
  const hello = await new Promise<{ thread?: number }>((r) => {
    worker.onmessage = (ev) => r(ev.data);
  });
  ok(hello.thread !== undefined, "the Worker could not read /proc/thread-self");
  return { worker, thread: hello.thread! };
}

function ask(worker: Worker, msg: string): Promise<unknown> {
  return new Promise((r) => {
    worker.onmessage = (ev) => r(ev.data);
    worker.postMessage(msg);
  });
}

Deno.test("worker thread: a Worker runs on its own thread, which ends after retirement", async () => {
  const { worker, thread } = await start();
  notEqual(thread, workerThreadId());
  // Alive: the wait times out.
  equal(await threadEnded(thread, 20), false);
  const r = await retireWorker(worker, { thread, close: () => ask(worker, "close") });
  equal(r.closed, true);
  equal(r.ended, true);
  // Gone from /proc/self/task.
  equal(await threadEnded(thread, 0), true);
});

Deno.test("worker thread: a Worker that never confirms close is terminated after the timeout", async () => {
  const { worker, thread } = await start();
  const r = await retireWorker(worker, {
    thread,
    close: () => new Promise(() => {}),
    closeTimeoutMs: 50,
  });
  equal(r.closed, false);
  equal(r.ended, true);
});

Deno.test("worker thread: an unknown thread is reported, not waited on", async () => {
  const { worker } = await start();
  const r = await retireWorker(worker, { close: () => ask(worker, "close") });
  equal(r.closed, true);
  equal(r.ended, "unknown");
});

Deno.test("worker thread: a bad thread id is a RangeError", async () => {
  await rejects(() => threadEnded(0), RangeError);
  await rejects(() => threadEnded(1.5), /Cannot wait for thread: expected a positive integer id/);
});
