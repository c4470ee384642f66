/**
 * Tokens/s of a browser tab beside a Deno trainer on the same machine: a host
 * (`deno task node --host`, one Deno trainer in its process) and headless
 * Chromium (WebGPU on SwiftShader) joining through `/join` train one run;
 * each trainer's tokens over its inner-phase time, over the rounds after the
 * first (shader compilation), is printed as JSON with the adapters.
 *
 * `deno run -A tests/browser_speed_main.ts [--config small] [--inner-steps 5] [--rounds 5]`
 *
 * @module
 */
import { type Command, intFlag, runCommand } from "../kernels/cli.ts";
import { browserMissing, CHROMIUM, Host, speeds, WEBGPU_ARGS } from "./_browser_join.ts";

/** The command line of the browser speed measurement. */
export const BROWSER_SPEED_COMMAND = {
  prog: "browser_speed",
  usage: "deno run -A tests/browser_speed_main.ts [flags]",
  about: "Measures a browser tab's tokens/s beside a Deno trainer in one run.",
  flags: {
    config: { value: "NAME", help: "model config (default small)" },
    "inner-steps": { value: "N", help: "inner steps per round (default 5)" },
    rounds: { value: "N", help: "rounds, at least 2 (default 5)" },
  },
} satisfies Command;

if (import.meta.main) {
  await runCommand(BROWSER_SPEED_COMMAND, Deno.args, async (flags) => {
    const missing = await browserMissing();
    if (missing) throw new Error(`Cannot measure: ${missing}`);
    const rounds = intFlag("rounds", flags.rounds, 2) ?? 5;
    const { chromium } = await import("playwright-core");
    const runDir = await Deno.makeTempDir({ prefix: "browser_speed_" });
    const host = new Host([
      ...["--host", "127.0.0.1:0", "--secret", "speed", "--trainers", "1", "--min-trainers", "2"],
      ...["--rounds", String(rounds), "--config", flags.config ?? "small", "--keepers", "0"],
      ...["--inner-steps", String(intFlag("inner-steps", flags["inner-steps"]) ?? 5)],
      ...["--run-dir", runDir, "--json"],
    ]);
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: WEBGPU_ARGS });
    try {
      const url = await host.url();
      const page = await browser.newPage();
      await page.goto(`http://${url}/join`);
      await page.fill("#token", "speed");
      await page.click("#go");
      if (await host.end(600_000) !== 0) throw new Error("The host's run failed");
      console.log(JSON.stringify({
        config: flags.config ?? "small",
        tokens_per_s: speeds(host.rounds().slice(1)),
        tab_adapter: await page.evaluate("document.getElementById('adapter').textContent"),
        host_engine: host.logs().filter((m) => m.includes("engine ready")),
      }));
    } finally {
      await browser.close();
      await host.end(5_000);
      await Deno.remove(runDir, { recursive: true });
    }
  });
}
