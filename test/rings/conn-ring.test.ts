/** The conn ring: port events from backend to frontend, checked on arrival. */
import { describe, expect, it } from "vitest";
import { ConnBack, ConnFront, createConnRingBuffer } from "../../src/rings/conn-ring.js";
import { RingFault } from "../../src/rings/faults.js";
import { HEADER_BYTES } from "../../src/rings/layout.js";
import { UsbSpeed } from "../../src/usb/index.js";

describe("conn ring", () => {
  it("delivers connect and disconnect events in order and re-posts the ids", () => {
    const sab = createConnRingBuffer();
    const front = new ConnFront(sab, 8);
    const back = new ConnBack(sab);
    expect(front.postAll()).toBe(true);
    for (let round = 0; round < 3; round++) {
      expect(back.postEvent({ port: 3, speed: UsbSpeed.HIGH })).toBe(true);
      expect(back.postEvent({ port: 3, speed: UsbSpeed.NONE })).toBe(true);
      back.push();
      expect(front.takeEvent()).toEqual({ port: 3, speed: UsbSpeed.HIGH });
      expect(front.takeEvent()).toEqual({ port: 3, speed: UsbSpeed.NONE });
      expect(front.takeEvent()).toBeNull();
      front.postAll();
    }
    expect(front.ring.fault).toBe(RingFault.NONE);
  });

  it("tells the backend to queue an event when no request is posted", () => {
    const sab = createConnRingBuffer();
    const back = new ConnBack(sab);
    expect(back.postEvent({ port: 1, speed: UsbSpeed.FULL })).toBe(false);
  });

  it.each([
    ["a port past the root hub", 9, UsbSpeed.FULL],
    ["port 0", 0, UsbSpeed.FULL],
    ["an unknown speed", 2, 9],
  ])("latches a fault for an event naming %s", (_what, port, speed) => {
    const sab = createConnRingBuffer();
    const front = new ConnFront(sab, 8);
    const back = new ConnBack(sab);
    front.postAll();
    back.postEvent({ port: 1, speed: UsbSpeed.FULL });
    // A hostile backend rewrites the event in place before publishing.
    const slot = new Uint8Array(sab, HEADER_BYTES, 8);
    slot[4] = port;
    slot[5] = speed;
    back.push();
    expect(front.takeEvent()).toBeNull();
    expect(front.ring.fault).toBe(RingFault.PEER_PROTOCOL_VIOLATION);
  });
});
