import { deepEqual, equal, ok, rejects, throws } from "@std/assert";
import {
  ActorSystem,
  type Behavior,
  type ChildSpec,
  type DownNotice,
  RestartIntensityError,
  seededRandom,
  Supervisor,
  type SupervisorEvent,
  type SupervisorOptions,
} from "./mod.ts";

async function until(check: () => boolean, max = 3000): Promise<void> {
  for (let i = 0; i < max; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 1));
  }
  throw new Error("Condition not reached");
}

/** A child that logs its lifecycle; "crash" throws, "exit" stops it normally. */
function child(log: string[], id: string, extra: Partial<ChildSpec> = {}): ChildSpec {
  return {
    id,
    start: (): Behavior => ({
      started() {
        log.push(`start ${id}`);
      },
      receive(msg: string, ctx) {
        if (msg === "crash") throw new Error(`${id} crashed`);
        if (msg === "exit") ctx.stop("normal");
        return id;
      },
      stopped() {
        log.push(`stop ${id}`);
      },
    }),
    ...extra,
  };
}

function tree(options: Omit<SupervisorOptions, "onEvent">) {
  const events: SupervisorEvent[] = [];
  const sup = new Supervisor({ ...options, onEvent: (e) => events.push(e) });
  const count = (type: SupervisorEvent["type"]) => events.filter((e) => e.type === type).length;
  return { sup, events, count };
}

Deno.test("one_for_one restarts only the failed child", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const { sup, count } = tree({
    strategy: "one_for_one",
    children: ["a", "b", "c"].map((id) => child(log, id)),
  });
  await system.spawn(sup, { name: "s" });
  log.length = 0;
  await rejects(system.ref("n/s/b").ask("crash"), /b crashed/);
  await until(() => count("restarted") === 1);
  deepEqual(log, ["stop b", "start b"]);
  equal(await system.ref("n/s/b").ask("hi"), "b");
  deepEqual(sup.stats().children.map((c) => [c.id, c.restarts, c.running]), [
    ["a", 0, true],
    ["b", 1, true],
    ["c", 0, true],
  ]);
});

Deno.test("one_for_all stops the others in reverse order and restarts all in order", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const { sup, count } = tree({
    strategy: "one_for_all",
    children: ["a", "b", "c"].map((id) => child(log, id)),
  });
  await system.spawn(sup, { name: "s" });
  log.length = 0;
  await rejects(system.ref("n/s/b").ask("crash"));
  await until(() => count("restarted") === 3);
  deepEqual(log, ["stop b", "stop c", "stop a", "start a", "start b", "start c"]);
  equal(sup.stats().restarts, 3);
});

Deno.test("rest_for_one restarts the failed child and those started after it", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const t = tree({
    strategy: "rest_for_one",
    children: ["a", "b", "c"].map((id) => child(log, id)),
  });
  await system.spawn(t.sup, { name: "s" });
  log.length = 0;
  await rejects(system.ref("n/s/b").ask("crash"));
  await until(() => t.count("restarted") === 2);
  deepEqual(log, ["stop b", "stop c", "start b", "start c"]);
});

Deno.test("restart types follow OTP: permanent always, transient on failure, temporary never", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const { sup, events, count } = tree({
    children: [
      child(log, "perm", { restart: "permanent" }),
      child(log, "trans", { restart: "transient" }),
      child(log, "temp", { restart: "temporary" }),
    ],
  });
  await system.spawn(sup, { name: "s" });

  await system.ref("n/s/perm").ask("exit");
  await until(() => count("restarted") === 1);

  await system.ref("n/s/trans").ask("exit");
  await until(() => count("exited") === 2);
  equal(count("restarted"), 1, "a transient child is not restarted after a normal exit");
  await rejects(system.ref("n/s/temp").ask("crash"));
  await until(() => count("failed") === 1);
  equal(count("restarted"), 1, "a temporary child is never restarted");
  deepEqual(sup.stats().children.map((c) => [c.id, c.restarts, c.running]), [
    ["perm", 1, true],
    ["trans", 0, false],
  ]);
  ok(events.some((e) => e.type === "exited" && e.child === "trans" && e.reason === "normal"));
});

Deno.test("a transient child is restarted after an abnormal exit", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const t2 = tree({ children: [child(log, "t", { restart: "transient" })] });
  await system.spawn(t2.sup, { name: "s" });
  await rejects(system.ref("n/s/t").ask("crash"));
  await until(() => t2.count("restarted") === 1);
  deepEqual(log, ["start t", "stop t", "start t"]);
});

