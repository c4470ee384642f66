import { equal, throws } from "@std/assert";
import { parseNodeArgs } from "./node_main.ts";

Deno.test("node flags: --keeper-cpu takes a share of one core in (0, 1]", () => {
  equal(parseNodeArgs([]).keeperCpu, undefined);
  equal(parseNodeArgs(["--keeper-cpu", "0.25"]).keeperCpu, 0.25);
  equal(parseNodeArgs(["--keeper-cpu", "1"]).keeperCpu, 1);
  for (const bad of ["0", "-0.1", "1.5", "abc", ""]) {
    throws(
      () => parseNodeArgs([`--keeper-cpu=${bad}`]),
      (err: Error) =>
        err instanceof RangeError &&
        err.message === `Invalid --keeper-cpu: expected a number in (0, 1], got "${bad}"`,
    );
  }
});

Deno.test("node flags: defaults and bad integers are named", () => {
  const args = parseNodeArgs([]);
  equal(args.keepers, 2);
  equal(args.trainers, 4);
  throws(() => parseNodeArgs(["--keepers", "two"]), /Invalid --keepers/);
  throws(() => parseNodeArgs(["--rounds", "0"]), /Invalid --rounds/);
});
