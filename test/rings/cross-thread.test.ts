/**
 * The ring between two real threads: a sequence payload through more than
 * 1000 wrap-arounds of the slot array, crossing the 2^32 index wrap, with
 * the frontend on this thread waiting through waitAsync and the backend
 * worker blocking in Atomics.wait. No loss, no duplicate, order kept.
 * And a doorbell waking a thread parked in Atomics.wait.
 */
import { once } from "node:events";
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { Doorbell } from "../../src/rings/doorbell.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { IdPool } from "../../src/rings/id-pool.js";
import { createRingBuffer, type RingGeometry } from "../../src/rings/layout.js";
import { AdaptiveSpin } from "../../src/rings/spin.js";
import { siblingModule, startWorker } from "../../src/util/start-worker.js";
import { eventually } from "../support/eventually.js";

describe("ring across threads", () => {
  it("carries 1000+ wrap-arounds of sequence numbers with no loss, duplicate or reordering", async () => {
    const geometry: RingGeometry = { slots: 256, slotSize: 16 };
    const wraps = 1100;
    const total = geometry.slots * wraps;
    const initialIndex = 2 ** 32 - 5000; // also crosses the u32 wrap
    const ring = createRingBuffer(geometry, { initialIndex });
    const backBell = Doorbell.create();
    const frontBell = Doorbell.create();
    const worker = startWorker(siblingModule(import.meta.url, "./echo-backend-worker"), {
      workerData: { ring, geometry, backBell, frontBell, total },
    });
    const done = once(worker, "message");
    let workerError: unknown;

    const ids = new IdPool(geometry.slots);
    const front = new FrontRing(ring, geometry, { ids });
    const peerBell = new Doorbell(backBell);
    const myBell = new Doorbell(frontBell);
    // A dead worker would leave us parked forever: record why and wake ourselves.
    worker.on("error", (err) => {
      workerError = err;
      myBell.ring();
    });
    const spin = new AdaptiveSpin();
    const copy = new Uint8Array(geometry.slotSize);
    const view = new DataView(copy.buffer);
    let sent = 0;
    let received = 0;
    let outOfOrder = 0;
    while (received < total) {
      if (workerError !== undefined) throw workerError;
      // Take answers first: they free the slots the next requests need.
      while (front.takeResponse(copy)) {
        const seq = view.getUint32(4, true);
        if (seq !== received || view.getUint32(8, true) !== (seq * 2) >>> 0) outOfOrder++;
        received++;
      }
      for (let slot = front.requestSlot(); slot !== null && sent < total; slot = front.requestSlot()) {
        const dv = new DataView(slot.buffer, slot.byteOffset, geometry.slotSize);
        dv.setUint32(0, ids.allocate(), true);
        dv.setUint32(4, sent++, true);
        front.commitRequest();
      }
      if (front.pushRequests()) peerBell.ring();
      expect(front.fault).toBe(0);
      if (received < total) {
        const wait = myBell.waitAsync(front, spin);
        if (wait) await wait;
      }
    }
    const [report] = (await done) as [{ received: number; errors: number; fault: number }];
    await worker.terminate();
    expect(report).toMatchObject({ received: total, errors: 0, fault: 0 });
    expect(outOfOrder).toBe(0);
    expect(received).toBe(total);
    expect(ids.inFlightCount).toBe(0);
  });
});

describe("doorbell across threads", () => {
  it("after a same-thread wake, a ring from another thread still wakes the next park", async () => {
    const sab = Doorbell.create();
    const bell = new Doorbell(sab);
    const w = { hasPending: () => false, armAndCheck: () => false };
    const first = bell.waitAsync(w)!;
    bell.ring(); // woken here: its Atomics.waitAsync stays registered and the next park reuses it
    expect(await first).toBe("woken");
    const second = bell.waitAsync(w);
    expect(second).not.toBeNull();
    // Another thread rings as any peer does: bump, then notify.
    const peer = new Worker(
      "const { workerData } = require('node:worker_threads'); const b = new Int32Array(workerData); Atomics.add(b, 0, 1); Atomics.notify(b, 0);",
      { eval: true, workerData: sab },
    );
    expect(await second).toBe("woken");
    await once(peer, "exit");
  });

  it("wakes a thread parked in Atomics.wait after its final check", async () => {
    const bell = Doorbell.create();
    const flag = new SharedArrayBuffer(8);
    const worker = startWorker(siblingModule(import.meta.url, "./bell-waiter-worker"), {
      workerData: { bell, flag },
    });
    const word = new Int32Array(flag);
    // Armed: the worker read the doorbell's sequence and made its final check; it sleeps from here, and
    // only a ring can end that sleep before its 10 s timeout. (Ringing earlier would test nothing.)
    await eventually(() => Atomics.load(word, 1) === 2, 10_000, "the worker to arm its doorbell wait");
    Atomics.store(word, 0, 1);
    new Doorbell(bell).ring();
    const [msg] = await once(worker, "message");
    await worker.terminate();
    expect(msg).toEqual({ outcome: "woken", flag: 1 });
  });
});
