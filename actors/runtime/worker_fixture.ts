/**
 * A behavior module for the worker actor tests: it echoes, fails on demand in
 * each way a Worker can die, and reports an id unique to its Worker.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import type { WorkerBehavior } from "./worker.ts";

const workerId = crypto.randomUUID();

/** Commands the fixture understands. */
export type FixtureMsg =
  | { op: "echo"; value: unknown }
  | { op: "id" }
  | { op: "throw" }
  | { op: "close" }
  | { op: "async_crash" };

/** Builds the fixture behavior; `args.prefix` is prepended to echoed strings. */
export default function make(args: { prefix?: string } | undefined): WorkerBehavior<FixtureMsg> {
  return {
    receive(msg) {
      switch (msg.op) {
        case "echo":
          return typeof msg.value === "string" ? `${args?.prefix ?? ""}${msg.value}` : msg.value;
        case "id":
          return workerId;
        case "throw":
          throw new RangeError("fixture failed on purpose");
        case "close":
          self.close();
          return "closing";
        case "async_crash":
          setTimeout(() => {
            throw new Error("fixture crashed outside a handler");
          }, 0);
          return "scheduled";
      }
    },
  };
}
