/**
 * `runEmbedded({ dashboard })` (`deno task node --dashboard ADDR:PORT`): the
 * embedded run, which has no port of its own, serves `/status` and
 * `/metrics` while it trains, and stops serving when it returns.
 *
 * Slow (Workers compile shaders): run alone with
 * `deno test -A tests/dashboard_embedded_test.ts`.
 */
import { equal, ok, rejects } from "@std/assert";
import { runEmbedded } from "../actors/embedded.ts";
import { parseExposition } from "./_prometheus.ts";

Deno.test({
  name: "the embedded run serves its dashboard's status and metrics while it trains",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    let url = "";
    let checked: Promise<void> | undefined;
    let metricsRound = -1;
    let statusRun = "";
    const summary = await runEmbedded({
      run: "embedded-dashboard",
      config: "tiny",
      trainers: 1,
      rounds: 3,
      innerSteps: 2,
      outer: { lr: 1, momentum: 0 },
      evalWindows: 8,
      dashboard: "127.0.0.1:0",
      emit: (e) => {
        const m = e.event === "log" && /dashboard on (http:\/\/\S+)/.exec(e.message);
        if (m) url = m[1];
        if (e.event === "round" && e.round === 1 && !checked) {
          checked = (async () => {
            const metrics = parseExposition(await (await fetch(`${url}metrics`)).text());
            metricsRound = metrics.get("decentra_round")!.samples[0].value;
            statusRun = (await (await fetch(`${url}status`)).json()).run;
          })();
        }
      },
    });
    await checked;
    equal(summary.rounds, 3);
    ok(url.startsWith("http://127.0.0.1:"), url);
    ok(metricsRound >= 1, `decentra_round ${metricsRound}`);
    equal(statusRun, "embedded-dashboard");
    // The server is gone with the run.
    await rejects(() => fetch(`${url}status`));
  },
});
