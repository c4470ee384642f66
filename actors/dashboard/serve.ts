/**
 * The routes a host serves on its port besides the actor transport:
 * `GET /status` (the tracker's status and the live state as JSON), `GET /`
 * (the dashboard page), `GET /dashboard.js` (its script, bundled on first
 * use), `GET /events` (server-sent events: a snapshot, then every change) and
 * `GET /metrics` (Prometheus text format).
 *
 * @module
 */
import type { Hono } from "../../transport/_deps.ts";
import {
  type DashboardEvent,
  type HistoryHost,
  type HistoryOptions,
  RunHistory,
} from "./history.ts";
import { METRICS_CONTENT_TYPE, renderMetrics } from "./metrics.ts";
import { PAGE_HTML } from "./shell.ts";
import { dashboardScript } from "./bundle.ts";

/** Options of {@linkcode mountDashboard}. */
export interface DashboardOptions extends HistoryOptions {
  /** The transport's connected peers, shown by `GET /status`. */
  peers?: () => string[];
  /** How often the live state is pushed to open pages, ms (default 1000). */
  liveEveryMs?: number;
}

/** An open event stream of a page. */
interface Stream {
  send(type: string, data: unknown): void;
  end(): void;
}

/** A mounted dashboard: its history, and `close` to end open event streams. */
export interface Dashboard {
  history: RunHistory;
  /**
   * Ends every open event stream and stops recording. Call it before the
   * server's `shutdown()`, which waits for open responses to end.
   */
  close(): Promise<void>;
}

/**
 * Mounts the status, dashboard, event and metrics routes of `host` on `app`
 * and starts bundling the page script, so that the first page load is quick
 * and a bundling failure shows in the run's log at once.
 *
 * @example
 * ```ts ignore
 * const dashboard = mountDashboard(app, host, { peers: () => transport.peers, evalEvery: 1 });
 * // ... at the end, before http.shutdown():
 * await dashboard.close();
 * ```
 */
export function mountDashboard(
  app: Hono,
  host: HistoryHost,
  options: DashboardOptions = {},
): Dashboard {
  const history = new RunHistory(host, options);
  const streams = new Set<Stream>();
  const liveEveryMs = options.liveEveryMs ?? 1000;
  const script = dashboardScript().catch((err) => {
    host.monitor.log(err instanceof Error ? err.message : String(err), "warn");
  });
  // One live state for every open page per tick or change (it asks each trainer).
  const inflight = new Set<Promise<void>>();
  const pushLive = () => {
    if (streams.size === 0) return;
    const p = history.live().then((live) => {
      for (const s of streams) s.send("live", live);
    }).catch(() => {}).finally(() => inflight.delete(p));
    inflight.add(p);
  };
  let ticker: ReturnType<typeof setInterval> | undefined;
  let closed = false;
  const unlisten = history.listen((e: DashboardEvent) => {
    for (const s of streams) s.send(e.type, e.data);
    pushLive();
  });

  app.get("/status", async (c) => {
    const tracker = await history.trackerStatus();
    const live = await history.live(tracker);
    return c.json({
      ...tracker,
      members: live.members,
      rounds_done: live.rounds_done,
      peers: options.peers?.() ?? [],
      live,
      history: { rounds: history.rounds, evals: history.evals, commits: history.commits },
    });
  });
  app.get("/", async (c, next) => {
    // The actor transport may serve WebSocket upgrades on the same path.
    if (c.req.header("upgrade")?.toLowerCase() === "websocket") return await next();
    return c.html(PAGE_HTML);
  });
  app.get("/dashboard.js", async (c) => {
    try {
      const js = await dashboardScript();
      return c.body(js, 200, { "content-type": "text/javascript; charset=utf-8" });
    } catch (err) {
      return c.text(err instanceof Error ? err.message : String(err), 500);
    }
  });
  app.get("/metrics", async (c) => {
    const text = renderMetrics(await history.live());
    return c.body(text, 200, { "content-type": METRICS_CONTENT_TYPE });
  });
  app.get("/events", () => {
    const encoder = new TextEncoder();
    let stream: Stream | undefined;
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        let open = true;
        const send = (type: string, data: unknown) => {
          if (!open) return;
          controller.enqueue(encoder.encode(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`));
        };
        const end = () => {
          if (!open) return;
          open = false;
          streams.delete(stream!);
          if (streams.size === 0) {
            clearInterval(ticker);
            ticker = undefined;
          }
          try {
            controller.close();
          } catch {
            // The page went away: the stream is cancelled, and closed already.
          }
        };
        stream = { send, end };
        const snapshot = await history.snapshot();
        send("snapshot", snapshot);
        if (closed) end();
        if (!open) return;
        streams.add(stream);
        ticker ??= setInterval(pushLive, liveEveryMs);
      },
      cancel() {
        stream?.end();
      },
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
      },
    });
  });

  return {
    history,
    async close() {
      closed = true;
      unlisten();
      for (const s of [...streams]) s.end();
      clearInterval(ticker);
      await Promise.all(inflight);
      await history.close();
      await script;
    },
  };
}

/** A dashboard with a server of its own (the embedded run, which has no port otherwise). */
export interface ServedDashboard {
  /** The page's address, e.g. `http://127.0.0.1:8080/`. */
  url: string;
  /** What it records of the run. */
  history: RunHistory;
  /** Ends the open event streams, then the server. */
  close(): Promise<void>;
}

/**
 * Serves the dashboard, `/status`, `/events` and `/metrics` of `host` on
 * `addr` ("ADDR:PORT", port 0 for any free one) with a server of its own.
 *
 * @example
 * ```ts ignore
 * const dashboard = await serveDashboard(host, "127.0.0.1:8080", { evalEvery: 1 });
 * console.log(dashboard.url);
 * // ... at the end:
 * await dashboard.close();
 * ```
 */
export async function serveDashboard(
  host: HistoryHost,
  addr: string,
  options: DashboardOptions = {},
): Promise<ServedDashboard> {
  const { Hono } = await import("../../transport/_deps.ts");
  const app = new Hono();
  const dashboard = mountDashboard(app, host, options);
  const colon = addr.lastIndexOf(":");
  const listening = Promise.withResolvers<string>();
  const http = Deno.serve({
    hostname: addr.slice(0, colon),
    port: Number(addr.slice(colon + 1)),
    onListen: (a) => listening.resolve(`http://${a.hostname}:${a.port}/`),
  }, app.fetch);
  const url = await listening.promise;
  return {
    url,
    history: dashboard.history,
    async close() {
      await dashboard.close();
      await http.shutdown();
    },
  };
}
