/**
 * A browser tab trains in a real run: a host (`deno task node --host`, one
 * Deno trainer in its process) waits for a second trainer; headless Chromium
 * (playwright-core, `/usr/bin/chromium`, WebGPU on SwiftShader) opens the
 * host's `/join`, types a wrong token (refused, and the page says why), then
 * the run's token, and joins. The tab must be among the
 * contributors of at least 3 rounds, and the θ hash it reports must equal the
 * Deno trainer's every round. Then the tab is closed while a round runs: the
 * host evicts it and the rounds go on with the Deno trainer.
 *
 * The bundle itself is checked too: it builds, and no project module in it
 * uses a Deno API (`Deno.`), since a browser has none.
 *
 * Each trainer's tokens/s over those rounds goes to `.ci/out/browser_join.json`,
 * a screenshot of the page to `.ci/out/join.png`.
 *
 * The browser part is skipped, with the reason printed, where Chromium or
 * playwright-core is missing. Slow (a run of two trainers, one of them on a
 * software GPU): run alone with `deno test -A tests/browser_join_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";
import { joinScripts } from "../actors/browser/assets.ts";
import { BROWSER_SUBSTITUTES, codeOf, denoApiUses } from "../actors/browser/bundle.ts";
import { browserMissing, CHROMIUM, Host, speeds, WEBGPU_ARGS } from "./_browser_join.ts";

Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp");

const OUT_DIR = new URL("../.ci/out/", import.meta.url);

Deno.test("browser bundle: it builds, and no module in it uses a Deno API", async () => {
  const { scripts, modules } = await joinScripts();
  ok(scripts.page.length > 0 && scripts.worker.length > 0);
  for (const m of ["actors/browser/join.ts", "actors/trainer.ts", "actors/trainer_worker.ts"]) {
    ok(modules.includes(m), `${m} is in the bundle`);
  }
  // Each Deno-only module went in as its browser twin.
  for (const [deno, twin] of Object.entries(BROWSER_SUBSTITUTES)) {
    ok(!modules.includes(deno), `${deno} is not bundled`);
    ok(modules.includes(twin), `${twin} is bundled`);
  }
  deepEqual(await denoApiUses(modules), [], "browser-bound modules that use Deno APIs");
  ok(!/\bimport\s*[{("]/.test(scripts.page), "the page bundle has no imports left");
});

Deno.test("browser bundle: the check catches a Deno API in a browser-bound module", async () => {
  deepEqual(await denoApiUses(["actors/_worker_thread.ts"]), [
    "actors/_worker_thread.ts: Deno.permissions, Deno.readLinkSync, Deno.stat, Deno.errors",
  ]);
  equal(codeOf("/** Deno.env */\n// Deno.exit()\nconst x = 1;").match(/\bDeno\.\w+/g), null);
  deepEqual(codeOf("const v = Deno.env.get('X');").match(/\bDeno\.\w+/g), ["Deno.env"]);
});

