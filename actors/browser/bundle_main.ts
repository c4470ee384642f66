/**
 * `deno task bundle`: bundles the browser trainer (its page script and its
 * compute Worker, actors/browser/assets.ts) and writes them, with the page,
 * to a folder (default `dist/join/`): a check that the bundle builds, and the
 * files for a look or a server of one's own. `deno task node --host ...`
 * bundles the same in memory when it starts and needs no such step.
 *
 * @module
 */
import { joinScripts } from "./assets.ts";
import { denoApiUses } from "./bundle.ts";
import { joinPageHtml } from "./shell.ts";
import { type Command, runCommand } from "../../kernels/cli.ts";

/** The command line of `deno task bundle`. */
export const BUNDLE_COMMAND = {
  prog: "bundle",
  usage: "deno task bundle [flags]",
  about: "Bundles the browser trainer (GET /join of a host) with esbuild and writes it.",
  flags: {
    out: {
      value: "DIR",
      help: "where to write index.html, page.js, worker.js (default dist/join)",
    },
    run: { value: "ID", help: "the run id written into index.html (default run)" },
  },
} satisfies Command;

if (import.meta.main) {
  await runCommand(BUNDLE_COMMAND, Deno.args, async (flags) => {
    const out = flags.out ?? "dist/join";
    const { scripts, modules } = await joinScripts();
    const uses = await denoApiUses(modules);
    if (uses.length > 0) {
      throw new Error(`Browser-bound modules use Deno APIs: ${uses.join("; ")}`);
    }
    await Deno.mkdir(out, { recursive: true });
    const files = {
      "index.html": joinPageHtml(flags.run ?? "run"),
      "page.js": scripts.page,
      "worker.js": scripts.worker,
    };
    for (const [name, text] of Object.entries(files)) {
      await Deno.writeTextFile(`${out}/${name}`, text);
      console.log(`${out}/${name}: ${text.length} bytes`);
    }
    console.log(`${modules.length} project modules, none of them using a Deno API`);
  });
}
