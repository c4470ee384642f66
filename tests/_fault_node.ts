/**
 * One trainer node in its own process, for the fault suite's process tests:
 * `deno run -A tests/_fault_node.ts --node p0 --host ws://... --tracker ws://...`.
 * Joins a fault run (tests/_fault_run.ts) over WebSockets and prints one
 * JSON line per event on stdout.
 *
 * @module
 */
import { parseArgs } from "@std/cli";
import { ActorSystem } from "../actors/runtime/system.ts";
import { Supervisor } from "../actors/runtime/supervisor.ts";
import { trainerBehavior } from "../actors/trainer.ts";
import { engineSettings } from "../actors/run_settings.ts";
import { ActorTransport } from "../transport/remote.ts";
import { faultSettings, RUN, SECRET } from "./_fault_run.ts";
import { syncOptions } from "../actors/overlap.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    node: { type: "string" },
    host: { type: "string" },
    tracker: { type: "string" },
    "inner-steps": { type: "string", default: "3" },
  },
});
if (!values.node || !values.host || !values.tracker) {
  console.error("Usage: _fault_node.ts --node NAME --host WS_URL --tracker WS_URL");
  Deno.exit(2);
}
const line = (o: Record<string, unknown>) => console.log(JSON.stringify(o));
const system = new ActorSystem({ node: values.node });
const transport = new ActorTransport(system, {
  run: RUN,
  secret: SECRET,
  pingIntervalMs: 500,
  pingTimeoutMs: 2500,
  handshakeTimeoutMs: 2000,
  log: () => {},
});
await transport.connect(values.host, { expectedPeer: "host", backoffMaxMs: 500 }).ready();
await transport.connect(values.tracker, { expectedPeer: "trk", backoffMaxMs: 500 }).ready();
const innerSteps = Number(values["inner-steps"]);
const path = `${values.node}/node/trainer`;
await system.spawn(
  new Supervisor({
    intensity: 20,
    periodMs: 60_000,
    children: [{
      id: "trainer",
      start: () =>
        trainerBehavior({
          run: RUN,
          id: path,
          tracker: "trk/tracker/tracker",
          monitor: "host/monitor",
          engine: engineSettings(faultSettings(innerSteps)),
          dataShards: 16,
          innerSteps,
          ...syncOptions(faultSettings(innerSteps)),
          heartbeatMs: 500,
          onEvent: (e) => {
            if (e.type === "report") {
              line({ event: "report", round: e.report.round, hash: e.report.hash });
            } else if (e.type === "log") {
              line({ event: "log", message: e.message });
            }
          },
        }),
    }],
  }),
  { name: "node", shutdownMs: Infinity },
);
line({ event: "started", node: values.node });
await new Promise(() => {}); // until killed
