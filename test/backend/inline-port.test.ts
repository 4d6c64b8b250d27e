/**
 * A device on the backend's own thread (InlinePort): a device whose submit
 * throws answers that URB -EPROTO and its port stays up (the port service
 * catches it, as on a port worker); the throw is logged once.
 */
import { describe, expect, it } from "vitest";
import { InlinePort } from "../../src/backend/inline-port.js";
import type { TransferDone, TransferRequest, UsbDevice } from "../../src/devices/device.js";
import { PortService } from "../../src/port/port-service.js";
import {
  PORT_RESPONSE_SIZE,
  PORT_RING_GEOMETRY,
  portSubmit,
  writePortSubmit,
} from "../../src/port/port-wire.js";
import { Doorbell } from "../../src/rings/doorbell.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { IdPool } from "../../src/rings/id-pool.js";
import { createRingBuffer } from "../../src/rings/layout.js";
import { readS32, readU32 } from "../../src/urb/bytes.js";
import { EPROTO, OK } from "../../src/urb/status.js";
import { UsbSpeed } from "../../src/usb/index.js";

/** A device model with a bug: every submit throws. */
function throwingDevice(submits: { count: number }): UsbDevice {
  return {
    info: { speed: UsbSpeed.HIGH, deviceDescriptor: new Uint8Array(18), configurations: [], name: "broken" },
    open: async () => {},
    submit(_request: TransferRequest, _done: TransferDone): number {
      submits.count++;
      throw new Error("boom");
    },
    cancel() {},
    setConfiguration: async () => OK,
    setInterface: async () => OK,
    clearHalt: async () => OK,
    reset: async () => OK,
    close: async () => {},
  } as UsbDevice;
}

describe("InlinePort", () => {
  it("answers -EPROTO for every submit of a device that throws, logs it once, and keeps the port up", async () => {
    const ring = createRingBuffer(PORT_RING_GEOMETRY);
    const submits = { count: 0 };
    const device = throwingDevice(submits);
    const service = new PortService({
      device,
      portRing: ring,
      portBell: Doorbell.create(),
      backendBell: Doorbell.create(),
      memory: [new SharedArrayBuffer(4096)],
    });
    const host = new InlinePort(1, device, service);
    const failures: string[] = [];
    const logs: string[] = [];
    host.watch({ gone: () => {}, failed: (reason) => failures.push(reason), log: (line) => logs.push(line) });
    const ids = new IdPool(PORT_RING_GEOMETRY.slots);
    const front = new FrontRing(ring, PORT_RING_GEOMETRY, { ids, responseBytes: PORT_RESPONSE_SIZE });
    const slotCopy = new Uint8Array(PORT_RING_GEOMETRY.slotSize);
    const submitOne = (): number => {
      const id = ids.allocate();
      writePortSubmit(front.requestSlot()!, id, portSubmit({ type: 3, endpoint: 1, directionIn: true }));
      front.commitRequest();
      host.kick(front.pushRequests());
      return id;
    };
    const answers = (): [number, number][] => {
      host.collect();
      const out: [number, number][] = [];
      while (front.takeResponse(slotCopy)) out.push([readU32(slotCopy, 0), readS32(slotCopy, 4)]);
      return out;
    };
    const first = submitOne();
    const second = submitOne();
    await Promise.resolve();
    expect(answers()).toEqual([
      [first, EPROTO],
      [second, EPROTO],
    ]);
    expect(submits.count).toBe(2); // the port was not failed: the second submit reached the device
    expect(failures).toEqual([]);
    expect(logs).toEqual([expect.stringMatching(/^broken: submit threw \(Error: boom\); answered -EPROTO/)]);
    expect(service.stats.deviceThrows).toBe(2);
  });
});
