import { deepEqual, equal, notEqual, ok, rejects } from "@std/assert";
import {
  ActorSystem,
  Supervisor,
  type SupervisorEvent,
  workerActor,
  WorkerDiedError,
  type WorkerHandle,
} from "./mod.ts";
import type { FixtureMsg } from "./worker_fixture.ts";

const FIXTURE = new URL("./worker_fixture.ts", import.meta.url);

async function until(check: () => boolean, max = 5000): Promise<void> {
  for (let i = 0; i < max; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error("Condition not reached");
}

Deno.test("a worker-hosted actor answers asks and takes args", async () => {
  await using system = new ActorSystem({ node: "n" });
  const ref = await system.spawn<FixtureMsg>(workerActor(FIXTURE, { args: { prefix: "> " } }), {
    name: "w",
  });
  equal(await ref.ask({ op: "echo", value: "hi" }), "> hi");
  deepEqual(
    await ref.ask({ op: "echo", value: new Float32Array([1, 2]) }),
    new Float32Array([1, 2]),
  );
  ref.tell({ op: "echo", value: "told" });
  equal(typeof await ref.ask({ op: "id" }), "string");
});

Deno.test("a module without a behavior fails to start with a clear error", async () => {
  await using system = new ActorSystem({ node: "n" });
  const empty = "data:text/javascript," + encodeURIComponent("export default 42;");
  await rejects(system.spawn(workerActor(empty)), /default export must be a behavior/);
  equal(system.stats().actors, 0);
});

type Crash = "throw" | "close" | "async_crash" | "terminate";

for (const crash of ["throw", "close", "async_crash", "terminate"] as Crash[]) {
  Deno.test(`a worker actor that dies by ${crash} is restarted by its supervisor in a fresh Worker`, async () => {
    await using system = new ActorSystem({ node: "n" });
    const events: SupervisorEvent[] = [];
    const handles: WorkerHandle[] = [];
    const sup = new Supervisor({
      children: [{
        id: "gpu",
        start: () => workerActor(FIXTURE, { onStart: (h) => handles.push(h) }),
      }],
      onEvent: (e) => events.push(e),
    });
    await system.spawn(sup, { name: "trainer" });
    const ref = system.ref<FixtureMsg>("n/trainer/gpu");
    const before = await ref.ask<string>({ op: "id" });

    if (crash === "terminate") handles[0].terminate("fault injection");
    else if (crash === "async_crash") equal(await ref.ask({ op: "async_crash" }), "scheduled");
    else await rejects(ref.ask({ op: crash }));
    await until(() => events.some((e) => e.type === "restarted"));

    const failed = events.find((e) => e.type === "failed");
    if (failed?.type !== "failed") throw new Error("no failed event");
    if (crash === "throw") {
      ok(failed.reason instanceof Error && failed.reason.name === "RangeError");
    } else {
      ok(failed.reason instanceof WorkerDiedError, String(failed.reason));
    }
    const after = await ref.ask<string>({ op: "id" });
    notEqual(after, before, "the restarted actor runs in a new Worker");
    equal(handles.length, 2);
    equal(sup.stats().restarts, 1);
  });
}
