/**
 * A keeper's serving thread: sends the bytes of the rounds it holds to
 * joiners over its own WebSocket listener, at the lowest CPU priority
 * (SCHED_IDLE, this thread only) and within a CPU budget while the machine
 * is busy (see _background.ts), so that serving a join neither runs on the
 * host's event loop nor takes the cores from trainers computing on the same
 * CPU. On an idle machine it sends as fast as the link takes.
 *
 * The keeper hands it each round it prepared (file bytes in
 * SharedArrayBuffers: no copy) and tells it which rounds to keep. The keeper
 * names the listener in its manifest replies over the authenticated actor
 * transport, with a random ticket that every request must carry. The joiner
 * still verifies every file against the manifest's sha256.
 *
 * Wire (one WebSocket, requests one at a time):
 * - joiner: text `{"ticket", "round", "file", "offset", "length"}`
 * - thread: text `{"size", "offset", "length"}` (the file's size and the
 *   range it sends), then that range as binary messages of at most
 *   {@linkcode DIRECT_FRAME_BYTES} in order; or text `{"error"}`.
 *
 * Protocol with the keeper (postMessage): `{ op: "start", hostname, port,
 * ticket, duty }` → `{ op: "listening", port }` or `{ op: "failed", error }`;
 * `{ op: "round", round, files }`; `{ op: "load", id, dir, round }` (read a
 * committed round from disk into shared memory and verify it against its
 * manifest, here rather than on the keeper's event loop) → `{ op: "loaded",
 * id, ok, manifest, files }` or `{ op: "loaded", id, ok: false, error }`;
 * `{ op: "keep", rounds }`; `{ op: "close" }` → `{ op: "closed" }`.
 *
 * @module
 */
import { CpuPacer, lowerThisThread } from "./_background.ts";
import { CheckpointStore } from "./store.ts";
import { sharedReadFs } from "./_sync_fs.ts";

/** Bytes per binary message of the direct path (as a bare WebSocket transfer would send). */
export const DIRECT_FRAME_BYTES = 1 << 20;
/** Largest range one direct request may ask for. */
export const MAX_DIRECT_REQUEST_BYTES = 1 << 30;

/** A request on the direct path, as sent by a joiner. */
export interface DirectRequest {
  ticket: string;
  round: number;
  file: string;
  offset: number;
  length: number;
}

/** Messages from the keeper. */
export type ServeControl =
  | { op: "start"; hostname: string; port: number; ticket: string; duty?: number }
  | { op: "round"; round: number; files: Record<string, Uint8Array> }
  | { op: "load"; id: number; dir: string; round: number }
  | { op: "keep"; rounds: number[] }
  | { op: "close" };

interface WorkerScope {
  onmessage: ((ev: MessageEvent<ServeControl>) => void) | null;
  postMessage(msg: unknown): void;
}

function sameTicket(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

function parseRequest(data: unknown): DirectRequest | string {
  if (typeof data !== "string" || data.length > 1024) return "request must be a short JSON text";
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(data);
  } catch {
    return "request is not JSON";
  }
  if (typeof r !== "object" || r === null) return "request is not an object";
  if (typeof r.ticket !== "string") return "ticket missing";
  if (typeof r.file !== "string") return "file missing";
  for (const k of ["round", "offset", "length"] as const) {
    const v = r[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      return `${k} must be a non-negative integer`;
    }
  }
  return r as unknown as DirectRequest;
}

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  lowerThisThread();
  let pacer = new CpuPacer();
  const scope = self as unknown as WorkerScope;
  const rounds = new Map<number, Map<string, Uint8Array>>();
  let server: Deno.HttpServer<Deno.NetAddr> | undefined;
  let ticket = "";
  const sockets = new Set<WebSocket>();
  // WebSocket.send refuses views of SharedArrayBuffers: each message is copied here first.
  const frame = new Uint8Array(DIRECT_FRAME_BYTES);

  const serveSocket = (socket: WebSocket) => {
    let busy = false;
    const fail = (error: string) => {
      try {
        socket.send(JSON.stringify({ error }));
        socket.close(1008, error.slice(0, 100));
      } catch { /* closed already */ }
    };
    socket.onmessage = async (ev) => {
      if (busy) return fail("one request at a time");
      const req = parseRequest(ev.data);
      if (typeof req === "string") return fail(`Invalid direct request: ${req}`);
      if (!sameTicket(req.ticket, ticket)) return fail("Invalid direct request: ticket rejected");
      const file = rounds.get(req.round)?.get(req.file);
      if (!file) return fail(`Keeper does not hold ${req.file} of round ${req.round}`);
      if (req.offset > file.length) {
        return fail(`Offset ${req.offset} is past the end of ${req.file} (${file.length} bytes)`);
      }
      const end = req.offset +
        Math.min(req.length, MAX_DIRECT_REQUEST_BYTES, file.length - req.offset);
      busy = true;
      try {
        socket.send(
          JSON.stringify({ size: file.length, offset: req.offset, length: end - req.offset }),
        );
        for (let o = req.offset; o < end; o += DIRECT_FRAME_BYTES) {
          while (socket.bufferedAmount > 4 * DIRECT_FRAME_BYTES) {
            if (socket.readyState !== WebSocket.OPEN) return;
            await new Promise((r) => setTimeout(r, 1));
          }
          if (socket.readyState !== WebSocket.OPEN) return;
          const n = Math.min(DIRECT_FRAME_BYTES, end - o);
          frame.set(file.subarray(o, o + n));
          socket.send(frame.subarray(0, n));
          await pacer.pace();
        }
      } catch {
        /* the joiner went away; it resumes elsewhere */
      } finally {
        busy = false;
      }
    };
    socket.onclose = () => sockets.delete(socket);
    sockets.add(socket);
  };

  scope.onmessage = async (ev: MessageEvent<ServeControl>) => {
    const m = ev.data;
    switch (m.op) {
      case "start":
        ticket = m.ticket;
        pacer = new CpuPacer({ duty: m.duty });
        try {
          const listening = Promise.withResolvers<number>();
          server = Deno.serve({
            hostname: m.hostname,
            port: m.port,
            onListen: (addr) => listening.resolve(addr.port),
          }, (req) => {
            if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
              return new Response("checkpoint keeper: WebSocket only", { status: 426 });
            }
            const { socket, response } = Deno.upgradeWebSocket(req);
            socket.binaryType = "arraybuffer";
            serveSocket(socket);
            return response;
          });
          scope.postMessage({ op: "listening", port: await listening.promise });
        } catch (err) {
          scope.postMessage({
            op: "failed",
            error: err instanceof Error ? err.message : String(err),
          });
        }
        return;
      case "round":
        rounds.set(m.round, new Map(Object.entries(m.files)));
        return;
      case "load":
        try {
          const p = await new CheckpointStore(m.dir, { fs: sharedReadFs }).readVerified(m.round);
          rounds.set(m.round, p.files);
          scope.postMessage({
            op: "loaded",
            id: m.id,
            ok: true,
            manifest: p.manifest,
            files: Object.fromEntries(p.files),
          });
        } catch (err) {
          scope.postMessage({
            op: "loaded",
            id: m.id,
            ok: false,
            error: err instanceof Error ? err.message : String(err),
          });
        }
        return;
      case "keep":
        for (const r of [...rounds.keys()]) if (!m.rounds.includes(r)) rounds.delete(r);
        return;
      case "close":
        for (const s of sockets) {
          try {
            s.close(1001, "keeper stopping");
          } catch { /* closed already */ }
        }
        await server?.shutdown();
        scope.postMessage({ op: "closed" });
        return;
    }
  };
}
