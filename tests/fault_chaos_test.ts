/**
 * Fault suite, seeded chaos: the soak of `deno task chaos` at CI size (about
 * 16 faults of mixed kinds on a network run of three trainer nodes), with
 * its invariants: no round lost, no round whose starting θ differed between
 * trainers, no unhandled rejection, and the final loss within 5% of a
 * fault-free run with the same seed. Also: the same seed gives the same
 * fault plan and the same per-frame decisions of the fault layer.
 */
import { deepEqual, equal, notDeepEqual, ok } from "@std/assert";
import { PhasedFaults } from "./_fault_layer.ts";
import { chaosPlan, faultSeed } from "./_fault_plan.ts";
import { chaos } from "./_fault_compare.ts";

Deno.test("chaos: a seed replays the same plan and the same frame faults", () => {
  const seed = faultSeed("fault_chaos plan", 5);
  deepEqual(chaosPlan(seed, 50), chaosPlan(seed, 50));
  notDeepEqual(chaosPlan(seed, 50), chaosPlan(seed + 1, 50));
  equal(chaosPlan(seed, 50).length, 50);
  const frames = (s: number) => {
    const f = new PhasedFaults(s);
    f.setRates({ drop: 0.2, duplicate: 0.2, corrupt: 0.2 });
    const got: string[] = [];
    for (let i = 0; i < 200; i++) {
      f.transmit(
        i % 2 ? "a" : "b",
        "c",
        new Uint8Array([i, 1, 2, 3]),
        (b) => got.push(b.join(".")),
      );
    }
    f.close();
    return got;
  };
  deepEqual(frames(seed), frames(seed));
  notDeepEqual(frames(seed), frames(seed + 1));
});

Deno.test({
  name: "chaos: 12 seeded faults of mixed kinds, no round lost or divergent, loss near fault-free",
  async fn() {
    const seed = faultSeed("fault_chaos", 7);
    const s = await chaos({ seed, faults: 12, trainers: 3 });
    console.log(`fault_chaos: ${JSON.stringify(s)}`);
    equal(s.faults_injected, 12);
    ok(Object.keys(s.fault_kinds).length >= 6, JSON.stringify(s.fault_kinds));
    equal(s.lost_rounds, 0);
    equal(s.divergent_rounds, 0, s.violations.join("\n"));
    equal(s.unhandled_rejections, 0);
    ok(s.rounds > 0);
    ok(
      Math.abs(s.loss_ratio - 1) <= 0.05,
      `final ${s.final_loss} vs fault-free ${s.fault_free_loss}`,
    );
  },
});
