/**
 * The wait strategy on a busy host (issue #16): the contention probe (the kernel's per-thread account and
 * preemptions seen in spins) and what AdaptiveSpin does with it — spins cut to a short cap while the host
 * is contended, full budget while it is quiet, and its account of what spinning paid.
 */
import { describe, expect, it } from "vitest";
import { createControllerHandles } from "../../src/connection/handles.js";
import { ContentionProbe } from "../../src/rings/contention.js";
import { AdaptiveSpin } from "../../src/rings/spin.js";
import { InvalidOptionError } from "../../src/util/errors.js";

/** A probe whose verdict the test sets (no /proc). */
class FixedProbe extends ContentionProbe {
  constructor(public busy: boolean) {
    super(false);
  }
  override contended(): boolean {
    return this.busy;
  }
}

function idle() {
  let polls = 0;
  return {
    get polls() {
      return polls;
    },
    hasPending: () => {
      polls++;
      return false;
    },
    armAndCheck: () => false,
  };
}

describe("contention probe", () => {
  it("a preemption seen in a spin marks the host contended for a while, then it counts as quiet again", () => {
    const probe = new ContentionProbe(false);
    expect(probe.contended(1000)).toBe(false);
    probe.preempted(1000, 250);
    expect(probe.contended(1000.5)).toBe(true);
    expect(probe.contended(1150)).toBe(true);
    expect(probe.contended(1000 + 60_000)).toBe(false);
    expect(probe.preemptions).toBe(1);
  });

  it.runIf(process.platform === "linux")("reads this thread's CPU time from the kernel's account", () => {
    const probe = new ContentionProbe();
    const before = probe.cpuNs();
    expect(before).toBeGreaterThan(0);
    let x = 0;
    for (let i = 0; i < 5_000_000; i++) x += Math.sqrt(i);
    expect(x).toBeGreaterThan(0);
    expect(probe.cpuNs()!).toBeGreaterThan(before!);
    expect(probe.readsSchedstat).toBe(true);
    probe.close();
    expect(probe.readsSchedstat).toBe(false);
    expect(probe.cpuNs()).toBeNull();
  });
});

describe("adaptive spin on a contended host", () => {
  it("cuts every spin to the contended cap while the host is contended, and parks at once with a cap of 0", () => {
    const probe = new FixedProbe(true);
    const spin = new AdaptiveSpin({ maxSpinMicros: 1000, contendedSpinMicros: 0, probe });
    const w = idle();
    expect(spin.spin(w)).toBe(false);
    expect(w.polls).toBe(1); // the one look before spinning; no spin on a contended host
    expect(spin.contendedSpins).toBe(1);
    // The host calms down: the full budget again (the look, then the spin loop).
    probe.busy = false;
    spin.spin(w);
    expect(w.polls).toBeGreaterThan(32);
    expect(spin.contendedSpins).toBe(1);
  });

  it("does the same between turns of the event loop (spinTurning)", async () => {
    const probe = new FixedProbe(true);
    const spin = new AdaptiveSpin({ maxSpinMicros: 1000, contendedSpinMicros: 0, probe });
    const w = idle();
    expect(await spin.spinTurning(w)).toBe(false);
    expect(w.polls).toBe(1);
    expect(spin.contendedSpins).toBe(1);
  });

  it("a cap at or above the budget changes nothing, so Infinity keeps spinning as on a quiet host", () => {
    const spin = new AdaptiveSpin({
      maxSpinMicros: 50,
      contendedSpinMicros: Infinity,
      probe: new FixedProbe(true),
    });
    const w = idle();
    spin.spin(w);
    expect(w.polls).toBeGreaterThan(32);
    expect(spin.contendedSpins).toBe(0);
  });

  it("accounts for what spinning paid", () => {
    const spin = new AdaptiveSpin({ maxSpinMicros: 8, probe: new FixedProbe(false) });
    let calls = 0;
    spin.spin({ hasPending: () => ++calls > 3, armAndCheck: () => true });
    spin.spin(idle());
    spin.woke(1);
    expect(spin.snapshot()).toMatchObject({
      hits: 1,
      misses: 1,
      sleeps: 1,
      contendedSpins: 0,
      preemptions: 0,
    });
  });

  it("validates the cap, here and where a connection is defined", () => {
    expect(() => new AdaptiveSpin({ contendedSpinMicros: -1 })).toThrow(/contendedSpinMicros/);
    expect(() => new AdaptiveSpin({ contendedSpinMicros: Number.NaN })).toThrow(/contendedSpinMicros/);
    expect(() => createControllerHandles({ contendedSpinMicros: -3 })).toThrow(InvalidOptionError);
    expect(createControllerHandles({ contendedSpinMicros: Infinity }).contendedSpinMicros).toBe(Infinity);
  });
});
