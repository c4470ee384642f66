/**
 * Sampling from a tiny checkpoint saved here: the first new byte's logits
 * agree with the independent numpy GPT-2 (tests/gpt2_reference.py), greedy
 * bytes are the reference's argmax byte after byte, and `deno task sample`'s
 * text is fixed by its seed; bad input gets one line and exit 2.
 */
import { deepEqual, equal, match, notEqual, ok } from "@std/assert";
import { numpyLogits } from "./_numpy_gpt2.ts";
import { runCli } from "./_cli_run.ts";
import type { GptConfig } from "../kernels/config.ts";
import { acquireGpu } from "../kernels/device.ts";
import { initParams } from "../kernels/init.ts";
import { createModel } from "../kernels/model.ts";
import { generate } from "../kernels/sample.ts";
import { loadGpt2, saveGpt2 } from "../checkpoint/gpt2_safetensors.ts";

const config: GptConfig = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 256 };
const PROMPT = "The cat";

const sample = (args: string[]) => runCli("kernels/sample_main.ts", args);

let dir = "";
let ckpt = "";

Deno.test.beforeAll(async () => {
  dir = await Deno.makeTempDir({ prefix: "sample_cli_" });
  ckpt = `${dir}/tiny.safetensors`;
  // GPT-2 init scaled up so that the logits spread over a few nats (init alone is near uniform).
  await saveGpt2(ckpt, config, initParams(config, 5).map((x) => x * 3));
});

Deno.test.afterAll(async () => {
  await Deno.remove(dir, { recursive: true });
});

Deno.test("sample: the first new byte's logits agree with the numpy GPT-2 to 1e-4; greedy bytes are its argmax", async () => {
  const { config: c, params } = await loadGpt2(ckpt);
  const prompt = new TextEncoder().encode(PROMPT);
  const gpu = await acquireGpu();
  let first: Float32Array;
  let greedy: Uint32Array;
  try {
    const model = await createModel(gpu, c, { batch: 1 });
    model.setParams(params);
    const row = new Uint8Array(c.blockSize);
    row.set(prompt);
    first = await model.forwardLogits(row, [prompt.length - 1]);
    greedy = (await generate(model, prompt, { tokens: 12, temperature: 0 })).tokens;
    model.dispose();
  } finally {
    gpu.destroy();
  }
  const seq = Uint8Array.from([...prompt, ...greedy]);
  const seqFile = `${dir}/greedy.bin`;
  await Deno.writeFile(seqFile, seq);
  const ref = await numpyLogits(ckpt, seqFile);
  if (ref === null) return;
  const want = ref[prompt.length - 1];
  const scale = Math.max(...want.map(Math.abs));
  const worst = Math.max(...want.map((x, i) => Math.abs(first[i] - x)));
  ok(scale > 1, `reference logits should spread: max |logit| ${scale}`);
  ok(worst / scale < 1e-4, `max |ours - numpy| ${worst} over max |logit| ${scale}`);
  for (let n = prompt.length; n < seq.length; n++) {
    const logits = ref[n - 1];
    equal(seq[n], logits.indexOf(Math.max(...logits)), `greedy byte ${n - prompt.length}`);
  }
});

Deno.test("sample: a seed fixes the text, another seed changes it; plain mode streams the text", async () => {
  const args = ["--checkpoint", ckpt, "--prompt", PROMPT, "--tokens", "12"];
  const run = async (extra: string[]) => {
    const r = await sample([...args, ...extra]);
    equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout.trim());
  };
  const a = await run(["--seed", "7", "--json"]);
  equal(a.prompt, PROMPT);
  equal(a.tokens, 12);
  ok(a.tokens_per_s > 0);
  equal((await run(["--seed", "7", "--json"])).text, a.text);
  notEqual((await run(["--seed", "8", "--json"])).text, a.text);
  // Plain mode prints the prompt and its continuation on stdout, the speed on stderr.
  const plain = await sample([...args, "--seed", "7"]);
  equal(plain.code, 0, plain.stderr);
  equal(plain.stdout, `${PROMPT}${a.text}\n`);
  match(plain.stderr, /^sample: 12 bytes in .* s \(.* bytes\/s\)/);
});

Deno.test("sample: bad flags end with one line and exit 2; a missing checkpoint names its error type", async () => {
  const cases: [string[], RegExp, number][] = [
    [[], /^sample: Missing --checkpoint FILE/, 2],
    [["--checkpoint", "x", "--temperature=-1"], /^sample: Invalid --temperature: "-1"/, 2],
    // node:util's parseArgs reads "-1" after a flag as a flag of its own: still one line, exit 2.
    [
      ["--checkpoint", "x", "--temperature", "-1"],
      /^sample: Option '--temperature' .*ambiguous/,
      2,
    ],
    [["--checkpoint", "x", "--temperature", "hot"], /^sample: Invalid --temperature: "hot"/, 2],
    [["--checkpoint", "x", "--tokens", "0"], /^sample: Invalid --tokens: "0"/, 2],
    [["--checkpoint", "x", "--top-k=-3"], /^sample: Invalid --top-k: "-3"/, 2],
    [["--checkpoint", "x", "--seed", "1.5"], /^sample: Invalid --seed: "1.5"/, 2],
    [["--checkpoint", "x", "--prompt", ""], /^sample: Invalid --prompt: empty/, 2],
    [["--checkpoint", "x", "--nope"], /^sample: Unknown option '--nope'/, 2],
    // Like deno task eval: an unreadable checkpoint is the input's fault (exit 2), named by its
    // error type.
    [
      ["--checkpoint", `${dir}/none.safetensors`],
      /^sample: SafetensorsError: Cannot read checkpoint: .*none\.safetensors does not exist$/,
      2,
    ],
  ];
  for (const [args, re, code] of cases) {
    const r = await sample(args);
    equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    deepEqual(lines.length, 1, `${args.join(" ")}: ${r.stderr}`);
    match(lines[0], re);
  }
});
