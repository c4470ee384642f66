import { rejects } from "@std/assert";
import { startRunHost } from "./host.ts";

Deno.test("a host whose supervision tree fails ends its run: monitor.done rejects with the reason", async () => {
  // No trainers: no round ever closes, so only the failure can end the wait.
  const host = await startRunHost({
    run: "host-test",
    config: "tiny",
    rounds: 3,
    innerSteps: 2,
    outer: { lr: 1, momentum: 0 },
    emit: () => {},
  });
  try {
    const root = host.system.ref(`${host.system.node}/run`);
    await host.system.stop(root, { reason: new Error("gave up") });
    await rejects(host.monitor.done, /Run stopped: its supervision tree failed \(Error: gave up\)/);
  } finally {
    await host.shutdown();
  }
});
