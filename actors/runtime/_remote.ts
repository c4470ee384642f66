/**
 * The contract between the actor system and a transport that carries actor
 * messages to other nodes.
 *
 * The actor system knows nothing about sockets: a transport hands it one
 * {@linkcode RemoteLink} per connected peer node with
 * `system.addRemote(nodeId, link)`, passes every frame that arrives from that
 * peer to `system.deliverRemote(frame)`, and calls
 * `system.removeRemote(nodeId, reason)` when the peer is gone, which fails
 * the asks still waiting on it with a `RemoteUnavailableError`.
 *
 * Frames are plain data (strings, numbers and the message payload), so any
 * codec can carry them; payloads must be values the codec can encode
 * (msgpack here: no functions, symbols or class instances with behavior).
 *
 * Routing rule: a frame goes to the node named by the part of `to` before the
 * first `/` (see {@linkcode nodeOf}).
 *
 * | kind    | to                  | from              | id       | payload                        |
 * | ------- | ------------------- | ----------------- | -------- | ------------------------------ |
 * | "tell"  | target `node/name`  | sending node id   | -        | the message                    |
 * | "ask"   | target `node/name`  | sending node id   | required | the message                    |
 * | "reply" | asking node id      | replying node id  | ask's id | the receiver's return value    |
 * | "error" | asking node id      | replying node id  | ask's id | {@linkcode RemoteErrorPayload} |
 *
 * Ask timeouts are kept by the asking side only; a reply that arrives after
 * its ask timed out is dropped.
 *
 * @module
 */

/** What a frame carries: a one-way message, a request, or the answer to a request. */
export type RemoteFrameKind = "tell" | "ask" | "reply" | "error";

/** One actor-level message between two nodes. */
export interface RemoteFrame {
  /** What the frame carries. */
  kind: RemoteFrameKind;
  /**
   * For "tell" and "ask": the target actor's path `node/name`. For "reply" and
   * "error": the asking node's id (a path with no name part is allowed too).
   */
  to: string;
  /**
   * The sending node's id. Required for "ask" (replies go back to it). A
   * transport that authenticates peers should overwrite it with the peer's
   * proven id before calling `deliverRemote`, so a peer cannot speak for
   * another node.
   */
  from?: string;
  /** Correlates an "ask" with its "reply" or "error"; a non-negative integer. */
  id?: number;
  /** The message, the reply value, or a {@linkcode RemoteErrorPayload}. */
  payload: unknown;
}

/** The payload of an "error" frame: why an ask failed on the remote node. */
export interface RemoteErrorPayload {
  /** The error's class name, e.g. "ActorStoppedError" or "TypeError". */
  name: string;
  /** The error's message. */
  message: string;
}

/**
 * The sending half of a connection to one peer node, provided by the
 * transport. `send` may be synchronous or return a promise; a throw or a
 * rejection means the frame was not sent, and an ask riding on it fails with
 * a `RemoteUnavailableError`.
 */
export interface RemoteLink {
  /** Sends one frame to the peer node. */
  send(frame: RemoteFrame): void | Promise<void>;
}

/** The part of an actor path before the first `/`: the node that hosts it. */
export function nodeOf(path: string): string {
  const slash = path.indexOf("/");
  return slash === -1 ? path : path.slice(0, slash);
}

const KINDS: ReadonlySet<string> = new Set(["tell", "ask", "reply", "error"]);

/**
 * Checks that a value is a well-formed {@linkcode RemoteFrame}, throwing a
 * TypeError that names the first thing wrong.
 */
export function assertRemoteFrame(frame: unknown): asserts frame is RemoteFrame {
  if (typeof frame !== "object" || frame === null) {
    throw new TypeError(`Invalid remote frame: expected an object, got ${describe(frame)}`);
  }
  const f = frame as Record<string, unknown>;
  if (typeof f.kind !== "string" || !KINDS.has(f.kind)) {
    throw new TypeError(
      `Invalid remote frame: kind must be "tell", "ask", "reply" or "error", got ${
        describe(f.kind)
      }`,
    );
  }
  if (typeof f.to !== "string" || f.to.length === 0) {
    throw new TypeError(`Invalid remote frame: "to" must be a non-empty string`);
  }
  if (f.from !== undefined && (typeof f.from !== "string" || f.from.length === 0)) {
    throw new TypeError(`Invalid remote frame: "from" must be a non-empty string when present`);
  }
  const needsId = f.kind !== "tell";
  if (needsId && (typeof f.id !== "number" || !Number.isSafeInteger(f.id) || f.id < 0)) {
    throw new TypeError(
      `Invalid remote frame: a "${f.kind}" frame needs a non-negative integer id, got ${
        describe(f.id)
      }`,
    );
  }
  if (f.kind === "ask" && f.from === undefined) {
    throw new TypeError(`Invalid remote frame: an "ask" frame needs "from"`);
  }
  if (f.kind === "tell" || f.kind === "ask") {
    const slash = f.to.indexOf("/");
    if (slash <= 0 || slash === f.to.length - 1) {
      throw new TypeError(
        `Invalid remote frame: "to" must be an actor path "node/name", got "${f.to}"`,
      );
    }
  }
  if (f.kind === "error") {
    const p = f.payload as Record<string, unknown> | null;
    if (
      typeof p !== "object" || p === null || typeof p.name !== "string" ||
      typeof p.message !== "string"
    ) {
      throw new TypeError(`Invalid remote frame: an "error" payload needs string name and message`);
    }
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "string") return `"${value.slice(0, 40)}"`;
  if (typeof value === "object") return Array.isArray(value) ? "an array" : "an object";
  return String(value);
}
