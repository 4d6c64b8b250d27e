/** Doorbells, adaptive spinning and the spinner cap, on one thread (the cross-thread wake-up: cross-thread.test.ts). */
import { describe, expect, it, vi } from "vitest";
import { anyOf, Doorbell, SAME_TURN_WAKES } from "../../src/rings/doorbell.js";
import { AdaptiveSpin, SpinLimiter } from "../../src/rings/spin.js";
import { InvalidOptionError } from "../../src/util/errors.js";

function flagWaitable() {
  let set = false;
  let polls = 0;
  let arms = 0;
  return {
    set: () => {
      set = true;
    },
    get polls() {
      return polls;
    },
    get arms() {
      return arms;
    },
    hasPending: () => {
      polls++;
      return set;
    },
    armAndCheck: () => {
      arms++;
      return set;
    },
  };
}

describe("doorbell", () => {
  it("does not sleep when work arrived between reading the sequence and the final check", () => {
    const bell = new Doorbell(Doorbell.create());
    // The peer publishes right as we arm: the final check sees it.
    const racing = { hasPending: () => false, armAndCheck: () => true };
    expect(bell.wait(racing, undefined, 1)).toBe("work");
  });

  it("wakes an async waiter without blocking its event loop", async () => {
    const bell = new Doorbell(Doorbell.create());
    const w = flagWaitable();
    const pending = bell.waitAsync(w);
    expect(pending).not.toBeNull();
    let ticked = false;
    setImmediate(() => {
      ticked = true;
      w.set();
      bell.ring();
    });
    expect(await pending).toBe("woken");
    expect(ticked).toBe(true);
    expect(w.arms).toBe(1);
  });

  it("wakes a waiter parked on the ringing thread itself without Atomics.notify, and needs none while it runs", async () => {
    // Frontend and backend on one thread: notify reaches an async waiter only through V8's task queue.
    const sab = Doorbell.create();
    const waiter = new Doorbell(sab);
    const ringer = new Doorbell(sab); // the other ring end's own Doorbell on the same word, same thread
    const w = flagWaitable();
    const notify = vi.spyOn(Atomics, "notify");
    try {
      const pending = waiter.waitAsync(w);
      expect(pending).not.toBeNull();
      w.set();
      ringer.ring();
      expect(await pending).toBe("woken");
      // The waiting thread is running now: a ring only bumps the word, its next park looks first.
      ringer.ring();
      expect(waiter.waitAsync(w)).toBeNull();
      expect(notify).not.toHaveBeenCalled();
    } finally {
      notify.mockRestore();
    }
  });

  it("wakes a waiter parked on the ringing thread in this turn's microtasks, not a turn later", async () => {
    await new Promise((resolve) => setImmediate(resolve)); // a fresh turn: its whole wake budget
    const sab = Doorbell.create();
    const waiter = new Doorbell(sab);
    const ringer = new Doorbell(sab);
    const w = flagWaitable();
    let turned = false;
    setImmediate(() => {
      turned = true;
    });
    const pending = waiter.waitAsync(w);
    expect(pending).not.toBeNull();
    ringer.ring();
    expect(await pending).toBe("woken");
    expect(turned).toBe(false); // the hop between two loops of one thread cost no turn of the event loop
  });

  it("wakes at most SAME_TURN_WAKES times a turn in microtasks, then at the next turn, so I/O keeps its place", async () => {
    await new Promise((resolve) => setImmediate(resolve));
    const sab = Doorbell.create();
    const waiter = new Doorbell(sab);
    const ringer = new Doorbell(sab);
    const w = flagWaitable();
    let turns = 0;
    const count = (): void => {
      turns++;
    };
    setImmediate(count);
    // Two loops waking each other for ever: each wake parks again and is rung at once.
    for (let i = 0; i < SAME_TURN_WAKES; i++) {
      const pending = waiter.waitAsync(w);
      ringer.ring();
      await pending;
    }
    expect(turns).toBe(0);
    const pending = waiter.waitAsync(w);
    ringer.ring();
    await pending;
    expect(turns).toBe(1); // the wake past the budget waited for the next turn
  });

  it("returns null from waitAsync when work is already there (no promise on the hot path)", () => {
    const bell = new Doorbell(Doorbell.create());
    const w = flagWaitable();
    w.set();
    expect(bell.waitAsync(w, new AdaptiveSpin())).toBeNull();
  });

  it("times out a blocking wait when nobody rings", () => {
    const bell = new Doorbell(Doorbell.create());
    expect(bell.wait(flagWaitable(), undefined, 5)).toBe("timed-out");
  });

  it("anyOf arms every ring before deciding", () => {
    const a = flagWaitable();
    const b = flagWaitable();
    b.set();
    expect(anyOf([a, b]).armAndCheck()).toBe(true);
    expect(a.arms).toBe(1);
    expect(b.arms).toBe(1);
  });

  it("validates its buffer offset", () => {
    expect(() => new Doorbell(Doorbell.create(), 2)).toThrow(InvalidOptionError);
    expect(() => new Doorbell(Doorbell.create(), 64)).toThrow(InvalidOptionError);
  });
});

