import { equal } from "@std/assert";
import { Lease, type Lent, LET_GO, letGo } from "./_lease.ts";

Deno.test("a lease gives back once, after the lender sealed and every holder let go; a spoiled one never", () => {
  let back = 0;
  const lease = new Lease(() => back++);
  const a = lease.hold();
  const b = lease.hold();
  a();
  a(); // a second call of one holder's function counts once
  lease.seal();
  equal(back, 0, "b still holds");
  b();
  equal(back, 1);
  b();
  equal(back, 1);

  let spoiled = 0;
  const s = new Lease(() => spoiled++);
  const c = s.hold();
  s.spoil();
  s.seal();
  c();
  equal(spoiled, 0);

  // A message carries its holder's function; one without does nothing.
  let msgBack = 0;
  const m = new Lease(() => msgBack++);
  const msg: Lent<{ round: number }> = { round: 1, [LET_GO]: m.hold() };
  m.seal();
  letGo({ round: 2 });
  letGo(undefined);
  letGo(msg);
  equal(msgBack, 1);
  equal(Object.keys(msg).length, 1, "the symbol is not a field a codec would send");
});
