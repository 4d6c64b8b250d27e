/**
 * The shared service loop (src/rings/service-loop.ts) on one thread, against a scripted target: its one
 * yield rule (a whole turn of the event loop every pollsPerYield busy polls), parking on the doorbell when
 * idle, stop(), a poll that throws, and the back-off of a stalled target. The frontend, the backend host and
 * the port service all run on it; test/frontend/service-loop.test.ts runs it under the real controller.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { Doorbell } from "../../src/rings/doorbell.js";
import { ServiceLoop, STALLED_BACKOFF_MS } from "../../src/rings/service-loop.js";
import { AdaptiveSpin } from "../../src/rings/spin.js";
import { eventually, tick } from "../support/eventually.js";

/** A target whose work is a counter: poll takes all of it (at most `batch` per poll). */
function queueTarget(batch = 1) {
  const target = {
    queued: 0,
    polls: 0,
    poll(): number {
      target.polls++;
      const n = Math.min(batch, target.queued);
      target.queued -= n;
      return n;
    },
    hasPending: () => target.queued > 0,
    armAndCheck: () => target.queued > 0,
  };
  return target;
}

function loopOf(
  target: ReturnType<typeof queueTarget>,
  extra: { pollsPerYield?: number; stalled?: () => boolean } = {},
) {
  const bell = new Doorbell(Doorbell.create());
  // No spinning and no contention probe: the loop parks as soon as it is idle.
  const spin = new AdaptiveSpin({ maxSpinMicros: 0, probe: null });
  return {
    bell,
    loop: new ServiceLoop({ poll: () => target.poll(), waitable: target, bell, spin, ...extra }),
  };
}

const started: ServiceLoop[] = [];
afterEach(async () => {
  for (const loop of started.splice(0)) await loop.stop().catch(() => undefined);
  vi.useRealTimers();
});

describe("service loop", () => {
  it("yields a whole turn of the event loop every pollsPerYield busy polls, while the work lasts", async () => {
    const target = queueTarget(1);
    target.queued = 200;
    const { loop } = loopOf(target, { pollsPerYield: 4 });
    // A setImmediate ticker records how many polls had run at each turn of the event loop.
    const seen: number[] = [];
    let ticking = true;
    const ticker = () => {
      seen.push(target.polls);
      if (ticking) setImmediate(ticker);
    };
    setImmediate(ticker);
    started.push(loop);
    void loop.start();
    await eventually(() => target.queued === 0, 5000, "the queue to drain");
    ticking = false;
    // The work took 200 busy polls; a loop that starves the event loop would run them all between two
    // turns. Here no two turns are more than one yield (4 polls) apart while the work lasts.
    const during = seen.filter((polls) => polls > 0 && polls < 200);
    expect(during.length).toBeGreaterThanOrEqual(200 / 4 - 2);
    for (let i = 1; i < seen.length; i++) {
      if (seen[i]! < 200) expect(seen[i]! - seen[i - 1]!).toBeLessThanOrEqual(4);
    }
  });

  it("parks when idle (no poll while nothing rings) and wakes on its doorbell", async () => {
    const target = queueTarget(8);
    const { bell, loop } = loopOf(target);
    started.push(loop);
    void loop.start();
    await tick(); // one fruitless poll, then it parks
    const idlePolls = target.polls;
    for (let i = 0; i < 50; i++) await tick();
    expect(target.polls).toBe(idlePolls);
    target.queued = 20;
    bell.ring();
    await eventually(() => target.queued === 0, 5000, "the loop to take the work");
    expect(target.polls).toBeGreaterThan(idlePolls);
  });

  it("stop() wakes a parked loop and resolves once it has returned", async () => {
    const target = queueTarget();
    const { loop } = loopOf(target);
    void loop.start();
    await tick();
    expect(loop.isRunning).toBe(true);
    await loop.stop();
    expect(loop.isRunning).toBe(false);
    const polls = target.polls;
    target.queued = 5;
    await tick();
    expect(target.polls).toBe(polls);
    await loop.stop(); // idempotent
  });

  it("ends with the error of a poll that throws", async () => {
    const target = queueTarget();
    target.poll = () => {
      throw new Error("ring fault");
    };
    const { loop } = loopOf(target);
    await expect(loop.start()).rejects.toThrow("ring fault");
    expect(loop.isRunning).toBe(false);
  });

  it("leaves a stalled target alone for STALLED_BACKOFF_MS, then looks again", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout"] });
    const target = queueTarget();
    let stalled = true;
    const { loop } = loopOf(target, { stalled: () => stalled });
    started.push(loop);
    void loop.start();
    await tick();
    const polls = target.polls;
    expect(polls).toBe(1);
    for (let i = 0; i < 20; i++) await tick();
    expect(target.polls).toBe(polls); // backing off, not polling
    stalled = false;
    vi.advanceTimersByTime(STALLED_BACKOFF_MS - 1);
    await tick();
    expect(target.polls).toBe(polls); // not before the back-off is over
    vi.advanceTimersByTime(1);
    await tick(); // the timer's promise settles; the loop polls in its continuation
    expect(target.polls).toBe(polls + 1);
  });
});
