/**
 * The joiner side of the checkpoint bench (checkpoint/bench.ts), in its own
 * process: dials the bench host over the real transport and fetches a round
 * from its keeper, or takes the same bytes from a bare WebSocket.
 *
 * `deno run -A checkpoint/_bench_joiner.ts compare ACTOR_URL BARE_URL ROUND REPS CHUNK`:
 * alternates a bare transfer and a keeper fetch REPS times; one JSON line each.
 * `deno run -A checkpoint/_bench_joiner.ts loop ACTOR_URL BARE_URL ROUND SECONDS CHUNK`:
 * fetches the round from the keeper again and again for SECONDS (`bareloop`: from the
 * bare WebSocket); one JSON line per transfer.
 *
 * @module
 */
import { ActorSystem } from "../actors/runtime/system.ts";
import { ActorTransport } from "../transport/remote.ts";
import { fetchRound } from "../actors/keeper_fetch.ts";

/** The bench's run id and secret (loopback only). */
export const BENCH_RUN = "ckpt-bench";
/** See {@linkcode BENCH_RUN}. */
export const BENCH_SECRET = "ckpt-bench-secret";

/** Takes all bytes the bare server sends for one "go"; returns [bytes, ms]. */
export async function bareTransfer(url: string): Promise<{ bytes: number; ms: number }> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`Cannot reach ${url}`));
  });
  const done = Promise.withResolvers<{ bytes: number; ms: number }>();
  let size = -1;
  let got = 0;
  let buf: Uint8Array | undefined;
  const t0 = performance.now();
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      size = Number(e.data);
      buf = new Uint8Array(size);
      return;
    }
    const part = new Uint8Array(e.data as ArrayBuffer);
    buf!.set(part, got);
    got += part.length;
    if (got >= size) done.resolve({ bytes: got, ms: performance.now() - t0 });
  };
  ws.send("go");
  const r = await done.promise;
  ws.close();
  return r;
}

if (import.meta.main) {
  const [mode, actorUrl, bareUrl, roundText, nText, chunkText] = Deno.args;
  const round = Number(roundText);
  const chunkBytes = Number(chunkText) || undefined;
  const system = new ActorSystem({ node: `joiner-${Deno.pid}` });
  const transport = new ActorTransport(system, {
    run: BENCH_RUN,
    secret: BENCH_SECRET,
    log: (level, message) => {
      if (level === "warn" || level === "error") console.error(`joiner transport: ${message}`);
    },
  });
  const client = transport.connect(actorUrl, { expectedPeer: "host" });
  await client.ready();
  const keeperFetch = async () => {
    const t0 = performance.now();
    const got = await fetchRound(system, ["host/keepers/0"], {
      run: BENCH_RUN,
      round,
      paramsOnly: true,
      ...(chunkBytes ? { chunkBytes } : {}),
      ...(Deno.env.get("BENCH_WINDOW") ? { window: Number(Deno.env.get("BENCH_WINDOW")) } : {}),
      timeoutMs: Number(Deno.env.get("BENCH_TIMEOUT_MS") ?? 60_000),
    });
    return { bytes: got.bytes, direct: got.direct, ms: performance.now() - t0 };
  };
  if (mode === "compare") {
    for (let i = 0; i < Number(nText); i++) {
      console.log(JSON.stringify({ kind: "bare", ...await bareTransfer(bareUrl) }));
      console.log(JSON.stringify({ kind: "keeper", ...await keeperFetch() }));
    }
  } else {
    const until = performance.now() + Number(nText) * 1000;
    let n = 0;
    console.log(JSON.stringify({ kind: "loop_started" }));
    while (performance.now() < until) {
      const got = mode === "bareloop" ? await bareTransfer(bareUrl) : await keeperFetch();
      console.log(JSON.stringify({ kind: "fetch", ...got }));
      n++;
    }
    console.log(JSON.stringify({ kind: "loop", fetches: n }));
  }
  await transport.close();
  await system.shutdown();
}
