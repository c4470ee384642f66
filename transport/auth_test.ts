import { ok, rejects } from "@std/assert";
import { importSecret, prove, randomNonce, verifyProof } from "./auth.ts";

Deno.test("auth: a proof verifies only for the same secret, nonce, peer, run and role", async () => {
  const key = await importSecret("run-secret");
  const other = await importSecret("wrong-secret");
  const input = { role: "client" as const, nonce: randomNonce(), peerId: "a", run: "r1" };
  const mac = await prove(key, input);
  ok(await verifyProof(key, mac, input));
  ok(!(await verifyProof(other, mac, input)));
  ok(!(await verifyProof(key, mac, { ...input, nonce: randomNonce() })));
  ok(!(await verifyProof(key, mac, { ...input, peerId: "b" })));
  ok(!(await verifyProof(key, mac, { ...input, run: "r2" })));
  ok(!(await verifyProof(key, mac, { ...input, role: "server" })));
  ok(!(await verifyProof(key, mac.subarray(0, 16), input)));
});

Deno.test("auth: an empty secret is refused", async () => {
  await rejects(() => importSecret(""), RangeError);
});
