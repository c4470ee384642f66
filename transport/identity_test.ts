import { equal, notEqual, ok, rejects } from "@std/assert";
import {
  derivedNodeId,
  fingerprintOf,
  generateIdentity,
  isDerivedNodeId,
  parseAllowList,
} from "./identity.ts";
import { loadIdentity } from "./identity_file.ts";

Deno.test("identity: a key file is created once with mode 0600 and loads to the same key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/sub/node.key`;
    const first = await loadIdentity(path);
    equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const again = await loadIdentity(path);
    equal(again.fingerprint, first.fingerprint);
    equal(first.fingerprint, await fingerprintOf(first.publicKey));
    notEqual((await generateIdentity()).fingerprint, first.fingerprint);
    await Deno.writeTextFile(`${dir}/bad.key`, "not a key");
    await rejects(() => loadIdentity(`${dir}/bad.key`), /Invalid key file .*bad\.key/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("identity: a derived node id ends with the key's fingerprint prefix", async () => {
  const me = await generateIdentity();
  const id = derivedNodeId("trainer", me.fingerprint);
  ok(isDerivedNodeId(id, me.fingerprint));
  ok(!isDerivedNodeId("trainer-123", me.fingerprint));
  ok(!isDerivedNodeId(id, (await generateIdentity()).fingerprint));
});

Deno.test("identity: an allow-list takes fingerprints and base64 keys and names a bad line", async () => {
  const me = await generateIdentity();
  const b64 = btoa(String.fromCharCode(...me.publicKey));
  const fp = "AB".repeat(32);
  const list = await parseAllowList(`# run keys\n${fp}\n\n${b64}   # lab box\n`);
  equal(list.size, 2);
  ok(list.has(fp.toLowerCase()));
  ok(list.has(me.fingerprint));
  await rejects(() => parseAllowList(`${fp}\nnot-a-key\n`, "keys.txt"), /keys\.txt line 2/);
});
