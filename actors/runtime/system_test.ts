import { deepEqual, equal, ok, rejects, throws } from "@std/assert";
import {
  type ActorContext,
  ActorStoppedError,
  ActorSystem,
  AskTimeoutError,
  type Behavior,
  type DownNotice,
  MailboxFullError,
  RemoteActorError,
  type RemoteFrame,
  RemoteUnavailableError,
  type Timers,
} from "./mod.ts";

function gate() {
  return Promise.withResolvers<void>();
}

/** Resolves once `check()` is true, polling on macrotasks; fails after `max` polls. */
async function until(check: () => boolean, max = 2000): Promise<void> {
  for (let i = 0; i < max; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 1));
  }
  throw new Error("Condition not reached");
}

Deno.test("tell and ask reach an actor, and a ref by path reaches the same actor", async () => {
  await using system = new ActorSystem({ node: "n1" });
  const seen: number[] = [];
  const ref = await system.spawn({
    receive(n: number) {
      seen.push(n);
      return seen.length;
    },
  }, { name: "acc" });
  ref.tell(1);
  ref.tell(2);
  equal(await system.ref("n1/acc").ask(3), 3);
  equal(await system.ref("acc").ask(4), 4);
  deepEqual(seen, [1, 2, 3, 4]);
});

Deno.test("an actor handles one message at a time, awaiting async handlers in order", async () => {
  await using system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const ref = await system.spawn({
    async receive(msg: { id: string; wait: number }) {
      log.push(`start ${msg.id}`);
      await new Promise((r) => setTimeout(r, msg.wait));
      log.push(`end ${msg.id}`);
      return msg.id;
    },
  });
  const answers = await Promise.all([
    ref.ask({ id: "a", wait: 20 }),
    ref.ask({ id: "b", wait: 0 }),
    ref.ask({ id: "c", wait: 5 }),
  ]);
  deepEqual(answers, ["a", "b", "c"]);
  deepEqual(log, ["start a", "end a", "start b", "end b", "start c", "end c"]);
});

Deno.test("ask times out with AskTimeoutError naming the target", async () => {
  await using system = new ActorSystem({ node: "n" });
  const release = gate();
  const ref = await system.spawn({ receive: () => release.promise }, { name: "slow" });
  await rejects(ref.ask("x", { timeoutMs: 10 }), AskTimeoutError);
  try {
    await ref.ask("y", { timeoutMs: 5 });
    ok(false, "ask should have timed out");
  } catch (e) {
    if (!(e instanceof AskTimeoutError)) throw e;
    equal(e.target, "n/slow");
    ok(e.message.includes("n/slow"));
  }
  release.resolve();
});

Deno.test("ask rejects with the abort reason when its signal aborts", async () => {
  await using system = new ActorSystem({ node: "n" });
  const release = gate();
  const ref = await system.spawn({ receive: () => release.promise });
  const controller = new AbortController();
  const asked = ref.ask("x", { signal: controller.signal, timeoutMs: Infinity });
  controller.abort(new Error("caller gave up"));
  await rejects(asked, /caller gave up/);
  release.resolve();
});

Deno.test("ask to an actor that does not exist rejects with ActorStoppedError", async () => {
  await using system = new ActorSystem({ node: "n" });
  await rejects(system.ref("n/ghost").ask("x"), (e: unknown) => {
    if (!(e instanceof ActorStoppedError)) throw e;
    equal(e.target, "n/ghost");
    return true;
  });
  system.ref("n/ghost").tell("lost");
  equal(system.stats().deadLetters, 1);
});

Deno.test("a throw in receive fails the actor, rejects that ask, and fails the queued asks", async () => {
  await using system = new ActorSystem({ node: "n" });
  const release = gate();
  const ref = await system.spawn({
    async receive(msg: string) {
      if (msg === "wait") await release.promise;
      if (msg === "boom") throw new TypeError("bad message");
      return msg;
    },
  });
  const notices: DownNotice[] = [];
  system.watch(ref, (n) => notices.push(n));
  const first = ref.ask("wait");
  const failing = ref.ask("boom");
  const queued = ref.ask("after");
  release.resolve();
  equal(await first, "wait");
  await rejects(failing, TypeError);
  await rejects(queued, ActorStoppedError);
  await until(() => notices.length === 1);
  ok(notices[0].reason instanceof TypeError);
  equal(system.isAlive(ref), false);
});

