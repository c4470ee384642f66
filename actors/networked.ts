/**
 * A run across processes ({@linkcode runNetworked}): `--host ADDR:PORT`
 * serves the host side behind the WebSocket transport, `GET /status`, the
 * dashboard and `GET /join` (a browser tab joins as a trainer);
 * `--join URL` joins it as a trainer or, with `--role keeper`, as a
 * checkpoint keeper.
 *
 * @module
 */
import { ActorSystem } from "./runtime/system.ts";
import { Supervisor } from "./runtime/supervisor.ts";
import { HOST_TRACKER, joinedTrainer } from "./joined_trainer.ts";
import type { ReportCursor } from "./run_protocol.ts";
import { keeperBehavior } from "./keeper.ts";
import type { RunEvent } from "./monitor.ts";
import {
  exchangeConflict,
  resumeCursors,
  runModel,
  type RunSettings,
  runSettingsOf,
  shapeConflict,
} from "./run_settings.ts";
import {
  type CheckpointOptions,
  keeperLine,
  REMOTE_KEEPER_TTL_MS,
  runStateSource,
  sourceLine,
  writeTime,
} from "./run_checkpoint.ts";
import { startRunHost } from "./host.ts";
import { mountDashboard } from "./dashboard/serve.ts";
import { mountJoin } from "./browser/serve.ts";
import { loadCorpus } from "../kernels/corpus.ts";
import { finalCommit, finalEvaluation, summarize } from "./run_summary.ts";
import type { ResumedRun } from "../checkpoint/resume.ts";
import { checkDuty } from "../checkpoint/_background.ts";
import {
  derivedNodeId,
  generateIdentity,
  type NodeIdentity,
  parseAllowList,
} from "../transport/identity.ts";
import { loadIdentity } from "../transport/identity_file.ts";
import { runMessageClaims } from "./run_identity.ts";
import { JoinedRounds } from "./joined_rounds.ts";
import { textSample, type TextSampleSpec } from "../kernels/sample.ts";

/** Settings the host hands to joiners, so that every trainer runs the same engine. */
export interface RunInfo {
  type: "run_info";
  settings: RunSettings;
  /** The host's checkpoint keepers (joiners fetch their start state from them). */
  keepers?: string[];
  /** The round the run opened at, when it was fresh (served by the aggregators). */
  freshRound?: number;
  /** A resumed run: its opening round and the data cursors of that round. */
  resume?: { round: number; cursors: ReportCursor[] };
}

/** Who a node is and whom it trusts: its key, the host's allow-list, TLS files (all paths). */
export interface AdmissionOptions {
  /** This node's Ed25519 key file (created when missing; default `<runDir>/node.key`). */
  keyFile?: string;
  /** Host: a file of admitted keys, one fingerprint or base64 public key per line. */
  allow?: string;
  /** Host: serve `wss://` and `https://` with this PEM certificate chain (and `tlsKey`). */
  tlsCert?: string;
  /** Host: the PEM private key of `tlsCert`. */
  tlsKey?: string;
  /** Joining: a PEM certificate to trust for `wss://` (a self-signed host certificate). */
  ca?: string;
  /** Joining: the host's key fingerprint (or its first 16+ hex characters) to insist on. */
  hostKey?: string;
}

/** Options of {@linkcode runNetworked}. */
export interface NetworkedOptions extends RunSettings, AdmissionOptions {
  /** `ADDR:PORT` to host on. */
  host?: string;
  /** `ws://ADDR:PORT` to join. */
  join?: string;
  /** The run secret (the join token of an open run; optional with `allow`). */
  secret?: string;
  /** Trainers in the host process. */
  trainers: number;
  /** Host: open the first round once this many trainers joined. */
  minTrainers?: number;
  /** This node's id when joining (default `trainer-<pid>`). */
  node?: string;
  /** Heartbeat interval and eviction silence, ms. */
  heartbeatMs?: number;
  evictAfterMs?: number;
  /** Host: checkpoint keepers. */
  checkpoint?: CheckpointOptions;
  /** Host: open at a resumed round. */
  resume?: ResumedRun;
  /** Joining: "trainer" (default) or "keeper" (a checkpoint keeper of the run). */
  role?: "trainer" | "keeper";
  /** Joining as a keeper: the run directory it writes (default runs/<run>/<node>). */
  runDir?: string;
  /** Joining as a keeper: its CPU budget while trainers keep the cores busy (`KeeperOptions.backgroundDuty`). */
  backgroundDuty?: number;
  /**
   * Host: take a text sample of θ at each dashboard evaluation and at the
   * final one (the fields given over kernels/sample.ts `DEFAULT_TEXT_SAMPLE`).
   * Default: none.
   */
  sample?: Partial<TextSampleSpec>;
  /**
   * Host: the dashboard evaluates θ after at most every this many rounds,
   * paced to 2% of the trainers' inner time (default 1; 0: only the final
   * evaluation).
   */
  evalEvery?: number;
}