Deno.test("exceeding restart intensity stops the children and escalates to the parent", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const inner = tree({
    intensity: 2,
    periodMs: 60_000,
    children: [child(log, "x"), child(log, "y")],
  });
  const outer = tree({
    intensity: 0,
    children: [{ id: "inner", start: () => inner.sup, shutdownMs: Infinity }],
  });
  const notices: DownNotice[] = [];
  const root = await system.spawn(outer.sup, { name: "root" });
  system.watch(root, (n) => notices.push(n));

  for (let i = 0; i < 2; i++) {
    await rejects(system.ref("n/root/inner/x").ask("crash"));
    await until(() => inner.count("restarted") === i + 1);
  }
  log.length = 0;
  await rejects(system.ref("n/root/inner/x").ask("crash")); // the third restart is one too many
  await until(() => notices.length === 1);

  deepEqual(log.slice(0, 2), ["stop x", "stop y"]);
  const gaveUp = inner.events.find((e) => e.type === "gave_up");
  if (gaveUp?.type !== "gave_up") throw new Error("no gave_up event");
  ok(gaveUp.reason instanceof RestartIntensityError);
  equal(gaveUp.reason.child, "x");
  // The outer supervisor saw its child fail, and with intensity 0 gave up too.
  ok(outer.events.some((e) => e.type === "failed" && e.child === "inner"));
  equal(outer.count("gave_up"), 1);
  ok(notices[0].reason instanceof RestartIntensityError);
  equal(system.stats().actors, 0);
});

Deno.test("a failure while starting counts as a failure and is retried", async () => {
  await using system = new ActorSystem({ node: "n" });
  let attempts = 0;
  const { sup, count } = tree({
    children: [{
      id: "flaky",
      start: () => {
        attempts++;
        if (attempts === 2) throw new Error("start() failed");
        return {
          started() {
            if (attempts === 3) throw new Error("started() failed");
          },
          receive: (m: string) => {
            if (m === "crash") throw new Error("crash");
            return attempts;
          },
        };
      },
    }],
  });
  await system.spawn(sup, { name: "s" });
  await rejects(system.ref("n/s/flaky").ask("crash"));
  await until(() => count("restarted") === 1);
  equal(attempts, 4);
  equal(count("failed"), 3);
  equal(await system.ref("n/s/flaky").ask("n"), 4);
});

Deno.test("a child that never starts exhausts intensity and the supervisor fails to spawn", async () => {
  await using system = new ActorSystem({ node: "n" });
  let attempts = 0;
  const { sup, count } = tree({
    intensity: 3,
    children: [{
      id: "broken",
      start: () => {
        attempts++;
        throw new Error("no device");
      },
    }],
  });
  await rejects(system.spawn(sup, { name: "s" }), RestartIntensityError);
  equal(attempts, 4);
  equal(count("gave_up"), 1);
  equal(system.stats().actors, 0);
});

Deno.test("children stop in reverse order; one past its shutdown timeout is killed and reported", async () => {
  const system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const hang = Promise.withResolvers<void>();
  const { sup, events } = tree({
    children: [
      child(log, "a"),
      {
        id: "stuck",
        shutdownMs: 10,
        start: () => ({
          receive() {},
          stopped: () => hang.promise,
        }),
      },
      child(log, "c"),
    ],
  });
  await system.spawn(sup, { name: "s" });
  log.length = 0;
  await system.shutdown();
  deepEqual(log, ["stop c", "stop a"]);
  deepEqual(
    events.filter((e) => e.type === "killed").map((e) => e.type === "killed" && e.child),
    ["stuck"],
  );
  equal(system.stats().actors, 0);
  hang.resolve();
});

