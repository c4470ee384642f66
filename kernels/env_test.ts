import assert from "@std/assert";

const DEVICE = new URL("./device.ts", import.meta.url).href;
const ENV = new URL("./_env.ts", import.meta.url).href;

/** Runs `code` in a fresh Deno whose environment has no XDG_RUNTIME_DIR and TMPDIR `tmp`. */
async function runWithout(code: string, tmp: string) {
  const env: Record<string, string> = { TMPDIR: tmp, NO_COLOR: "1" };
  for (const k of ["PATH", "HOME", "DENO_DIR", "DENO_WEBGPU_BACKEND"]) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    clearEnv: true,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout).trim(), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name: "acquireGpu without XDG_RUNTIME_DIR: no driver warning, a private runtime directory",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const tmp = await Deno.makeTempDir();
    try {
      const r = await runWithout(
        `import { acquireGpu } from ${JSON.stringify(DEVICE)};
const gpu = await acquireGpu();
gpu.destroy();
console.log(Deno.env.get("XDG_RUNTIME_DIR"));`,
        tmp,
      );
      assert.equal(r.code, 0, r.stderr);
      // libwayland's line when the variable is unset (Mesa's EGL probes for a display).
      assert.ok(!r.stderr.includes("XDG_RUNTIME_DIR"), r.stderr);
      const dir = `${tmp}/decentra-runtime-${Deno.uid()}`;
      assert.equal(r.stdout, dir);
      const st = await Deno.stat(dir);
      assert.ok(st.isDirectory);
      assert.equal((st.mode ?? 0) & 0o777, 0o700);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test({
  name: "ensureRuntimeDir leaves the variable unset when the directory is not private",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const tmp = await Deno.makeTempDir();
    try {
      const dir = `${tmp}/decentra-runtime-${Deno.uid()}`;
      await Deno.mkdir(dir);
      await Deno.chmod(dir, 0o755);
      const code = `import { ensureRuntimeDir } from ${JSON.stringify(ENV)};
console.log(JSON.stringify([ensureRuntimeDir() ?? null, Deno.env.get("XDG_RUNTIME_DIR") ?? null]));`;
      let r = await runWithout(code, tmp);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), [null, null]);
      // Made private, it is used.
      await Deno.chmod(dir, 0o700);
      r = await runWithout(code, tmp);
      assert.deepEqual(JSON.parse(r.stdout), [dir, dir]);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
