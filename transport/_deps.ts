/**
 * The npm packages the library itself imports, by full `npm:` specifier, so
 * that it loads from another Deno project (one that imports this repo's
 * mod.ts by URL): that project's import map, not this one's, resolves bare
 * names. deno.json maps the bare names to the same versions for tests,
 * examples and benches; transport/_deps_test.ts keeps the two in step.
 *
 * @module
 */
export { Packr } from "npm:msgpackr@2.1.4";
export { Hono, type MiddlewareHandler } from "npm:hono@4.13.19";
export { upgradeWebSocket } from "npm:hono@4.13.19/deno";
