/**
 * Opening a client WebSocket (Deno): `wss://` may trust extra CA certificates
 * through Deno's non-standard `client` option. A browser bundle puts
 * transport/_socket_browser.ts in place of this module (see
 * actors/browser/bundle.ts): a browser trusts its own roots only.
 *
 * @module
 */

/** Opens the sockets of one client, and releases what they share when it closes. */
export interface SocketOpener {
  /** A new WebSocket to `url`. */
  open(url: string): WebSocket;
  /** Releases the HTTP client the sockets used (idempotent). */
  release(): void;
}

/**
 * A {@linkcode SocketOpener} that trusts `caCerts` (PEM) besides the system's roots.
 *
 * @example
 * ```ts
 * import { socketOpener } from "./_socket.ts";
 * const opener = socketOpener();
 * opener.release();
 * ```
 */
export function socketOpener(caCerts?: string[]): SocketOpener {
  let http = caCerts?.length ? Deno.createHttpClient({ caCerts }) : undefined;
  return {
    open: (url) => new WebSocket(url, http ? { client: http } : undefined),
    release: () => {
      http?.close();
      http = undefined;
    },
  };
}
