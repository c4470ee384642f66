/**
 * A browser tab joins a run as a trainer ({@linkcode joinFromTab}): the same
 * handshake as `deno task node --join` (an Ed25519 key, and the run's token
 * when it has one), the same trainer actor (actors/trainer.ts) under the same
 * supervisor, its compute Worker the bundled actors/trainer_worker.ts on the
 * browser's `navigator.gpu`, and its data the corpus its host serves. What
 * the trainer reports (its round, loss, contribution and θ hash) comes back
 * through `onEvent`; the host evicts the tab when its heartbeats stop, as it
 * does any trainer.
 *
 * Browser-bound: this module and what it imports are bundled by
 * actors/browser/bundle.ts and may use no Deno API.
 *
 * @module
 */
import { ActorSystem } from "../runtime/system.ts";
import { ActorDialer } from "../../transport/dialer.ts";
import { derivedNodeId, type NodeIdentity } from "../../transport/identity.ts";
import type { TrainerEvent } from "../trainer.ts";
import { engineSettings, type RunSettings } from "../run_settings.ts";
import { runMessageClaims } from "../run_identity.ts";
import { HOST_TRACKER, joinedTrainer } from "../joined_trainer.ts";
import type { RunInfo } from "../networked.ts";

/** Where a tab's host serves what a browser trainer loads (see actors/browser/serve.ts). */
export const JOIN_PATHS = {
  page: "/join",
  script: "/join/page.js",
  worker: "/join/worker.js",
  corpus: "/join/corpus",
} as const;

/** Options of {@linkcode joinFromTab}. */
export interface TabJoinOptions {
  /** The host's transport, `ws://HOST:PORT/` (the page's own origin). */
  url: string;
  /** The run's id (the host writes it into the page): the handshake signs it. */
  run: string;
  /** The run's join token, when the run has one. */
  secret?: string;
  /** This tab's key (kept by the page, so that an allow-list can name it). */
  identity: NodeIdentity;
  /** The bundled compute Worker's URL, from the host's origin (default {@linkcode JOIN_PATHS}.worker). */
  workerUrl?: string;
  /** Where the host serves its corpus, from its origin (default {@linkcode JOIN_PATHS}.corpus). */
  corpusUrl?: string;
  /** The trainer's reports and log lines, and the tab's own log lines. */
  onEvent(event: TrainerEvent): void;
}

/** A tab that joined: its node, the run's settings, and how to leave. */
export interface TabTrainer {
  /** This tab's node id (`trainer-<first 16 hex of its key's fingerprint>`). */
  node: string;
  /** The trainer's actor path, as the host's round lines name it. */
  path: string;
  /** The run's settings, as the host handed them. */
  settings: RunSettings;
  /** Resolves when the host connection is closed for good. */
  closed: Promise<unknown>;
  /** Tells the tracker the tab leaves, then closes the connection and the trainer. */
  leave(): Promise<void>;
}

/**
 * Connects to the host, asks for the run's settings and starts the trainer.
 *
 * @example
 * ```ts ignore
 * import { joinFromTab } from "./join.ts";
 * import { generateIdentity } from "../../transport/identity.ts";
 * const tab = await joinFromTab({
 *   url: `ws://${location.host}/`,
 *   secret: "s3cret",
 *   identity: await generateIdentity(),
 *   onEvent: (e) => console.log(e),
 * });
 * ```
 *
 * @throws {Error} when the host cannot be reached or refuses the handshake
 */
export async function joinFromTab(options: TabJoinOptions): Promise<TabTrainer> {
  const node = derivedNodeId("trainer", options.identity.fingerprint);
  const system = new ActorSystem({ node });
  const log = (message: string) => options.onEvent({ type: "log", trainer: node, message });
  const transport = new ActorDialer(system, {
    run: options.run,
    ...(options.secret ? { secret: options.secret } : {}),
    identity: options.identity,
    claims: runMessageClaims,
    log: (level, message) => {
      if (level === "warn" || level === "error") log(`transport: ${message}`);
    },
  });
  const client = transport.connect(options.url, { expectedPeer: "host", maxAttempts: 5 });
  try {
    await client.ready();
  } catch (err) {
    await transport.close();
    await system.shutdown();
    throw new Error(
      `Cannot join run at ${options.url}: ${err instanceof Error ? err.message : err}`,
    );
  }
  const info = await system.ref("host/run_info").ask<RunInfo>({ type: "run_info" });
  // The precision is each machine's own, as for `--join`: the tab's adapter picks its default.
  const { precision: _hostPrecision, ...settings } = info.settings;
  const path = `${node}/node/trainer`;
  // The page, its Worker and the corpus come from the host's HTTP side of the same port.
  const origin = options.url.replace(/^ws/, "http");
  const sup = joinedTrainer(settings, info.resume, path, {
    engine: {
      ...engineSettings(settings),
      dataPath: new URL(options.corpusUrl ?? JOIN_PATHS.corpus, origin).href,
    },
    // A tab takes its start state from the aggregators (the default source): fetching it
    // from the keepers checks it with checkpoint/ code that reads files.
    workerUrl: new URL(options.workerUrl ?? JOIN_PATHS.worker, origin).href,
    onEvent: options.onEvent,
  }, (restarts) => log(`trainer restarted (restart ${restarts})`));
  await system.spawn(sup, { name: "node", shutdownMs: 10_000 });
  log(`joined run "${settings.run}" as ${path}`);
  return {
    node,
    path,
    settings,
    closed: client.closed,
    async leave() {
      try {
        system.ref(HOST_TRACKER).tell({
          type: "leave",
          run: settings.run,
          node: path,
        });
      } catch {
        // The host is gone: nothing to tell.
      }
      await transport.close();
      await system.shutdown();
    },
  };
}