Deno.test("mailbox drop-newest refuses new messages when full and counts them", async () => {
  await using system = new ActorSystem({ node: "n" });
  const release = gate();
  const got: number[] = [];
  const ref = await system.spawn({
    async receive(n: number) {
      if (n === 0) await release.promise;
      got.push(n);
    },
  }, { mailboxSize: 2, overflow: "drop-newest" });
  ref.tell(0); // taken at once, handler blocks
  await until(() => true, 1);
  ref.tell(1);
  ref.tell(2);
  ref.tell(3); // dropped
  await rejects(ref.ask(4), MailboxFullError);
  equal(system.stats().dropped, 2);
  release.resolve();
  await until(() => got.length === 3);
  await ref.ask(5);
  deepEqual(got, [0, 1, 2, 5]);
});

Deno.test("mailbox drop-oldest evicts the oldest message and fails an evicted ask", async () => {
  await using system = new ActorSystem({ node: "n" });
  const release = gate();
  const got: number[] = [];
  const ref = await system.spawn({
    async receive(n: number) {
      if (n === 0) await release.promise;
      got.push(n);
    },
  }, { mailboxSize: 2, overflow: "drop-oldest" });
  ref.tell(0);
  await until(() => true, 1);
  const evictedAsk = ref.ask(1);
  ref.tell(2);
  ref.tell(3); // evicts the ask for 1
  await rejects(evictedAsk, MailboxFullError);
  release.resolve();
  await until(() => got.length === 3);
  deepEqual(got, [0, 2, 3]);
});

Deno.test("mailbox fail policy throws MailboxFullError at the sender", async () => {
  await using system = new ActorSystem({ node: "n" });
  const release = gate();
  const ref = await system.spawn({ receive: () => release.promise }, {
    mailboxSize: 1,
    overflow: "fail",
    name: "busy",
  });
  ref.tell(0);
  await until(() => true, 1);
  ref.tell(1);
  throws(() => ref.tell(2), (e: unknown) => e instanceof MailboxFullError && e.target === "n/busy");
  release.resolve();
});

Deno.test("watchers get a death notice with the reason, and noproc for a missing actor", async () => {
  await using system = new ActorSystem({ node: "n" });
  const notices: string[] = [];
  let this_ctx: ActorContext | undefined;
  const w = await system.spawn({
    started(ctx) {
      this_ctx = ctx;
    },
    receive(path: string) {
      this_ctx!.watch(system.ref(path));
    },
    down(notice: DownNotice) {
      notices.push(`${notice.ref.path}:${String(notice.reason)}`);
    },
  });
  const target = await system.spawn({ receive: () => {} }, { name: "t" });
  await w.ask("n/t");
  await w.ask("n/nobody");
  await system.stop(target, { reason: "normal" });
  await until(() => notices.length === 2);
  deepEqual(notices.sort(), ["n/nobody:noproc", "n/t:normal"]);
});

Deno.test("timers deliver to their actor and die with it", async () => {
  await using system = new ActorSystem({ node: "n" });
  let ticks = 0;
  let timers: Timers | undefined;
  const ref = await system.spawn({
    started(ctx) {
      timers = ctx.timers;
      ctx.timers.interval(1, "tick", { key: "tick" });
      ctx.timers.once(60_000, "late", { key: "late" });
    },
    receive(msg: string) {
      if (msg === "tick") ticks++;
      if (msg === "late") throw new Error("a cancelled timer fired");
    },
  });
  await until(() => ticks >= 3);
  equal(timers!.size, 2);
  await system.stop(ref);
  equal(timers!.size, 0);
  throws(() => timers!.once(1, "x"), TypeError);
});

