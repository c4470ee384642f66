import { deepEqual, equal, ok, rejects } from "@std/assert";
import {
  CheckpointStore,
  CheckpointWriteError,
  CorruptCheckpointError,
  denoFs,
  prepareRound,
  type RoundState,
  sha256Hex,
  type StoreFs,
} from "./store.ts";
import { loadGpt2 } from "./gpt2_safetensors.ts";
import { buildLayout } from "../kernels/layout.ts";
import type { GptConfig } from "../kernels/config.ts";

const CONFIG: GptConfig = { nLayer: 1, nHead: 2, nEmbd: 8, blockSize: 4, vocabSize: 16 };
const N = buildLayout(CONFIG).totalLength;

/** A deterministic state for `round`: params differ per round, padding stays 0. */
function stateOf(round: number, extra: Partial<RoundState> = {}): RoundState {
  const layout = buildLayout(CONFIG);
  const params = new Float32Array(N);
  for (const v of layout.views) {
    for (let i = 0; i < v.length; i++) params[v.offset + i] = Math.sin(round * 7.1 + i * 0.37);
  }
  return {
    run: "r",
    round,
    config: CONFIG,
    params,
    momentum: new Float32Array(N).map((_, i) => (i % 5) * 0.01 * (round + 1)),
    view: { epoch: round + 1, trainers: ["a", "b"] },
    cursors: { a: { seed: 1, shard: { index: 0, count: 2 }, step: round * 10 } },
    settings: { innerSteps: 10 },
    ...extra,
  };
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "ckpt_store_" });
}

