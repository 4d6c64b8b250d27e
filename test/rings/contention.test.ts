/**
 * The wait strategy on a busy host (issue #16): the contention probe (the kernel's per-thread account and
 * preemptions seen in spins) and what AdaptiveSpin does with it — spins cut to a short cap while the host
 * is contended, full budget while it is quiet, and its account of what spinning paid.
 */
import { describe, expect, it } from "vitest";
import { createControllerHandles } from "../../src/connection/handles.js";
import {
  ContentionProbe,
  EngineThreads,
  FOREIGN_CORES,
  type KernelAccount,
  ProcAccount,
  type ThreadAccount,
} from "../../src/rings/contention.js";
import { AdaptiveSpin, SPIN_LIMITER_BYTES, SpinLimiter } from "../../src/rings/spin.js";
import { InvalidOptionError } from "../../src/util/errors.js";

/** A probe whose verdict the test sets (no /proc). */
class FixedProbe extends ContentionProbe {
  constructor(public busy: boolean) {
    super(false);
  }
  override contended(): boolean {
    return this.busy;
  }
  // A loaded CI machine really deschedules a spinning test; these tests are about the counts the code keeps,
  // so a real preemption is not recorded here (the gap detection has its own tests with a scripted clock).
  override preempted(): void {}
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

/**
 * A host the test drives: this thread (tid 10) and a sibling engine thread (tid 11) each run `engineCores`
 * of a core's time between readings and this thread waits for a CPU 30 % of the time in 100 µs waits; the
 * host runs `foreignCores` of other work on top.
 */
class ScriptedHost implements KernelAccount {
  elapsedMs = 0;
  foreignCores = 0;
  engineCores = 1;
  private own = { runNs: 0, waitNs: 0, slices: 0 };
  private sibling = 0;
  private busyMs = 0;

  advance(ms: number): void {
    this.elapsedMs += ms;
    this.own.runNs += ms * 1e6 * this.engineCores;
    this.own.waitNs += ms * 1e6 * 0.3;
    this.own.slices += (ms * 1e6 * 0.3) / 100_000;
    this.sibling += ms * 1e6 * this.engineCores;
    this.busyMs += ms * (2 * this.engineCores + this.foreignCores);
  }
  thisThread(into: ThreadAccount): boolean {
    Object.assign(into, this.own);
    return true;
  }
  thisThreadId(): number {
    return 10;
  }
  threadRunNs(tid: number): number | null {
    return tid === 10 ? this.own.runNs : tid === 11 ? this.sibling : null;
  }
  hostBusyMs(): number {
    return this.busyMs;
  }
}

/** Run `probe` on `host` for `ms` of readings every 10 ms; true if it ever said contended. */
function drive(probe: ContentionProbe, host: ScriptedHost, ms: number): boolean {
  let seen = false;
  for (let t = 0; t < ms; t += 10) {
    host.advance(10);
    seen = probe.contended(1000 + host.elapsedMs) || seen;
  }
  return seen;
}

function engineRegistry(): EngineThreads {
  const limiter = new SpinLimiter(SpinLimiter.create(), 1);
  limiter.threads!.register(11);
  return limiter.threads!;
}

describe("contention probe: whose work the thread competes with", () => {
  it("waits behind the engine's own threads alone are not contention: spinning still pays there", () => {
    const host = new ScriptedHost();
    const probe = new ContentionProbe(true, engineRegistry(), host);
    expect(drive(probe, host, 2000)).toBe(false);
    expect(probe.contendedWindows).toBe(0);
    expect(probe.foreignCores).toBeLessThan(0.01);
  });

  it("the same waits while other work runs beside the engine are contention", () => {
    const host = new ScriptedHost();
    host.foreignCores = 1;
    const probe = new ContentionProbe(true, engineRegistry(), host);
    expect(drive(probe, host, 2000)).toBe(true);
    expect(probe.contendedWindows).toBeGreaterThan(100);
    expect(probe.foreignCores).toBeCloseTo(1, 1);
  });

  it("light foreign work (under FOREIGN_CORES) leaves the engine spinning; the host calming down ends contention", () => {
    const host = new ScriptedHost();
    host.foreignCores = FOREIGN_CORES / 2;
    const probe = new ContentionProbe(true, engineRegistry(), host);
    expect(drive(probe, host, 1000)).toBe(false);
    host.foreignCores = 2;
    expect(drive(probe, host, 500)).toBe(true);
    host.foreignCores = 0;
    drive(probe, host, 1000);
    expect(probe.contended(1000 + host.elapsedMs)).toBe(false);
  });

  it("a preemption in a spin counts only while foreign work runs", () => {
    const host = new ScriptedHost();
    const probe = new ContentionProbe(true, engineRegistry(), host);
    drive(probe, host, 500);
    probe.preempted(1000 + host.elapsedMs, 500);
    expect(probe.contended(1000 + host.elapsedMs + 1)).toBe(false);
    expect(probe.preemptions).toBe(1);
    host.foreignCores = 1;
    drive(probe, host, 300);
    probe.preempted(1000 + host.elapsedMs, 500);
    expect(probe.contended(1000 + host.elapsedMs + 1)).toBe(true);
  });

  it("without an engine registry every sign counts, as before", () => {
    const host = new ScriptedHost();
    const probe = new ContentionProbe(true, null, host);
    expect(drive(probe, host, 200)).toBe(true);
  });

  it("the probe registers its thread once and leaves the registry when closed", () => {
    const host = new ScriptedHost();
    const threads = engineRegistry();
    const before = threads.generation;
    const probe = new ContentionProbe(true, threads, host);
    drive(probe, host, 500);
    expect(threads.generation).toBe(before + 1);
    expect(threads.runNs(host)).toBe(host.threadRunNs(10)! + host.threadRunNs(11)!);
    probe.close();
    expect(threads.generation).toBe(before + 2);
    expect(threads.runNs(host)).toBe(host.threadRunNs(11));
  });

  it("a registry holds its slots and refuses more; the spinner count's buffer holds one", () => {
    const sab = new SharedArrayBuffer(EngineThreads.bytes(2));
    const threads = new EngineThreads(sab, 0, 2);
    expect(threads.register(1)).toBe(true);
    expect(threads.register(2)).toBe(true);
    expect(threads.register(3)).toBe(false);
    threads.unregister(1);
    expect(threads.register(3)).toBe(true);
    expect(SpinLimiter.create().byteLength).toBe(SPIN_LIMITER_BYTES);
    expect(new SpinLimiter(new SharedArrayBuffer(8), 1).threads).toBeNull();
  });

  it.runIf(process.platform === "linux")("reads the host's busy time and any thread of this process", () => {
    const account = new ProcAccount();
    const tid = account.thisThreadId();
    expect(tid).toBeGreaterThan(0);
    expect(account.threadRunNs(tid!)).toBeGreaterThan(0);
    expect(account.hostBusyMs()).toBeGreaterThan(0);
    expect(account.threadRunNs(2 ** 31 - 1)).toBeNull();
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
    });
  });

  it("validates the cap, here and where a connection is defined", () => {
    expect(() => new AdaptiveSpin({ contendedSpinMicros: -1 })).toThrow(/contendedSpinMicros/);
    expect(() => new AdaptiveSpin({ contendedSpinMicros: Number.NaN })).toThrow(/contendedSpinMicros/);
    expect(() => createControllerHandles({ contendedSpinMicros: -3 })).toThrow(InvalidOptionError);
    expect(createControllerHandles({ contendedSpinMicros: Infinity }).contendedSpinMicros).toBe(Infinity);
  });
});