Deno.test("ctx.stop ends the actor after its current message with the given reason", async () => {
  await using system = new ActorSystem({ node: "n" });
  const reasons: string[] = [];
  const ref = await system.spawn({
    receive(msg: string, ctx) {
      if (msg === "quit") ctx.stop();
      return msg;
    },
    stopped(_ctx, reason) {
      reasons.push(String(reason));
    },
  });
  equal(await ref.ask("quit"), "quit");
  await until(() => !system.isAlive(ref));
  deepEqual(reasons, ["normal"]);
});

Deno.test("a throw in started rejects spawn and frees the name", async () => {
  await using system = new ActorSystem({ node: "n" });
  let stoppedCalled = false;
  await rejects(
    system.spawn({
      started() {
        throw new Error("cannot open device");
      },
      receive() {},
      stopped() {
        stoppedCalled = true;
      },
    }, { name: "gpu" }),
    /cannot open device/,
  );
  equal(stoppedCalled, false);
  equal(system.stats().actors, 0);
  const again = await system.spawn({ receive: () => "ok" }, { name: "gpu" });
  equal(await again.ask(null), "ok");
  await rejects(system.spawn({ receive() {} }, { name: "gpu" }), /name already taken/);
});

Deno.test("shutdown stops actors and children in reverse start order, awaiting stopped hooks", async () => {
  const system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  const leaf = (name: string): Behavior => ({
    receive() {},
    async stopped() {
      await new Promise((r) => setTimeout(r, 2));
      log.push(name);
    },
  });
  await system.spawn(leaf("a"), { name: "a" });
  await system.spawn({
    async started(ctx) {
      await ctx.spawn(leaf("b1"), { name: "b/1" });
      await ctx.spawn(leaf("b2"), { name: "b/2" });
    },
    receive() {},
    stopped() {
      log.push("b");
    },
  }, { name: "b" });
  await system.spawn(leaf("c"), { name: "c" });
  await system.shutdown();
  deepEqual(log, ["c", "b", "b2", "b1", "a"]);
  equal(system.stats().actors, 0);
  await rejects(system.spawn(leaf("d")), /shut down/);
});

Deno.test("an actor that does not stop within its shutdown timeout is killed", async () => {
  await using system = new ActorSystem({ node: "n" });
  const never = gate();
  const notices: DownNotice[] = [];
  const ref = await system.spawn({ receive() {}, stopped: () => never.promise }, {
    shutdownMs: 10,
  });
  system.watch(ref, (n) => notices.push(n));
  equal(await system.stop(ref), "killed");
  equal(notices[0].reason, "killed");
  equal(system.isAlive(ref), false);
  never.resolve();
});

// --- remote ---------------------------------------------------------------------

function pair() {
  const a = new ActorSystem({ node: "a" });
  const b = new ActorSystem({ node: "b" });
  const wire: RemoteFrame[] = [];
  a.addRemote("b", {
    send: (f) => {
      wire.push(f);
      queueMicrotask(() => b.deliverRemote(structuredClone(f)));
    },
  });
  b.addRemote("a", { send: (f) => queueMicrotask(() => a.deliverRemote(structuredClone(f))) });
  return { a, b, wire };
}

Deno.test("a remote ref is used like a local one: tell, ask, errors", async () => {
  const { a, b, wire } = pair();
  await using _a = a;
  await using _b = b;
  const got: unknown[] = [];
  await b.spawn({
    receive(msg: { op: string }) {
      got.push(msg);
      if (msg.op === "fail") throw new RangeError("shape mismatch");
      return { ok: msg.op };
    },
  }, { name: "agg/0" });
  const remote = a.ref("b/agg/0");
  remote.tell({ op: "t" });
  deepEqual(await remote.ask({ op: "q" }), { ok: "q" });
  await rejects(remote.ask({ op: "fail" }), (e: unknown) => {
    if (!(e instanceof RemoteActorError)) throw e;
    equal(e.remoteName, "RangeError");
    ok(e.message.includes("b/agg/0") && e.message.includes("shape mismatch"));
    return true;
  });
  await rejects(a.ref("b/missing").ask(1), ActorStoppedError);
  deepEqual(got, [{ op: "t" }, { op: "q" }, { op: "fail" }]);
  deepEqual(wire.slice(0, 2).map((f) => [f.kind, f.to, f.from]), [
    ["tell", "b/agg/0", "a"],
    ["ask", "b/agg/0", "a"],
  ]);
});

