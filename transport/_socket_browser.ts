/**
 * transport/_socket.ts in a browser: the browser's own WebSocket, which
 * trusts the browser's roots only.
 *
 * @module
 */
import type { SocketOpener } from "./_socket.ts";

/**
 * A {@linkcode SocketOpener} on the browser's WebSocket.
 *
 * @example
 * ```ts
 * import { socketOpener } from "./_socket_browser.ts";
 * socketOpener().release();
 * ```
 *
 * @throws {RangeError} when given certificates to trust: a page cannot add roots
 */
export function socketOpener(caCerts?: string[]): SocketOpener {
  if (caCerts?.length) {
    throw new RangeError(
      "Cannot trust extra certificates in a browser: install the host's certificate in the browser",
    );
  }
  return { open: (url) => new WebSocket(url), release: () => {} };
}
