/**
 * The npm packages the library itself imports, by full `npm:` specifier, so
 * that it loads from another Deno project (one that imports this repo's
 * mod.ts by URL): that project's import map, not this one's, resolves bare
 * names. deno.json maps the bare names to the same versions for tests,
 * examples and benches; transport/_deps_test.ts keeps the two in step.
 * The codec's msgpackr is in transport/_deps_codec.ts, apart from hono's
 * server adapter for Deno, so that a browser bundle of the codec does not
 * carry the server.
 *
 * @module
 */
export { Hono, type MiddlewareHandler } from "npm:hono@4.13.19";
export { upgradeWebSocket } from "npm:hono@4.13.19/deno";
