/**
 * An existing hono service that embeds an actor system and mounts the
 * transport on its own route.
 *
 * The service keeps its own routes (`GET /health`, `GET /items`,
 * `POST /items`) and adds `/actors`, where other nodes of the run connect
 * with the run secret. Its `inventory` actor owns the items; the HTTP routes
 * ask it like any other caller, and so can remote nodes.
 *
 * Run it: `deno run -A examples/hono_service.ts` (env `PORT`, `RUN_SECRET`).
 *
 * @module
 */
import { Hono } from "hono";
import { ActorSystem } from "../actors/runtime/system.ts";
import { ActorTransport } from "../transport/remote.ts";

/** An item of the service. */
export interface Item {
  /** Item id. */
  id: number;
  /** Item name. */
  name: string;
}

/** Messages the inventory actor understands. */
export type InventoryMsg = { op: "list" } | { op: "add"; name: string };

/** Options of {@linkcode createService}. */
export interface ServiceOptions {
  /** Node id of this service in the run. Default "shop". */
  nodeId?: string;
  /** Run id. Default "demo-run". */
  run?: string;
  /** The run secret peers must prove. */
  secret: string;
}

/** A created service: its app, actor system and transport. */
export interface Service {
  /** The hono app with the service's routes and `/actors`. */
  app: Hono;
  /** The embedded actor system. */
  system: ActorSystem;
  /** The transport mounted on `/actors`. */
  transport: ActorTransport;
  /** Closes peer connections, then the actor system. */
  close(): Promise<void>;
}

/**
 * Builds the service: hono app, actor system with its `inventory` actor, and
 * the transport mounted at `/actors`.
 *
 * @example
 * ```ts
 * import { createService } from "./hono_service.ts";
 * import assert from "node:assert/strict";
 * const service = await createService({ secret: "s" });
 * const res = await service.app.request("/health");
 * assert.equal(res.status, 200);
 * await service.close();
 * ```
 */
export async function createService(options: ServiceOptions): Promise<Service> {
  const system = new ActorSystem({ node: options.nodeId ?? "shop" });
  const items: Item[] = [{ id: 1, name: "GPU hours" }, { id: 2, name: "tokens" }];
  // Bad requests are answered with an error value: a throw would stop this unsupervised actor.
  const inventory = await system.spawn({
    receive: (msg: InventoryMsg): Item[] | Item | { error: string } => {
      if (msg?.op === "list") return items;
      if (msg?.op === "add") {
        if (typeof msg.name !== "string" || msg.name.length === 0) {
          return { error: "Cannot add item: name must be a non-empty string" };
        }
        const item = { id: items.length + 1, name: msg.name };
        items.push(item);
        return item;
      }
      return { error: `Unknown inventory op: ${(msg as { op?: unknown })?.op}` };
    },
  }, { name: "inventory" });

  const app = new Hono();
  app.get("/health", (c) => c.json({ ok: true, node: system.node, peers: transport.peers }));
  app.get("/items", async (c) => c.json(await inventory.ask<Item[]>({ op: "list" })));
  app.post("/items", async (c) => {
    const body = await c.req.json().catch(() => ({}));
    const result = await inventory.ask<Item | { error: string }>({ op: "add", name: body.name });
    return "error" in result ? c.json(result, 400) : c.json(result, 201);
  });
  const transport = new ActorTransport(system, {
    run: options.run ?? "demo-run",
    secret: options.secret,
  });
  transport.mount(app, "/actors");

  return {
    app,
    system,
    transport,
    async close() {
      await transport.close();
      await system.shutdown();
    },
  };
}

if (import.meta.main) {
  const secret = Deno.env.get("RUN_SECRET") ?? "change-me";
  const service = await createService({ secret });
  const server = Deno.serve({ port: Number(Deno.env.get("PORT") ?? 8000) }, service.app.fetch);
  console.log(
    `Service on http://localhost:${server.addr.port} (GET /health, GET /items, WS /actors)`,
  );
  Deno.addSignalListener("SIGINT", async () => {
    await service.close();
    await server.shutdown();
    Deno.exit(0);
  });
}