Deno.test("browser join: a tab contributes to rounds with the Deno trainer's θ, and is evicted when closed", async (t) => {
  const missing = await browserMissing();
  if (missing) {
    console.log(`skipped: ${missing}`);
    return;
  }
  const { chromium } = await import("playwright-core");
  const runDir = await Deno.makeTempDir({ prefix: "browser_join_" });
  // Enough rounds that the run is still going when the tab is closed: its first rounds close in
  // a fraction of a second each, and a run that has ended evicts nobody.
  const ROUNDS = 40;
  const host = new Host([
    "--host",
    "127.0.0.1:0",
    "--secret",
    "tab-token",
    "--trainers",
    "1",
    "--min-trainers",
    "2",
    "--rounds",
    String(ROUNDS),
    "--inner-steps",
    "2",
    "--config",
    "tiny",
    "--keepers",
    "0",
    "--run-dir",
    runDir,
    "--json",
  ]);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: WEBGPU_ARGS });
  try {
    const url = await host.url();
    const page = await browser.newPage();
    const consoleLines: string[] = [];
    page.on("console", (m) => consoleLines.push(m.text()));
    page.on("pageerror", (e) => consoleLines.push(`page error: ${e.message}`));
    // The host bundles the page when it starts: on busy cores that can take a while.
    await page.goto(`http://${url}/join`, { timeout: 180_000 });
    const state = async () =>
      await page.evaluate("document.getElementById('state').textContent") as string;
    await t.step("a wrong token is refused, and the page says so", async () => {
      await page.fill("#token", "not-the-token");
      await page.click("#go");
      await page.waitForFunction("!document.getElementById('go').disabled", null, {
        timeout: 60_000,
      });
      const shown = await state();
      ok(shown.includes(`Cannot join run at ws://${url}/`), shown);
      ok(shown.includes("authentication failed"), shown);
    });
    await page.fill("#token", "tab-token");
    await page.click("#go");
    const node = async () =>
      await page.evaluate("document.body.dataset.node") as string | undefined;
    const end = Date.now() + 300_000;
    let tab: string | undefined;
    while (!(tab = await node()) && Date.now() < end) await new Promise((r) => setTimeout(r, 250));
    if (!tab) {
      throw new Error(`The tab did not join: ${await state()} (page: ${consoleLines.join(" | ")})`);
    }
    const path = tab;
    await t.step(
      "the tab is among the contributors of 3 rounds, with the Deno trainer's θ",
      async () => {
        const withTab = await host.until(() => {
          const rs = host.rounds().filter((r) => r.contributors.includes(path));
          return rs.length >= 3 ? rs : undefined;
        }, `3 rounds with the tab among the contributors (page: ${consoleLines.join(" | ")})`);
        const reports = JSON.parse(
          await page.evaluate("document.body.dataset.rounds ?? '[]'") as string,
        ) as {
          round: number;
          hash: string;
          contributed: boolean;
          loss: number;
          globalLoss: number;
        }[];
        for (const r of withTab) {
          equal(r.theta_hashes.length, 2, `round ${r.round}: both trainers reported`);
          equal(new Set(r.theta_hashes).size, 1, `round ${r.round}: θ hashes ${r.theta_hashes}`);
          const mine = reports.find((x) => x.round === r.round);
          if (!mine) throw new Error(`The tab does not show round ${r.round}`);
          equal(mine.hash, r.theta_hashes[0], `round ${r.round}: the tab's θ hash`);
          ok(mine.contributed, `the tab contributed to round ${r.round}`);
          // The round's loss is the mean of both trainers' (same model, disjoint shards of one
          // corpus): a tab whose kernels computed wrong on its adapter would stand apart.
          ok(
            Math.abs(mine.loss - r.loss) < 0.05 * r.loss,
            `round ${r.round}: the tab's loss ${mine.loss} beside the round's ${r.loss}`,
          );
          // The round's loss as the tab shows it (from the round's update) is the host's.
          ok(Math.abs(mine.globalLoss - r.loss) < 1e-4, `round ${r.round}: ${mine.globalLoss}`);
        }
        // The figures of the README's "Joining from a browser" (deno test shows no passing output).
        const figures = JSON.stringify({ tab: path, tokens_per_s: speeds(withTab) });
        await Deno.mkdir(OUT_DIR, { recursive: true });
        await Deno.writeTextFile(new URL("browser_join.json", OUT_DIR), figures + "\n");
        console.log(`tokens/s (inner phase): ${figures}`);
        const shot = new URL("join.png", OUT_DIR);
        await page.screenshot({ path: decodeURIComponent(shot.pathname), fullPage: true });
        console.log(`screenshot: ${decodeURIComponent(shot.pathname)}`);
      },
    );
    await t.step("closing the tab mid-round: the host evicts it and the rounds go on", async () => {
      const before = host.rounds().length;
      ok(before < ROUNDS - 1, `the run closed ${before} of ${ROUNDS} rounds before the tab closed`);
      await page.close();
      await host.until(
        () => host.logs().find((m) => m.startsWith("tracker evicted") && m.includes(path)),
        "the host to evict the closed tab",
      );
      const after = await host.until(() => {
        const rs = host.rounds().slice(before).filter((r) => !r.contributors.includes(path));
        return rs.length >= 1 ? rs : undefined;
      }, "a round without the tab");
      ok(after[0].round >= before - 1);
      equal(await host.end(), 0, "the host ends its run");
      equal(host.rounds().at(-1)?.round, ROUNDS - 1, "every round closed");
    });
  } finally {
    await browser.close();
    await host.end(5_000).catch(() => {});
    await Deno.remove(runDir, { recursive: true });
  }
});
