/**
 * start()'s service loop: it parks in Atomics.waitAsync on the frontend
 * doorbell, so the thread's event loop keeps running while it idles and while
 * traffic flows; it completes URBs and notices faults without anyone calling
 * poll(); stop() ends it.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { BackendLossReason } from "../../src/frontend/types.js";
import { ESHUTDOWN, OK } from "../../src/urb/status.js";
import { port } from "../support/brands.js";
import { eventually, tick } from "../support/eventually.js";
import { bulk, type Rig, rig, seg } from "./support.js";

const running: Rig[] = [];

function started(options: Parameters<typeof rig>[1] = {}): Rig {
  const r = rig("normal", options);
  running.push(r);
  r.fake.run();
  r.hc.start();
  return r;
}

afterEach(async () => {
  for (const r of running.splice(0)) {
    await r.hc.stop();
    await r.fake.stop();
  }
});

describe("service loop", () => {
  it("parks while it idles: the event loop keeps turning and the controller stops polling", async () => {
    const r = started({ maxSpinMicros: 50 });
    let polls = 0;
    const poll = r.hc.poll.bind(r.hc);
    r.hc.poll = () => {
      polls++;
      return poll();
    };
    await tick(); // a fruitless spin, then it parks in waitAsync
    const before = polls;
    for (let i = 0; i < 100; i++) await tick(); // the event loop turns (a blocking wait would hang here)
    // Parked, not spinning between turns: nothing rang, so it has not looked once. (Counting setImmediate
    // callbacks in 30 ms, as this test once did, passed just as well for a loop that never parks.)
    expect(polls - before).toBe(0);
    await r.hc.stop();
    await r.hc.stop(); // idempotent
  });

  it("completes URBs on its own, with a backend driven by its doorbell", async () => {
    const r = started();
    await enumerateRunning(r);
    const results = await Promise.all(
      Array.from({ length: 400 }, (_, i) => r.hc.submit(bulk(1, 0, 1, false, [seg(i * 128, 128)]))),
    );
    expect(results.every((c) => c.status === OK && c.actualLength === 128)).toBe(true);
    expect(r.hc.stats()).toMatchObject({ completed: 401, pending: 0, inFlight: 0 });
  });

  it("keeps the event loop turning while traffic flows", async () => {
    // The backend answers inside each of the controller's polls (it also runs on its doorbell, to start
    // the traffic), so while URBs flow every poll finds work: only the controller's own yield (every
    // pollsPerYield busy polls) can let the event loop turn before the last URB completes. A setImmediate
    // ticker records how many URBs had completed at each turn: some turn must fall strictly between the
    // first completion and the last. (Counting ticks after the traffic, as this test once did, could not fail.)
    const r = started({ maxSpinMicros: 0, pollsPerYield: 4 });
    await enumerateRunning(r);
    const poll = r.hc.poll.bind(r.hc);
    r.hc.poll = () => {
      r.fake.step();
      return poll();
    };
    const total = 2000;
    let completed = 0;
    const seen: number[] = [];
    let ticking = true;
    const ticker = () => {
      seen.push(completed);
      if (ticking) setImmediate(ticker);
    };
    setImmediate(ticker);
    const work = Array.from({ length: total }, (_, i) =>
      r.hc.submit(bulk(1, 0, 2, false, [seg((i % 500) * 64, 64)])).then((c) => {
        completed++;
        return c;
      }),
    );
    const results = await Promise.all(work);
    ticking = false;
    expect(results.every((c) => c.status === OK)).toBe(true);
    expect(seen.filter((n) => n > 0 && n < total).length).toBeGreaterThan(0);
  });

  it("notices a protocol fault by itself and reports it", async () => {
    const r = started();
    await enumerateRunning(r);
    const fault = new Promise<BackendLossReason>((resolve) => r.hc.on("fault", resolve));
    r.fake.mode = "bogus-id";
    const done = r.hc.submit(bulk(1, 0, 1, false, [seg(0, 8)]));
    expect((await fault).cause).toBe("ring-fault");
    expect((await done).status).toBe(ESHUTDOWN);
  });
});

/** Plug and reset port 1 while both loops run: the reset waits for the controller to see the device. */
async function enumerateRunning(r: Rig): Promise<void> {
  r.fake.plug(1);
  await eventually(() => r.hc.portStatus(port(1)).connected, 5000, "port 1 to connect");
  await r.hc.resetPort(1);
}
