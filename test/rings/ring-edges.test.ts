/**
 * Exact edges of the ring checks, and option validation. The model test
 * covers random sequences; these pin the boundaries one by one.
 */
import { describe, expect, it } from "vitest";
import { BackRing } from "../../src/rings/back-ring.js";
import { RingFault } from "../../src/rings/faults.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { IdPool } from "../../src/rings/id-pool.js";
import {
  createRingBuffer,
  kReqProd,
  kRspProd,
  type RingGeometry,
  ringByteLength,
} from "../../src/rings/layout.js";
import { InvalidOptionError } from "../../src/util/errors.js";

const G: RingGeometry = { slots: 256, slotSize: 16 };

function pair(initialIndex = 0) {
  const sab = createRingBuffer(G, { initialIndex });
  const ids = new IdPool(G.slots);
  return {
    sab,
    ids,
    front: new FrontRing(sab, G, { ids }),
    back: new BackRing(sab, G),
    h: new Int32Array(sab),
  };
}

describe("ring geometry", () => {
  it.each([
    [{ slots: 128, slotSize: 16 }, /power of two in \[256/],
    [{ slots: 300, slotSize: 16 }, /power of two/],
    [{ slots: 256, slotSize: 12 }, /multiple of 8/],
    [{ slots: 256, slotSize: 8192 }, /multiple of 8 in/],
    [{ slots: 1 << 17, slotSize: 16 }, /power of two/],
  ])("refuses %o with a message that names the option", (g, msg) => {
    expect(() => ringByteLength(g)).toThrow(InvalidOptionError);
    expect(() => ringByteLength(g)).toThrow(msg);
  });

  it("refuses a buffer whose size does not match the geometry", () => {
    const sab = createRingBuffer(G);
    expect(() => new BackRing(sab, { slots: 512, slotSize: 16 })).toThrow(/needs/);
  });
});

describe("backend checks of reqProd", () => {
  it("accepts reqProd exactly one ring ahead of its answered requests", () => {
    const { back, h } = pair();
    Atomics.store(h, kReqProd, G.slots);
    expect(back.unconsumedRequests()).toBe(G.slots);
    expect(back.fault).toBe(RingFault.NONE);
  });

  it("latches REQUEST_PROD_OVERFLOW for reqProd one past the free slots", () => {
    const { back, h } = pair();
    Atomics.store(h, kReqProd, G.slots + 1);
    expect(back.unconsumedRequests()).toBe(0);
    expect(back.fault).toBe(RingFault.REQUEST_PROD_OVERFLOW);
    expect(back.sharedFault()).toBe(RingFault.REQUEST_PROD_OVERFLOW);
    // Sticky: an honest value afterwards does not clear it.
    Atomics.store(h, kReqProd, 1);
    expect(back.takeRequest(new Uint8Array(G.slotSize))).toBe(false);
    expect(back.hasPending()).toBe(true); // so a parked owner wakes up and sees the fault
  });

  it("latches REQUEST_PROD_OVERFLOW when reqProd moves back behind requests already consumed", () => {
    const { back, h } = pair(2 ** 32 - 2);
    Atomics.store(h, kReqProd, 2); // four requests, across the wrap
    const copy = new Uint8Array(G.slotSize);
    for (let i = 0; i < 4; i++) expect(back.takeRequest(copy)).toBe(true);
    Atomics.store(h, kReqProd, 1);
    expect(back.takeRequest(copy)).toBe(false);
    expect(back.fault).toBe(RingFault.REQUEST_PROD_OVERFLOW);
  });

  it("never answers a request it has not consumed", () => {
    const { back } = pair();
    expect(() => back.responseSlot()).toThrow(/no consumed request/);
  });
});

describe("frontend checks of responses", () => {
  it("latches RESPONSE_PROD_OVERFLOW when rspProd passes the published requests", () => {
    const { front, h } = pair();
    Atomics.store(h, kRspProd, 1);
    expect(front.takeResponse(new Uint8Array(G.slotSize))).toBe(false);
    expect(front.fault).toBe(RingFault.RESPONSE_PROD_OVERFLOW);
    expect(front.requestSlot()).toBeNull(); // a faulted ring takes no new work
  });

  it("latches RESPONSE_ID_NOT_IN_FLIGHT for a response naming an id it never sent", () => {
    const { front, back, ids } = pair();
    const slot = front.requestSlot()!;
    slot.fill(0);
    slot[0] = ids.allocate();
    front.commitRequest();
    front.pushRequests();
    const copy = new Uint8Array(G.slotSize);
    expect(back.takeRequest(copy)).toBe(true);
    const rsp = back.responseSlot();
    rsp.fill(0);
    rsp[0] = 77; // not in flight
    back.commitResponse();
    back.pushResponses();
    expect(front.takeResponse(copy)).toBe(false);
    expect(front.fault).toBe(RingFault.RESPONSE_ID_NOT_IN_FLIGHT);
  });

  it("recovers after reset: the owner gets the lost ids back and the ring works again", () => {
    const { front, back, ids, h } = pair();
    for (let i = 0; i < 3; i++) {
      const slot = front.requestSlot()!;
      slot.fill(0);
      slot[0] = ids.allocate();
      front.commitRequest();
    }
    front.pushRequests();
    Atomics.store(h, kRspProd, 1000);
    expect(front.unconsumedResponses()).toBe(0);
    expect(front.fault).toBe(RingFault.RESPONSE_PROD_OVERFLOW);
    expect(front.reset().sort()).toEqual([0, 1, 2]);
    back.reset();
    expect(front.fault).toBe(RingFault.NONE);
    expect(front.sharedFault()).toBe(0);
    expect(front.generation).toBe(1);
    const slot = front.requestSlot()!;
    slot.fill(0);
    slot[0] = ids.allocate();
    front.commitRequest();
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(1);
  });
});

describe("notification suppression", () => {
  it("notifies only when the consumer armed its event index", () => {
    const { front, back, ids } = pair();
    const push = () => {
      const slot = front.requestSlot()!;
      slot.fill(0);
      slot[0] = ids.allocate();
      front.commitRequest();
      return front.pushRequests();
    };
    expect(push()).toBe(true); // initial event index is 1: the first request wakes
    expect(push()).toBe(false); // the backend has not looked yet: no second wake-up
    const copy = new Uint8Array(G.slotSize);
    while (back.takeRequest(copy)) {}
    expect(back.armAndCheck()).toBe(false); // nothing left: it may sleep
    expect(push()).toBe(true); // so the next request must wake it
  });
});

describe("partial copies and in-place takes", () => {
  it("takeResponse copies only responseBytes of a slot; the rest of the caller's buffer is untouched", () => {
    const sab = createRingBuffer(G);
    const ids = new IdPool(G.slots);
    const front = new FrontRing(sab, G, { ids, responseBytes: 8 });
    const back = new BackRing(sab, G);
    const id = ids.allocate();
    front.requestSlot()!.fill(0);
    new DataView(front.requestSlot()!.buffer, front.requestSlot()!.byteOffset).setUint32(0, id, true);
    front.commitRequest();
    front.pushRequests();
    expect(back.takeRequest(new Uint8Array(G.slotSize))).toBe(true);
    const rsp = back.responseSlot();
    rsp.fill(0xaa);
    new DataView(rsp.buffer, rsp.byteOffset).setUint32(0, id, true);
    back.commitResponse();
    back.pushResponses();
    const into = new Uint8Array(G.slotSize).fill(0x55);
    expect(front.takeResponse(into)).toBe(true);
    expect([...into.subarray(4, 8)]).toEqual([0xaa, 0xaa, 0xaa, 0xaa]);
    expect([...into.subarray(8)]).toEqual(new Array(G.slotSize - 8).fill(0x55));
  });

  it.each([0, 3, 17, 1.5])("refuses responseBytes %s", (bytes) => {
    expect(() => new FrontRing(createRingBuffer(G), G, { responseBytes: bytes })).toThrow(InvalidOptionError);
  });

  it("takeRequestInPlace hands out the shared slot itself, in order, then null", () => {
    const { front, back, ids } = pair();
    for (let i = 0; i < 3; i++) {
      const slot = front.requestSlot()!;
      slot.fill(0);
      slot[0] = ids.allocate();
      slot[4] = 10 + i;
      front.commitRequest();
    }
    front.pushRequests();
    for (let i = 0; i < 3; i++) {
      const slot = back.takeRequestInPlace()!;
      expect(slot.buffer).toBe(back.responseSlot().buffer); // shared memory, not a copy
      expect(slot[4]).toBe(10 + i);
    }
    expect(back.takeRequestInPlace()).toBeNull();
  });
});
