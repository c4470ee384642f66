import { throws } from "@std/assert";
import { socketOpener as browserOpener } from "./_socket_browser.ts";

Deno.test("browser socket opener: extra certificates to trust are refused, naming why", () => {
  throws(() => browserOpener(["-----BEGIN CERTIFICATE-----"]), RangeError, "in a browser");
  browserOpener().release();
});
