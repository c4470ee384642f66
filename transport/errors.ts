/**
 * Error types of the transport. Callers catch these by type: an ask that
 * failed because its connection dropped ({@linkcode ConnectionClosedError}) is
 * handled differently from one the remote side rejected
 * ({@linkcode RemoteError}).
 *
 * @module
 */

/** Machine-readable reason carried by error frames and {@linkcode FrameError}. */
export type ErrorCode =
  | "malformed"
  | "too_large"
  | "bad_version"
  | "unknown_kind"
  | "invalid"
  | "wrong_run"
  | "spoofed"
  | "impersonation"
  | "rate_limited"
  | "chunk_integrity"
  | "chunk_incomplete"
  | "no_handler"
  | "handler_failed"
  | "unreachable";

/**
 * A frame that failed validation. `code` says which rule it broke; the
 * message names the field and the value.
 *
 * @example Catch by type
 * ```ts
 * import { FrameError } from "./errors.ts";
 * import assert from "node:assert/strict";
 * const err = new FrameError("bad_version", "Unsupported envelope version: 9 (expected 1)");
 * assert.ok(err instanceof FrameError);
 * assert.equal(err.code, "bad_version");
 * ```
 */
export class FrameError extends Error {
  /** Which rule the frame broke. */
  readonly code: ErrorCode;
  /** Creates the error. */
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "FrameError";
    this.code = code;
  }
}

/**
 * The connection an ask (or send) travelled on closed before an answer came.
 *
 * @example
 * ```ts
 * import { ConnectionClosedError } from "./errors.ts";
 * import assert from "node:assert/strict";
 * const err = new ConnectionClosedError("Ask failed: connection to b closed (1006)");
 * assert.equal(err.name, "ConnectionClosedError");
 * ```
 */
export class ConnectionClosedError extends Error {
  /** Creates the error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConnectionClosedError";
  }
}

/**
 * The remote side answered an ask with an error frame.
 *
 * @example
 * ```ts
 * import { RemoteError } from "./errors.ts";
 * import assert from "node:assert/strict";
 * const err = new RemoteError("handler_failed", "Ask to b/echo failed: boom");
 * assert.equal(err.code, "handler_failed");
 * ```
 */
export class RemoteError extends Error {
  /** Code sent by the remote side. */
  readonly code: string;
  /** Creates the error. */
  constructor(code: string, message: string) {
    super(message);
    this.name = "RemoteError";
    this.code = code;
  }
}

/**
 * A peer failed (or refused) the run-secret handshake.
 *
 * @example
 * ```ts
 * import { AuthenticationError } from "./errors.ts";
 * import assert from "node:assert/strict";
 * assert.equal(new AuthenticationError("Authentication failed: bad MAC").name, "AuthenticationError");
 * ```
 */
export class AuthenticationError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "AuthenticationError";
  }
}
