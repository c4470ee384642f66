/**
 * The client of a keeper's direct path: a plain WebSocket stream of a
 * round's file from the keeper's low-priority serving thread
 * (checkpoint/_serve_worker.ts), which a fetch tries before chunk requests
 * over the actor protocol. Here: reading the endpoint from a manifest reply,
 * where to dial it, and taking a byte range from it.
 *
 * @module
 */
import type { ActorSystem } from "./runtime/system.ts";
import { nodeOf } from "./runtime/_remote.ts";
import { peerHostname } from "../transport/remote.ts";
import type { DirectEndpoint } from "./keeper_protocol.ts";

/** The direct endpoint a manifest reply names, or undefined when it names none or a bad one. */
export function directOf(x: unknown): DirectEndpoint | undefined {
  const d = x as Record<string, unknown> | undefined;
  if (typeof d !== "object" || d === null) return undefined;
  const { port, ticket, host } = d;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) return;
  if (typeof ticket !== "string" || ticket.length === 0 || ticket.length > 128) return;
  if (host !== undefined && (typeof host !== "string" || host.length === 0 || host.length > 256)) {
    return;
  }
  return { port, ticket, ...(host ? { host: host as string } : {}) };
}

/** Where to dial a keeper's direct endpoint, or undefined when it cannot be reached so. */
export function directUrl(
  system: ActorSystem,
  c: { keeper: string; direct?: DirectEndpoint },
): string | undefined {
  if (!c.direct) return undefined;
  const node = nodeOf(c.keeper);
  // A keeper in this process is served in memory, without any socket.
  if (node === system.node) return undefined;
  const host = c.direct.host ?? peerHostname(system, node);
  return host ? `ws://${host}:${c.direct.port}/` : undefined;
}

/**
 * Takes bytes `[offset, end)` of a round's file from a keeper's direct
 * endpoint into `buf`, feeding each part to `onPart` in order; resolves with
 * the bytes taken, also when the stream broke (`error` then says why).
 */
export async function directFetch(
  url: string,
  req: { ticket: string; round: number; file: string; offset: number; end: number },
  buf: Uint8Array,
  options: { timeoutMs: number; signal?: AbortSignal; onPart(part: Uint8Array): void },
): Promise<{ got: number; error?: string }> {
  let got = 0;
  let ws: WebSocket;
  try {
    ws = new WebSocket(url);
  } catch (err) {
    return { got, error: `cannot dial ${url}: ${err instanceof Error ? err.message : err}` };
  }
  ws.binaryType = "arraybuffer";
  const done = Promise.withResolvers<string | undefined>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const idle = () => {
    clearTimeout(timer);
    timer = setTimeout(
      () => done.resolve(`no data from ${url} for ${options.timeoutMs} ms`),
      options.timeoutMs,
    );
  };
  const onAbort = () => done.resolve("aborted");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const want = req.end - req.offset;
  let started = false;
  idle();
  ws.onopen = () => {
    idle();
    ws.send(JSON.stringify({
      ticket: req.ticket,
      round: req.round,
      file: req.file,
      offset: req.offset,
      length: want,
    }));
  };
  ws.onerror = () => done.resolve(`cannot reach ${url}`);
  ws.onclose = (ev) => done.resolve(`${url} closed the stream (${ev.code} ${ev.reason})`.trim());
  ws.onmessage = (ev) => {
    idle();
    if (typeof ev.data === "string") {
      let head: Record<string, unknown>;
      try {
        head = JSON.parse(ev.data);
      } catch {
        return done.resolve(`${url} sent a malformed header`);
      }
      if (typeof head.error === "string") return done.resolve(`${url}: ${head.error}`);
      if (
        started || head.offset !== req.offset || head.length !== want ||
        head.size !== buf.length
      ) {
        return done.resolve(`${url} sent an unexpected header ${ev.data.slice(0, 200)}`);
      }
      started = true;
      return;
    }
    const part = new Uint8Array(ev.data as ArrayBuffer);
    if (!started || got + part.length > want) {
      return done.resolve(`${url} sent bytes past the range asked for`);
    }
    buf.set(part, req.offset + got);
    options.onPart(part);
    got += part.length;
    if (got === want) done.resolve(undefined);
  };
  const error = await done.promise;
  clearTimeout(timer);
  options.signal?.removeEventListener("abort", onAbort);
  ws.onmessage =
    ws.onclose =
    ws.onerror =
    ws.onopen =
      null;
  try {
    ws.close();
  } catch { /* closed already */ }
  return error === undefined ? { got } : { got, error };
}