Deno.test("backoff delays follow capped exponential full jitter from the injected RNG", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  let clock = 0;
  const { sup, events, count } = tree({
    intensity: 10,
    backoff: { minBackoffMs: 4, maxBackoffMs: 10, resetAfterMs: 1000 },
    random: seededRandom(7),
    now: () => clock,
    children: [child(log, "w")],
  });
  await system.spawn(sup, { name: "s" });
  for (let i = 1; i <= 3; i++) {
    await rejects(system.ref("n/s/w").ask("crash"));
    await until(() => count("restarted") === i);
  }
  // After a stable run longer than resetAfterMs, the backoff starts over.
  clock = 5000;
  await rejects(system.ref("n/s/w").ask("crash"));
  await until(() => count("restarted") === 4);

  const rng = seededRandom(7);
  const expected = [4, 8, 10, 4].map((cap) => cap * (1 - rng()));
  const delays = events.flatMap((e) => e.type === "backoff" ? [e.delayMs] : []);
  deepEqual(delays, expected);
  // Each restart comes after its backoff, never before.
  const order = events.filter((e) => e.type === "backoff" || e.type === "restarted")
    .map((e) => e.type);
  deepEqual(order, [
    "backoff",
    "restarted",
    "backoff",
    "restarted",
    "backoff",
    "restarted",
    "backoff",
    "restarted",
  ]);
});

Deno.test("a supervisor stopped during a backoff wait does not restart the child", async () => {
  const system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const { sup, count } = tree({
    backoff: { minBackoffMs: 60_000, maxBackoffMs: 60_000, randomFactor: 0 },
    children: [child(log, "w")],
  });
  const ref = await system.spawn(sup, { name: "s" });
  await rejects(system.ref("n/s/w").ask("crash"));
  await until(() => count("backoff") === 1);
  await system.stop(ref);
  equal(count("restarted"), 0);
  await system.shutdown(); // the sanitizer checks the backoff timer is gone
});

Deno.test("nested trees: one_for_all inside one_for_one restarts only its own group", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const inner = tree({ strategy: "one_for_all", children: [child(log, "x"), child(log, "y")] });
  const outer = tree({
    children: [{ id: "group", start: () => inner.sup, shutdownMs: Infinity }, child(log, "z")],
  });
  await system.spawn(outer.sup, { name: "root" });
  deepEqual(log, ["start x", "start y", "start z"]);
  log.length = 0;
  await rejects(system.ref("n/root/group/x").ask("crash"));
  await until(() => inner.count("restarted") === 2);
  deepEqual(log, ["stop x", "stop y", "start x", "start y"]);
  equal(outer.count("restarted"), 0);
  await system.shutdown();
  deepEqual(log.slice(4), ["stop z", "stop y", "stop x"]);
});

Deno.test("startChild and terminateChild change the children at run time", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const { sup } = tree({ children: [child(log, "a")] });
  await system.spawn(sup, { name: "s" });
  const ref = await sup.startChild(child(log, "late"));
  equal(ref.path, "n/s/late");
  equal(await ref.ask("hi"), "late");
  await rejects(sup.startChild(child(log, "late")), /duplicate id/);
  await sup.terminateChild("a");
  deepEqual(sup.stats().children.map((c) => c.id), ["late"]);
  deepEqual(log, ["start a", "start late", "stop a"]);
  deepEqual(await system.ref("n/s").ask("stats"), sup.stats());
});

Deno.test("bad supervisor options are refused with errors that name the fault", () => {
  throws(() => new Supervisor({ strategy: "one_for_some" as never, children: [] }), /strategy/);
  throws(() => new Supervisor({ intensity: -1, children: [] }), RangeError);
  throws(
    () => new Supervisor({ children: [child([], "a"), child([], "a")] }),
    /duplicate id "a"/,
  );
  throws(
    () =>
      new Supervisor({
        children: [{ id: "a", start: () => ({ receive() {} }), restart: "sometimes" as never }],
      }),
    /restart must be/,
  );
  throws(
    () => new Supervisor({ children: [], backoff: { minBackoffMs: 10, maxBackoffMs: 5 } }),
    /minBackoffMs <= maxBackoffMs/,
  );
});

Deno.test("a child supervisor that gives up is restarted by its parent with fresh children", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const inners: ReturnType<typeof tree>[] = [];
  const outer = tree({
    children: [{
      id: "inner",
      shutdownMs: Infinity,
      start: () => {
        const t = tree({ intensity: 0, children: [child(log, "x")] });
        inners.push(t);
        return t.sup;
      },
    }],
  });
  await system.spawn(outer.sup, { name: "root" });
  await rejects(system.ref("n/root/inner/x").ask("crash"));
  await until(() => outer.count("restarted") === 1);
  equal(inners.length, 2);
  equal(inners[0].count("gave_up"), 1);
  deepEqual(log, ["start x", "stop x", "start x"]);
  equal(await system.ref("n/root/inner/x").ask("hi"), "x");
});