describe("adaptive spin", () => {
  it("halves its budget on every fruitless spin and then parks at once, so an idle thread costs nothing", () => {
    const spin = new AdaptiveSpin({ maxSpinMicros: 8 });
    const w = flagWaitable();
    expect(spin.spin(w)).toBe(false);
    expect(spin.currentBudgetMicros).toBe(4);
    spin.spin(w);
    spin.spin(w);
    spin.spin(w); // 4 → 2 → 1 → below 1 µs: zero
    expect(spin.currentBudgetMicros).toBe(0);
    const before = w.polls;
    expect(spin.spin(w)).toBe(false);
    expect(w.polls - before).toBe(1); // one look, no spinning
    expect(spin.misses).toBe(4);
  });

  it("spins again after a sleep shorter than its maximum, and stays at the maximum while spins find work", () => {
    const spin = new AdaptiveSpin({ maxSpinMicros: 100 });
    const idle = flagWaitable();
    for (let i = 0; i < 10; i++) spin.spin(idle);
    expect(spin.currentBudgetMicros).toBe(0);
    spin.woke(50); // a 50 ms sleep: spinning would not have helped
    expect(spin.currentBudgetMicros).toBe(0);
    spin.woke(0.01); // woken after 10 µs: a spin would have caught it
    expect(spin.currentBudgetMicros).toBe(2);
    spin.sleptInVain();
    expect(spin.currentBudgetMicros).toBe(4);
    let calls = 0;
    const soon = { hasPending: () => ++calls > 10, armAndCheck: () => true };
    expect(spin.spin(soon)).toBe(true);
    expect(spin.currentBudgetMicros).toBe(100);
    expect(spin.hits).toBe(1);
  });

  it("never lets more threads spin than the limiter allows", () => {
    const limiter = new SpinLimiter(SpinLimiter.create(), 1);
    expect(limiter.tryEnter()).toBe(true);
    // Another spinner is active: this one goes straight to sleep instead of burning a core.
    const spin = new AdaptiveSpin({ maxSpinMicros: 200, limiter, probe: null });
    const w = flagWaitable();
    expect(spin.spin(w)).toBe(false);
    expect(w.polls).toBe(1); // the one cheap look before spinning, no spin loop
    limiter.leave();
    expect(limiter.spinning).toBe(0);
    spin.spin(w);
    expect(w.polls).toBeGreaterThan(100);
    expect(limiter.spinning).toBe(0);
  });

  it("validates its options", () => {
    expect(() => new AdaptiveSpin({ maxSpinMicros: -1 })).toThrow(/maxSpinMicros/);
    expect(() => new AdaptiveSpin({ maxSpinMicros: Number.NaN })).toThrow(/maxSpinMicros/);
  });
});
