/**
 * A device on the backend's own thread (InlinePort): a device that throws
 * fails its port, once, after the backend's poll is over, and is not run again.
 */
import { describe, expect, it } from "vitest";
import { InlinePort } from "../../src/backend/inline-port.js";
import type { TransferDone, TransferRequest, UsbDevice } from "../../src/devices/device.js";
import { PortService } from "../../src/port/port-service.js";
import { PORT_RING_GEOMETRY, portSubmit, writePortSubmit } from "../../src/port/port-wire.js";
import { Doorbell } from "../../src/rings/doorbell.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { IdPool } from "../../src/rings/id-pool.js";
import { createRingBuffer } from "../../src/rings/layout.js";
import { OK } from "../../src/urb/status.js";
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
  it("fails its port once when the device throws, after the poll, and runs it no more", async () => {
    const ring = createRingBuffer(PORT_RING_GEOMETRY);
    const submits = { count: 0 };
    const service = new PortService({
      device: throwingDevice(submits),
      portRing: ring,
      portBell: Doorbell.create(),
      backendBell: Doorbell.create(),
      memory: [new SharedArrayBuffer(4096)],
    });
    const host = new InlinePort(1, throwingDevice(submits), service);
    const failures: string[] = [];
    host.watch({ gone: () => {}, failed: (reason) => failures.push(reason) });
    const ids = new IdPool(PORT_RING_GEOMETRY.slots);
    const front = new FrontRing(ring, PORT_RING_GEOMETRY, { ids });
    const submitOne = () => {
      writePortSubmit(
        front.requestSlot()!,
        ids.allocate(),
        portSubmit({ type: 3, endpoint: 1, directionIn: true }),
      );
      front.commitRequest();
      host.kick(front.pushRequests());
    };
    submitOne();
    expect(failures).toEqual([]); // not inside the backend's poll
    await Promise.resolve();
    expect(failures).toEqual(["device threw: boom"]);
    submitOne();
    await Promise.resolve();
    expect(submits.count).toBe(1);
    expect(failures).toHaveLength(1);
  });
});
