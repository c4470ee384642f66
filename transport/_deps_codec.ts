/**
 * The codec's npm package by full `npm:` specifier (see transport/_deps.ts
 * for why): msgpackr, which runs in Deno and in a browser alike.
 *
 * @module
 */
export { Packr } from "npm:msgpackr@2.1.4";
