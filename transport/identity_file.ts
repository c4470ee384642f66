/**
 * A node's key file (Deno): loaded, or created with mode 0600 when missing.
 *
 * @module
 */
import { freshKeyPem, identityFromPem, type NodeIdentity } from "./identity.ts";

/**
 * Loads the Ed25519 key at `path`, creating it (mode 0600, parent folders
 * included) when it does not exist yet. Throws a `TypeError` naming the file
 * when it holds no Ed25519 PKCS#8 key.
 *
 * @example
 * ```ts
 * import { loadIdentity } from "./identity_file.ts";
 * import assert from "node:assert/strict";
 * const dir = await Deno.makeTempDir();
 * const first = await loadIdentity(`${dir}/node.key`);
 * const again = await loadIdentity(`${dir}/node.key`);
 * assert.equal(again.fingerprint, first.fingerprint);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function loadIdentity(path: string): Promise<NodeIdentity> {
  let text: string | undefined;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  if (text === undefined) {
    const pem = await freshKeyPem();
    const slash = path.lastIndexOf("/");
    if (slash > 0) await Deno.mkdir(path.slice(0, slash), { recursive: true });
    // createNew: two processes starting at once must not overwrite each other's key.
    await Deno.writeTextFile(path, pem, { mode: 0o600, createNew: true }).catch(
      (err) => {
        if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
      },
    );
    text = await Deno.readTextFile(path);
  }
  return await identityFromPem(text, path);
}
