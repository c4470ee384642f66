import { deepEqual, equal } from "@std/assert";

Deno.test("library npm specifiers pin the versions deno.json maps the bare names to", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const source = await Deno.readTextFile(new URL("./_deps_codec.ts", import.meta.url)) +
    await Deno.readTextFile(new URL("./_deps.ts", import.meta.url));
  const specs = [...source.matchAll(/from "npm:((?:@[^/@"]+\/)?[^/@"]+)@([^/"]+)(\/[^"]*)?"/g)];
  deepEqual(specs.map((m) => m[1]), ["msgpackr", "hono", "hono"]);
  for (const [spec, name, version] of specs) {
    equal(config.imports[name], `npm:${name}@${version}`, spec);
  }
});