/**
 * Hosts a run on `--host ADDR:PORT` (tracker, aggregators, monitor, local
 * trainers; GET /status on the same port) or joins one as a trainer. Returns
 * the process exit code.
 *
 * @example Host a one-round run on a free port with one local trainer
 * ```ts
 * import { runNetworked } from "./networked.ts";
 * import assert from "node:assert/strict";
 * const code = await runNetworked({
 *   run: "demo",
 *   config: "tiny",
 *   rounds: 1,
 *   innerSteps: 2,
 *   outer: { lr: 0.7, momentum: 0.9 },
 *   host: "127.0.0.1:0",
 *   secret: "s3cret",
 *   trainers: 1,
 * }, (e) => {
 *   if (e.event === "log") console.log(e.message); // ... hosting run "demo" on ws://127.0.0.1:...
 * });
 * assert.equal(code, 0);
 * ```
 */
export async function runNetworked(
  options: NetworkedOptions,
  emit: (e: RunEvent) => void,
): Promise<number> {
  if (options.backgroundDuty !== undefined) {
    // Before dialing anyone: a joined keeper that threw when it starts would only be restarted.
    checkDuty(options.backgroundDuty, "Invalid options: backgroundDuty");
  }
  return options.host ? await hostRun(options, emit) : await joinRun(options, emit);
}

async function hostRun(options: NetworkedOptions, emit: (e: RunEvent) => void): Promise<number> {
  const { Hono } = await import("../transport/_deps.ts");
  const { ActorTransport } = await import("../transport/remote.ts");
  const [hostname, portText] = options.host!.split(":");
  const sample = options.sample ? textSample(options.sample) : undefined;
  const system = new ActorSystem({ node: "host" });
  const settings = runSettingsOf(options);
  let info: RunInfo = { type: "run_info", settings };
  await system.spawn({ receive: () => info }, { name: "run_info" });
  const host = await startRunHost({
    ...settings,
    localTrainers: options.trainers,
    minTrainers: options.minTrainers ?? Math.max(1, options.trainers),
    heartbeatMs: options.heartbeatMs,
    evictAfterMs: options.evictAfterMs,
    ...(options.checkpoint ? { checkpoint: { serve: { hostname }, ...options.checkpoint } } : {}),
    ...(options.resume ? { resume: options.resume } : {}),
    emit,
  }, system);
  info = {
    type: "run_info",
    settings,
    keepers: host.keeperPaths,
    ...(options.resume
      ? { resume: { round: host.startRound, cursors: resumeCursors(options.resume) } }
      : { freshRound: host.startRound }),
  };
  const admission = await hostAdmission(options);
  const transport = new ActorTransport(system, {
    run: options.run,
    ...(options.secret !== undefined ? { secret: options.secret } : {}),
    identity: admission.identity,
    ...(admission.allow ? { allow: admission.allow } : {}),
    claims: runMessageClaims,
    log: (level, message) => {
      if (level === "warn" || level === "error") host.monitor.log(`transport: ${message}`, "warn");
    },
  });
  host.monitor.log(
    `host key ${admission.identity.fingerprint}; admits ${
      admission.allow ? `the ${admission.allow.size} keys of ${options.allow}` : "any key"
    }${options.secret !== undefined ? " with the run secret" : ""}`,
  );
  const app = new Hono();
  const dashboard = mountDashboard(app, host, {
    peers: () => transport.peers,
    evalEvery: options.evalEvery ?? 1,
    sample,
    memberKey: (node) =>
      node === system.node ? admission.identity.fingerprint : transport.peerFingerprint(node),
  });
  mountJoin(app, {
    run: options.run,
    corpus: () => loadCorpus(settings.dataPath ? { path: settings.dataPath } : {}),
    warn: (message) => host.monitor.log(`join page: ${message}`, "warn"),
  });
  transport.mount(app, "/");
  const listening = Promise.withResolvers<void>();
  const tls = admission.tls;
  const http = Deno.serve({
    hostname,
    port: Number(portText),
    ...(tls ? { cert: tls.cert, key: tls.key } : {}),
    onListen: (addr) => {
      const scheme = tls ? "wss" : "ws";
      host.monitor.log(`hosting run "${options.run}" on ${scheme}://${addr.hostname}:${addr.port}`);
      listening.resolve();
    },
  }, app.fetch);
  await listening.promise;
  let code = 0;
  try {
    await host.monitor.done;
    // The final evaluation runs on any trainer of the last view (they hold the same θ).
    const trainers = host.monitor.view?.trainers ?? host.trainerPaths;
    const final = await finalEvaluation(host, [...host.trainerPaths, ...trainers], {
      maxWindows: 64,
      timeoutMs: 300_000,
      sample,
      history: dashboard.history,
    });
    await finalCommit(host, options.rounds);
    const summary = summarize(host.monitor, {
      run: options.run,
      trainers: trainers.length,
      evalLoss: final.loss,
      sample: final.sample,
      exchange: options.exchange,
      updateExchange: options.updateExchange,
    });
    emit({ event: "done", ...summary });
  } catch (err) {
    host.monitor.log(`run failed: ${err}`, "warn");
    code = 1;
  } finally {
    await dashboard.close();
    await transport.close();
    await http.shutdown();
    await host.shutdown();
  }
  return code;
}