Deno.test("removeRemote fails in-flight asks and notifies watchers of the node's actors", async () => {
  await using a = new ActorSystem({ node: "a" });
  const sent: RemoteFrame[] = [];
  a.addRemote("b", { send: (f) => void sent.push(f) }); // a peer that never answers
  const asked = a.ref("b/trainer").ask("step", { timeoutMs: Infinity });
  const notices: DownNotice[] = [];
  a.watch(a.ref("b/trainer"), (n) => notices.push(n));
  equal(a.stats().pendingRemoteAsks, 1);
  a.removeRemote("b", "socket closed");
  await rejects(asked, (e: unknown) => {
    if (!(e instanceof RemoteUnavailableError)) throw e;
    ok(e.message.includes("b/trainer") && e.message.includes("socket closed"));
    return true;
  });
  ok(notices[0].reason instanceof RemoteUnavailableError);
  equal(a.stats().pendingRemoteAsks, 0);
  await rejects(a.ref("b/trainer").ask("again"), /node b is not connected/);
});

Deno.test("a link whose send throws fails the ask with RemoteUnavailableError", async () => {
  await using a = new ActorSystem({ node: "a" });
  a.addRemote("b", {
    send: () => Promise.reject(new Error("buffer full")),
  });
  await rejects(a.ref("b/x").ask(1), /send failed: buffer full/);
});

Deno.test("deliverRemote rejects malformed frames with a TypeError naming the fault", async () => {
  await using a = new ActorSystem({ node: "a" });
  throws(() => a.deliverRemote(null as unknown as RemoteFrame), /expected an object/);
  throws(() => a.deliverRemote({ kind: "shout", to: "a/x", payload: 1 } as never), /kind must/);
  throws(() => a.deliverRemote({ kind: "ask", to: "a/x", payload: 1 }), /integer id/);
  throws(() => a.deliverRemote({ kind: "ask", to: "a/x", id: 1, payload: 1 }), /needs "from"/);
  throws(() => a.deliverRemote({ kind: "tell", to: "a", payload: 1 }), /node\/name/);
  // A well-formed reply to an ask nobody sent is dropped quietly.
  a.deliverRemote({ kind: "reply", to: "a", from: "b", id: 99, payload: 1 });
});

Deno.test("shutdown fails asks still waiting on other nodes", async () => {
  const a = new ActorSystem({ node: "a" });
  a.addRemote("b", { send: () => {} });
  const asked = a.ref("b/x").ask(1, { timeoutMs: Infinity });
  await a.shutdown();
  await rejects(asked, RemoteUnavailableError);
});

Deno.test("an actor never runs two handlers at once, even when a reply arrives synchronously", async () => {
  const system = new ActorSystem({ node: "n" });
  const log: string[] = [];
  await system.spawn({
    receive(msg, ctx) {
      if (msg === "ping") ctx.system.ref("n/a").tell("pong");
    },
  }, { name: "b" });
  const a = await system.spawn({
    async receive(msg, ctx) {
      if (msg === "go") {
        log.push("go-start");
        ctx.system.ref("n/b").tell("ping");
        await new Promise((resolve) => setTimeout(resolve, 5));
        log.push("go-end");
      }
      if (msg === "pong") log.push("pong");
      return log.length;
    },
  }, { name: "a" });
  a.tell("go");
  for (let i = 0; i < 100 && log.length < 3; i++) await a.ask("flush");
  deepEqual(log, ["go-start", "go-end", "pong"]);
  await system.shutdown();
});
