/**
 * The gate copies an iso URB's frame descriptors out of guest memory: a guest
 * that rewrites the descriptor array after submitting changes nothing the
 * port service hands the device (the port service never re-reads it).
 */
import { describe, expect, it } from "vitest";
import { UsbBackend } from "../../src/backend/backend.js";
import { type PortHost, PortLink } from "../../src/backend/port-link.js";
import { createControllerHandles, URB_RING_GEOMETRY } from "../../src/connection/handles.js";
import type { TransferDone, TransferRequest, UsbDevice } from "../../src/devices/device.js";
import { GrantTableOwner } from "../../src/dma-map/grant-table.js";
import { GuestMemory } from "../../src/dma-map/guest-memory.js";
import type { DomId, GuestFrame } from "../../src/dma-map/types.js";
import { PortService } from "../../src/port/port-service.js";
import { createPortIsoTable, PORT_RING_GEOMETRY } from "../../src/port/port-wire.js";
import { Doorbell } from "../../src/rings/doorbell.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { IdPool } from "../../src/rings/id-pool.js";
import { createRingBuffer } from "../../src/rings/layout.js";
import { encodeRequest } from "../../src/urb/codec.js";
import { readIsoPacketResult, writeIsoPacket } from "../../src/urb/iso.js";
import { EXDEV, OK } from "../../src/urb/status.js";
import { type DevAddr, Direction, type EndpointNum, type PortNum, type UrbId } from "../../src/urb/types.js";
import { UsbSpeed } from "../../src/usb/index.js";

/** A device that keeps every request it is given, so the test completes them. */
function recordingDevice(seen: { request: TransferRequest; done: TransferDone }[]): UsbDevice {
  return {
    info: { speed: UsbSpeed.HIGH, deviceDescriptor: new Uint8Array(18), configurations: [], name: "iso" },
    open: async () => {},
    submit(request: TransferRequest, done: TransferDone): number {
      seen.push({ request, done });
      return seen.length;
    },
    cancel() {},
    setConfiguration: async () => OK,
    setInterface: async () => OK,
    clearHalt: async () => OK,
    reset: async () => OK,
    close: async () => {},
  } as UsbDevice;
}

/** A port host that runs nothing by itself: the test drains the port service when it chooses. */
const manualHost = {
  placement: "backend",
  kick() {},
  collect() {},
  watch() {},
} as unknown as PortHost;

describe("the backend's gate and iso descriptors", () => {
  it("hands the device the packets the guest described at submit, not a later rewrite", () => {
    const handles = createControllerHandles({ ports: 2, memory: 64, scratchFrames: 8 });
    const backend = new UsbBackend(handles);
    const memory = new GuestMemory({ regions: handles.memory });
    const grants = new GrantTableOwner({ storage: handles.grantTable, memory });
    const domid = handles.backendDomid as DomId;
    const ring = createRingBuffer(PORT_RING_GEOMETRY);
    const isoTable = createPortIsoTable();
    const seen: { request: TransferRequest; done: TransferDone }[] = [];
    const service = new PortService({
      device: recordingDevice(seen),
      portRing: ring,
      isoTable,
      portBell: Doorbell.create(),
      backendBell: handles.backendBell,
      memory: handles.memory,
    });
    const summary = {
      name: "iso",
      speed: UsbSpeed.HIGH,
      deviceDescriptor: new Uint8Array(18),
      placement: "backend" as const,
    };
    backend.attachLink(new PortLink(1, summary, ring, manualHost, isoTable));

    const data = grants.grant(domid, 10 as GuestFrame, 1, false);
    const descriptors = grants.grant(domid, 11 as GuestFrame, 1, false);
    const array = memory.frameView(11 as GuestFrame).subarray(0, 2 * 16);
    writeIsoPacket(array, 0, { offset: 0, length: 100 });
    writeIsoPacket(array, 1, { offset: 100, length: 200 });

    const ids = new IdPool(URB_RING_GEOMETRY.slots);
    const front = new FrontRing(handles.urbRing, URB_RING_GEOMETRY, { ids });
    const slot = front.requestSlot()!;
    encodeRequest(
      {
        kind: "isochronous",
        id: ids.allocate() as UrbId,
        port: 1 as PortNum,
        device: 0 as DevAddr,
        endpoint: 1 as EndpointNum,
        direction: Direction.In,
        bufferLength: 300,
        buffer: { kind: "inline", segments: [{ ref: data, offset: 0, length: 300 }] },
        shortNotOk: false,
        isoAsap: true,
        interval: 1,
        numberOfPackets: 2,
        startFrame: 0,
        frameDescriptors: { ref: descriptors, offset: 0 },
      },
      slot,
    );
    front.commitRequest();
    front.pushRequests();
    backend.poll(); // the gate checks the descriptors and forwards the URB to the port ring

    // The guest rewrites its descriptor array while the URB is in flight (still inside the buffer).
    writeIsoPacket(array, 0, { offset: 250, length: 50 });
    writeIsoPacket(array, 1, { offset: 0, length: 10 });
    service.drain();

    expect(seen).toHaveLength(1);
    expect(seen[0]!.request.isoPackets).toEqual([
      { offset: 0, length: 100 },
      { offset: 100, length: 200 },
    ]);
    // Results are still written back into the guest's array.
    seen[0]!.done({
      status: OK,
      actualLength: 300,
      isoPackets: [
        { status: OK, actualLength: 100 },
        { status: EXDEV, actualLength: 0 },
      ],
      errorCount: 1,
    });
    expect(readIsoPacketResult(array, 0)).toEqual({ status: OK, actualLength: 100 });
    expect(readIsoPacketResult(array, 1)).toEqual({ status: EXDEV, actualLength: 0 });
  });
});