async function joinRun(options: NetworkedOptions, emit: (e: RunEvent) => void): Promise<number> {
  const { ActorTransport } = await import("../transport/remote.ts");
  const identity = await joinerIdentity(options);
  const node = options.node ?? derivedNodeId(options.role ?? "trainer", identity.fingerprint);
  const system = new ActorSystem({ node });
  const start = performance.now();
  const log = (message: string, level: "info" | "warn" = "info") =>
    emit({ event: "log", level, message, wall_s: Math.round(performance.now() - start) / 1000 });
  log(`node ${node}, key ${identity.fingerprint}`);
  const transport = new ActorTransport(system, {
    run: options.run,
    ...(options.secret !== undefined ? { secret: options.secret } : {}),
    identity,
    ...(options.ca ? { caCerts: [await Deno.readTextFile(options.ca)] } : {}),
    claims: runMessageClaims,
    log: (level, message) => {
      if (level === "warn" || level === "error") log(`transport: ${message}`, "warn");
    },
  });
  const client = transport.connect(options.join!, {
    expectedPeer: "host",
    maxAttempts: 20,
    ...(options.hostKey ? { expectedKey: options.hostKey } : {}),
  });
  try {
    await client.ready();
    log(`host key ${transport.peerFingerprint("host") || "(none: the secret only)"}`);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    const hint = /TLS certificate not trusted/.test(why)
      ? "; give the host's certificate with --ca FILE"
      : "";
    log(`Cannot join run at ${options.join}: ${why}${hint}`, "warn");
    await transport.close();
    await system.shutdown();
    return 1;
  }
  const info = await system.ref("host/run_info").ask<RunInfo>({ type: "run_info" });
  const settings: RunSettings = {
    ...info.settings,
    // The corpus path and the precision are each machine's own.
    ...(options.dataPath ? { dataPath: options.dataPath } : {}),
    ...(options.precision ? { precision: options.precision } : {}),
    ...(options.matmulTuning ? { matmulTuning: options.matmulTuning } : {}),
  };
  // Every trainer trains the host's shape, sends its exchange format and takes its
  // aggregators' updates: a joiner's own flags must agree with them.
  const conflict = shapeConflict(options.model, runModel(settings)) ??
    exchangeConflict(options.exchange, settings.exchange) ??
    exchangeConflict(options.updateExchange, settings.updateExchange, "--update-exchange");
  if (conflict) {
    log(`Cannot join run at ${options.join}: ${conflict}`, "warn");
    await transport.close();
    await system.shutdown();
    return 2;
  }
  if (options.role === "keeper") {
    return await keepOnJoin({ system, transport, client, info, node, options, log });
  }
  log(`joined run "${settings.run}" as ${node}/node/trainer`);
  const stateSource = info.keepers?.length
    ? runStateSource({
      keepers: info.keepers,
      freshRound: info.freshRound,
      onEvent: (e) => log(sourceLine(e)),
    })
    : undefined;
  const path = `${node}/node/trainer`;
  const finished = Promise.withResolvers<void>();
  /** Joined too late: no round to train, and nothing the host could still ask of it. */
  const over = Promise.withResolvers<void>();
  const rounds = new JoinedRounds(settings, () => (performance.now() - start) / 1000);
  const sup = joinedTrainer(settings, info.resume, path, {
    heartbeatMs: options.heartbeatMs,
    ...(stateSource ? { stateSource } : {}),
    onEvent: (e) => {
      if (e.type === "report") {
        emit(rounds.record(e));
        if (settings.rounds > 0 && rounds.lastRound + 1 >= settings.rounds) finished.resolve();
      } else if (e.type === "rejected") {
        log(`rejected: ${e.reason}: ${e.detail}`, "warn");
      } else if (e.type === "run_over") {
        log(`the run is over: all ${e.rounds} rounds closed before this node held θ`);
        over.resolve();
      } else if (e.type === "news") {
        // The host's evaluation, shown as the host's terminal shows it.
        emit({ event: "eval", ...e.news, wall_s: Math.round(performance.now() - start) / 1000 });
      } else if (e.type === "log") log(e.message);
    },
  }, (restarts) => log(`trainer restarted (restart ${restarts})`, "warn"));
  await system.spawn(sup, { name: "node", shutdownMs: Infinity });
  const stop = () => finished.resolve();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  // Done when the last round is applied and the host let go (it may still
  // ask this trainer for the final evaluation), or when the host went away.
  const hostGone = async () => {
    const deadline = Date.now() + 120_000;
    while (transport.peers.includes("host") && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  await Promise.race([finished.promise.then(hostGone), over.promise, client.closed]);
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
  try {
    system.ref(HOST_TRACKER).tell({ type: "leave", run: settings.run, node: path });
  } catch {
    // The host is gone: nothing to tell.
  }
  log(
    rounds.lastRound >= 0 ? `leaving after round ${rounds.lastRound}` : "leaving: no round trained",
  );
  await transport.close();
  await system.shutdown();
  emit({ event: "done", ...rounds.summary(path) });
  return 0;
}

/** A joined node that runs a checkpoint keeper of the host's run (`--join URL --role keeper`). */
async function keepOnJoin(o: {
  system: ActorSystem;
  transport: { close(): Promise<void>; peers: string[] };
  client: { closed: Promise<unknown> };
  info: RunInfo;
  node: string;
  options: NetworkedOptions;
  log: (message: string, level?: "info" | "warn") => void;
}): Promise<number> {
  const { system, info, node, log } = o;
  const settings = info.settings;
  const path = `${node}/node/keeper`;
  const dir = o.options.runDir ?? `runs/${settings.run}/${node}`;
  let hostKeepers = [...(info.keepers ?? [])];
  const sup = new Supervisor({
    intensity: 10,
    periodMs: 60_000,
    children: [{
      id: "keeper",
      shutdownMs: 10_000,
      start: () =>
        keeperBehavior({
          run: settings.run,
          id: path,
          dir,
          config: runModel(settings),
          settings: JSON.parse(JSON.stringify(settings)),
          coordinator: "host/run/keepers/commit",
          peers: () => hostKeepers,
          writer: "worker",
          backgroundDuty: o.options.backgroundDuty,
          onEvent: (e) => {
            const line = keeperLine(e);
            if (line) log(line.text, line.warn ? "warn" : "info");
            else if (e.type === "written") {
              log(`keeper wrote round ${e.round} (${e.params_hash}) ${writeTime(e)}`);
            }
          },
        }),
    }],
    onEvent: (e) => {
      if (e.type === "restarted") log(`keeper restarted (restart ${e.restarts})`, "warn");
    },
  });
  await system.spawn(sup, { name: "node", shutdownMs: Infinity });
  log(`joined run "${settings.run}" as ${path}, writing ${dir}`);
  const hello = async () => {
    try {
      const r = await system.ref("host/run/keepers/registry").ask<{ keepers?: string[] }>(
        { type: "keeper_hello", run: settings.run, keeper: path },
        { timeoutMs: 3000 },
      );
      if (Array.isArray(r?.keepers)) hostKeepers = r.keepers.filter((k) => k !== path);
    } catch (err) {
      log(`keeper registry did not answer: ${err instanceof Error ? err.message : err}`, "warn");
    }
  };
  await hello();
  const timer = setInterval(hello, REMOTE_KEEPER_TTL_MS / 4);
  const stopped = Promise.withResolvers<void>();
  const stop = () => stopped.resolve();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  await Promise.race([stopped.promise, o.client.closed]);
  clearInterval(timer);
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
  log("keeper leaving");
  await o.transport.close();
  await system.shutdown();
  return 0;
}

/** How a host admits peers: its own key, the allow-list, and its TLS files. */
async function hostAdmission(options: NetworkedOptions): Promise<{
  identity: NodeIdentity;
  allow?: Set<string>;
  tls?: { cert: string; key: string };
}> {
  const identity = await loadIdentity(
    options.keyFile ?? `${options.runDir ?? `runs/${options.run}`}/node.key`,
  );
  const allow = options.allow
    ? await parseAllowList(await Deno.readTextFile(options.allow), options.allow)
    : undefined;
  const tls = options.tlsCert && options.tlsKey
    ? {
      cert: await Deno.readTextFile(options.tlsCert),
      key: await Deno.readTextFile(options.tlsKey),
    }
    : undefined;
  return { identity, ...(allow ? { allow } : {}), ...(tls ? { tls } : {}) };
}

/**
 * A joiner's key: `--key FILE`, else `<run dir>/node.key`, else a fresh one
 * for this process only (a new node id on every start, like a process id).
 */
async function joinerIdentity(options: NetworkedOptions): Promise<NodeIdentity> {
  if (options.keyFile) return await loadIdentity(options.keyFile);
  if (options.runDir) return await loadIdentity(`${options.runDir}/node.key`);
  return await generateIdentity();
}
