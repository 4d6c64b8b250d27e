/**
 * Bulk streams in the emulated device base: allocStreams up to what the endpoint companion offers
 * (USB 3.2 §9.6.7), stream ids checked against the allocation, and every endpoint change dropping them.
 * The device under test is a minimal class on the real base: one SuperSpeed bulk IN endpoint with 16
 * streams, whose transfers wait until the test ends them (so freeing the streams can end them).
 */
import { afterEach, describe, expect, it } from "vitest";
import type { DescriptorSpec } from "../../src/devices/emulated/descriptors.js";
import { EmulatedDevice } from "../../src/devices/emulated/emulated-device.js";
import type { PendingTransfer } from "../../src/devices/emulated/pending-transfer.js";
import { EINVAL, ESHUTDOWN, OK } from "../../src/urb/status.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { request, submit } from "./support.js";
import { oneVendorInterface } from "./vendor-interface.js";

const STREAMS_IN = 0x81;
const PLAIN_OUT = 0x02;

const spec: DescriptorSpec = {
  deviceClass: 0,
  deviceSubClass: 0,
  deviceProtocol: 0,
  vendorId: 0x1209,
  productId: 0x0001,
  bcdDevice: 0x0100,
  dualSpeed: true,
  superSpeed: true,
  configurations: oneVendorInterface([
    { address: STREAMS_IN, type: "bulk", maxStreams: 16 },
    { address: PLAIN_OUT, type: "bulk" },
  ]),
};

/** Holds every transfer it is given; the stream id it saw is on the transfer's request. */
class StreamsDevice extends EmulatedDevice {
  readonly held: PendingTransfer[] = [];
  constructor(speed: UsbSpeed) {
    super(spec, { speed, name: "streams test device" });
  }
  protected override handleTransfer(t: PendingTransfer): void {
    this.held.push(t);
  }
}

let device: StreamsDevice | null = null;
afterEach(async () => {
  await device?.close();
  device = null;
});

const bulkIn = (d: StreamsDevice, streamId: number) =>
  submit(d, request("bulk", 1, true, new Uint8Array(64), { streamId }));

describe("emulated device base: bulk streams", () => {
  it("allocates up to the companion's MaxStreams on an active bulk endpoint, and refuses the rest", async () => {
    device = new StreamsDevice(UsbSpeed.SUPER);
    expect(await device.allocStreams(STREAMS_IN, 4)).toBe(EINVAL); // not configured: no active endpoint
    expect(await device.setConfiguration(1)).toBe(OK);
    expect(await device.allocStreams(STREAMS_IN, 17)).toBe(EINVAL);
    expect(await device.allocStreams(PLAIN_OUT, 1)).toBe(EINVAL);
    expect(await device.allocStreams(STREAMS_IN, 0)).toBe(EINVAL);
    expect(await device.allocStreams(STREAMS_IN, 16)).toBe(OK);
  });

  it("passes ids 1..n to the device class and fails a larger id or a stream on a plain endpoint with -EINVAL", async () => {
    device = new StreamsDevice(UsbSpeed.SUPER);
    await device.setConfiguration(1);
    expect(await device.allocStreams(STREAMS_IN, 8)).toBe(OK);
    bulkIn(device, 8);
    expect(device.held.map((t) => t.request.streamId)).toEqual([8]);
    expect((await bulkIn(device, 9).result).status).toBe(EINVAL);
    const out = submit(device, request("bulk", 2, false, new Uint8Array(8), { streamId: 1 }));
    expect((await out.result).status).toBe(EINVAL);
  });

  it("free_streams ends the transfers queued on streams, and the ids are refused afterwards", async () => {
    device = new StreamsDevice(UsbSpeed.SUPER);
    await device.setConfiguration(1);
    await device.allocStreams(STREAMS_IN, 4);
    const queued = bulkIn(device, 2);
    expect(await device.freeStreams(STREAMS_IN)).toBe(OK);
    expect((await queued.result).status).toBe(ESHUTDOWN);
    expect(await device.freeStreams(STREAMS_IN)).toBe(EINVAL); // nothing left to free
    expect((await bulkIn(device, 2).result).status).toBe(EINVAL);
  });

  it("set_interface, set_configuration and reset drop the allocation", async () => {
    device = new StreamsDevice(UsbSpeed.SUPER);
    for (const change of [
      (d: StreamsDevice) => d.setInterface(0, 0),
      (d: StreamsDevice) => d.setConfiguration(1),
      async (d: StreamsDevice) => {
        await d.reset();
        return d.setConfiguration(1);
      },
    ]) {
      await device.setConfiguration(1);
      expect(await device.allocStreams(STREAMS_IN, 4)).toBe(OK);
      expect(await change(device)).toBe(OK);
      expect((await bulkIn(device, 1).result).status).toBe(EINVAL);
    }
  });

  it("below SuperSpeed the endpoint has no streams to give", async () => {
    device = new StreamsDevice(UsbSpeed.HIGH);
    await device.setConfiguration(1);
    expect(await device.allocStreams(STREAMS_IN, 2)).toBe(EINVAL);
  });
});
