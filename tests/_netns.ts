/**
 * What the network-namespace setups (tests/netns_test.ts and the checkpoint
 * bench's shaped link) need from the host: a synchronous command runner and
 * the reason, if any, that `ip netns` and `tc` cannot be used here.
 *
 * @module
 */

/** Runs a command to completion; `out` is its stdout and stderr, trimmed. */
export function runTool(args: string[]): { ok: boolean; out: string } {
  try {
    const r = new Deno.Command(args[0], { args: args.slice(1), stdout: "piped", stderr: "piped" })
      .outputSync();
    const dec = new TextDecoder();
    return { ok: r.success, out: (dec.decode(r.stdout) + dec.decode(r.stderr)).trim() };
  } catch (err) {
    return { ok: false, out: String(err) };
  }
}

/** Why network namespaces cannot be set up here (not Linux, not root, no `ip netns` or `tc`). */
export function netnsUnavailable(): string | undefined {
  if (Deno.build.os !== "linux") return `not Linux (${Deno.build.os})`;
  if (Deno.uid() !== 0) return `not root (uid ${Deno.uid()}): ip netns needs root`;
  const ipn = runTool(["ip", "netns", "list"]);
  if (!ipn.ok) return `"ip netns" is not available: ${ipn.out}`;
  const tc = runTool(["tc", "-V"]);
  if (!tc.ok) return `"tc" is not available: ${tc.out}`;
  return undefined;
}