function bits(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

Deno.test("store: a committed round loads back bit for bit with momentum, view and cursors", async () => {
  const dir = await tempDir();
  try {
    const store = new CheckpointStore(dir);
    const s = stateOf(4, { residual: new Float32Array(N).fill(-0.5) });
    // Non-zero padding and a negative zero must survive too.
    s.params[N - 1] = 3.25;
    s.params[0] = -0;
    const m = await store.commit(s);
    equal(m.round, 4);
    const latest = await store.loadLatest({ expect: CONFIG });
    if (!latest) throw new Error("no round loaded");
    equal(latest.state.round, 4);
    deepEqual(bits(latest.state.params), bits(s.params));
    deepEqual(bits(latest.state.momentum), bits(s.momentum));
    deepEqual(latest.state.residual, s.residual);
    deepEqual(latest.state.view, s.view);
    deepEqual(latest.state.cursors, s.cursors);
    deepEqual(latest.state.settings, s.settings);
    deepEqual(latest.skipped, []);
    equal(m.params_sha256, await sha256Hex(new Uint8Array(s.params.buffer)));
    equal(await Deno.readLink(`${dir}/latest`), "rounds/4");
    // The model file is a plain GPT-2 checkpoint, readable through `latest`.
    const model = await loadGpt2(`${dir}/latest/model.safetensors`, { expect: CONFIG });
    equal(model.params[5], s.params[5]);
    const manifest = JSON.parse(await Deno.readTextFile(`${dir}/latest/manifest.json`));
    equal(manifest.files["model.safetensors"].sha256.length, 64);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: retention keeps the last K rounds and every M-th, latest points at the newest", async () => {
  const dir = await tempDir();
  try {
    const store = new CheckpointStore(dir, { retention: { keepLast: 3, keepEvery: 10 } });
    for (let r = 0; r <= 25; r++) await store.commit(stateOf(r));
    deepEqual(await store.rounds(), [0, 10, 20, 23, 24, 25]);
    equal(await Deno.readLink(`${dir}/latest`), "rounds/25");
    deepEqual([...Deno.readDirSync(`${dir}/rounds`)].filter((e) => e.name.startsWith(".")), []);
    deepEqual(new CheckpointStore(dir).kept([1, 2, 3, 4, 5]), [3, 4, 5]);
    deepEqual(
      new CheckpointStore(dir, { retention: { keepLast: 1, keepEvery: 2 } }).kept([1, 2, 3, 5]),
      [2, 5],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: a corrupt, torn or incomplete newest round is named, skipped and the previous used", async () => {
  const dir = await tempDir();
  try {
    const store = new CheckpointStore(dir, { retention: { keepLast: 10, keepEvery: 0 } });
    for (let r = 1; r <= 4; r++) await store.commit(stateOf(r));
    // Round 4: one flipped bit in the state file.
    const statePath = `${dir}/rounds/4/state.safetensors`;
    const bytes = await Deno.readFile(statePath);
    bytes[bytes.length - 3] ^= 1;
    await Deno.writeFile(statePath, bytes);
    // Round 3: a torn (truncated) model file.
    const modelPath = `${dir}/rounds/3/model.safetensors`;
    const model = await Deno.readFile(modelPath);
    await Deno.writeFile(modelPath, model.subarray(0, model.length >> 1));
    // Round 2: no manifest.
    await Deno.remove(`${dir}/rounds/2/manifest.json`);
    const seen: number[] = [];
    const latest = await store.loadLatest({ onSkip: (s) => seen.push(s.round) });
    equal(latest?.state.round, 1);
    deepEqual(latest?.state.params, stateOf(1).params);
    deepEqual(seen, [4, 3, 2]);
    const [s4, s3, s2] = latest!.skipped;
    ok(
      /round 4 is corrupt: .*state\.safetensors sha256 .* does not match/.test(s4.reason),
      s4.reason,
    );
    ok(/round 3 is corrupt: .*model\.safetensors has \d+ bytes.*torn/.test(s3.reason), s3.reason);
    ok(/round 2 is corrupt: .*manifest\.json cannot be read/.test(s2.reason), s2.reason);
    await rejects(
      store.load(4),
      (e: unknown) =>
        e instanceof CorruptCheckpointError && e.round === 4 && e.file === "state.safetensors",
    );
    // Committing round 4 again replaces the corrupt copy with a good one.
    await store.commit(stateOf(4));
    equal((await store.loadLatest())?.state.round, 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: a file that matches its manifest but not θ's hash is refused", async () => {
  const dir = await tempDir();
  try {
    const store = new CheckpointStore(dir);
    await store.commit(stateOf(1));
    // Rewrite the manifest with a wrong θ hash but correct file hashes.
    const path = `${dir}/rounds/1/manifest.json`;
    const m = JSON.parse(await Deno.readTextFile(path));
    m.params_sha256 = "0".repeat(64);
    await Deno.writeTextFile(path, JSON.stringify(m));
    await rejects(store.load(1), /decoded θ hashes .* the manifest recorded/);
    equal(await store.loadLatest(), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: committing a round twice is idempotent; a different θ under the same round is refused", async () => {
  const dir = await tempDir();
  try {
    const store = new CheckpointStore(dir);
    const a = await store.commit(stateOf(2));
    const b = await store.commit(stateOf(2));
    equal(a.params_sha256, b.params_sha256);
    const other = stateOf(2);
    other.params[0] += 1;
    await rejects(
      store.commit(other),
      (e: unknown) => e instanceof CheckpointWriteError && e.code === "EEXIST",
    );
    equal((await store.loadLatest())?.manifest.params_sha256, a.params_sha256);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: a failing writer (disk full) is a named CheckpointWriteError and commits nothing", async () => {
  const dir = await tempDir();
  try {
    const good = new CheckpointStore(dir);
    await good.commit(stateOf(1));
    let writes = 0;
    const fullFs: StoreFs = {
      ...denoFs,
      async writeFile(path, bytes) {
        // The second file of the round fails, after the first was written.
        if (++writes === 2) {
          throw Object.assign(new Error("No space left on device (os error 28)"), {
            code: "ENOSPC",
          });
        }
        await denoFs.writeFile(path, bytes);
      },
    };
    const store = new CheckpointStore(dir, { fs: fullFs });
    await rejects(store.commit(stateOf(2)), (e: unknown) => {
      if (!(e instanceof CheckpointWriteError)) return false;
      equal(e.code, "ENOSPC");
      equal(e.round, 2);
      ok(
        /Cannot write checkpoint round 2: write .*state\.safetensors: disk full \(ENOSPC\)/.test(
          e.message,
        ),
        e.message,
      );
      return true;
    });
    deepEqual(await good.rounds(), [1]);
    deepEqual([...Deno.readDirSync(`${dir}/rounds`)].map((e) => e.name), ["1"]);
    equal((await good.loadLatest())?.state.round, 1);
    equal(await Deno.readLink(`${dir}/latest`), "rounds/1");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: a read-only directory is a named CheckpointWriteError", async () => {
  const dir = await tempDir();
  try {
    const runDir = `${dir}/run`;
    await new CheckpointStore(runDir).commit(stateOf(1));
    let expectCodes: string[];
    let mounted = false;
    if (Deno.uid() === 0) {
      // Root ignores mode bits: make the folder a read-only mount instead.
      const p = new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", `${runDir}/rounds`],
        stderr: "null",
      }).outputSync();
      mounted = p.success;
      expectCodes = ["EROFS"];
    } else {
      await Deno.chmod(`${runDir}/rounds`, 0o555);
      expectCodes = ["EACCES", "EPERM"];
    }
    if (Deno.uid() === 0 && !mounted) {
      // No mount allowed here: fall back to a file where the folder should be.
      await Deno.remove(`${runDir}/rounds`, { recursive: true });
      await Deno.writeTextFile(`${runDir}/rounds`, "");
      expectCodes = ["ENOTDIR", "EEXIST"];
    }
    try {
      await rejects(new CheckpointStore(runDir).commit(stateOf(2)), (e: unknown) => {
        if (!(e instanceof CheckpointWriteError)) return false;
        ok(expectCodes.includes(e.code), `${e.code}: ${e.message}`);
        ok(e.message.startsWith("Cannot write checkpoint round 2:"), e.message);
        return true;
      });
    } finally {
      if (mounted) new Deno.Command("umount", { args: [`${runDir}/rounds`] }).outputSync();
      else if (Deno.uid() !== 0) await Deno.chmod(`${runDir}/rounds`, 0o755);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "store: a full disk (tiny tmpfs) is a named ENOSPC CheckpointWriteError",
  ignore: Deno.uid() !== 0,
  async fn() {
    const dir = await tempDir();
    const mount = new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=8k", "tmpfs", dir],
      stderr: "null",
    }).outputSync();
    try {
      if (!mount.success) return; // no mount permission in this sandbox
      await rejects(new CheckpointStore(dir).commit(stateOf(1)), (e: unknown) => {
        if (!(e instanceof CheckpointWriteError)) return false;
        equal(e.code, "ENOSPC");
        return true;
      });
      equal(await new CheckpointStore(dir).loadLatest(), undefined);
      deepEqual(await new CheckpointStore(dir).rounds(), []);
    } finally {
      if (mount.success) new Deno.Command("umount", { args: [dir] }).outputSync();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("store: temporary folders of a killed writer are removed and never loaded", async () => {
  const dir = await tempDir();
  try {
    const store = new CheckpointStore(dir);
    await store.commit(stateOf(1));
    const p = await prepareRound(stateOf(2));
    const tmp = `${dir}/rounds/.tmp-2-dead`;
    await Deno.mkdir(tmp);
    await Deno.writeFile(`${tmp}/model.safetensors`, p.files.get("model.safetensors")!);
    deepEqual(await store.rounds(), [1]);
    const fresh = new CheckpointStore(dir);
    deepEqual(await fresh.cleanup(), [".tmp-2-dead"]);
    await fresh.commit(stateOf(2));
    equal((await fresh.loadLatest())?.state.round, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: bad states and retention are refused with the field named", async () => {
  const s = stateOf(1);
  await rejects(prepareRound({ ...s, params: new Float32Array(3) }), /params has 3 floats/);
  await rejects(prepareRound({ ...s, momentum: new Float32Array(3) }), /momentum has 3 floats/);
  const nan = stateOf(1);
  nan.params[2] = NaN;
  await rejects(prepareRound(nan), /params\[2\] is not finite/);
  await rejects(prepareRound({ ...s, round: -1 }), /round -1/);
  let threw = false;
  try {
    new CheckpointStore("/tmp/x", { retention: { keepLast: 0 } });
  } catch (e) {
    threw = /keepLast/.test(String(e));
  }
  ok(threw);
});
