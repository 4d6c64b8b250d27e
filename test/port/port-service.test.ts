/**
 * The port service's transfer state machine, driven directly on one thread: the test is the backend (it
 * writes port-ring requests with the port-wire writers and reads the answers with a FrontRing) and the
 * device is a fake that holds every transfer until the test calls its done. drain() and publish() are the
 * seams the inline placement (src/backend/inline-port.ts) already uses, so no worker and no doorbell wait.
 *
 * Covers what crosvm's xhci_transfer.rs tests cover for its state machine: cancel racing done (either
 * order), a device calling done twice (also after its id was reused), ids the backend's pool never hands
 * out, and scattered (multi-segment) IN and OUT buffers — bounced in order, bounded by the actual length.
 */
import { describe, expect, it } from "vitest";
import type { TransferDone, TransferRequest, TransferResult, UsbDevice } from "../../src/devices/device.js";
import { PortService } from "../../src/port/port-service.js";
import {
  PORT_RESPONSE_SIZE,
  PORT_RING_GEOMETRY,
  PortOp,
  portSubmit,
  writePortCancel,
  writePortSubmit,
} from "../../src/port/port-wire.js";
import { Doorbell } from "../../src/rings/doorbell.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { createRingBuffer } from "../../src/rings/layout.js";
import { readS32, readU32 } from "../../src/urb/bytes.js";
import { ECONNRESET, EINVAL, ENOENT, EPROTO, OK, type UrbStatus } from "../../src/urb/status.js";
import { allocStreamsSetup, freeStreamsSetup, type SetupPacket, UsbSpeed } from "../../src/usb/index.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";

const BULK = 3;
const REGION_BYTES = 16 * 1024;

interface Held {
  readonly request: TransferRequest;
  readonly done: TransferDone;
  readonly handle: number;
}

/** A device that completes nothing by itself: the test calls each transfer's done. */
class HoldingDevice implements UsbDevice {
  readonly info = {
    speed: UsbSpeed.HIGH,
    deviceDescriptor: new Uint8Array(18),
    configurations: [],
    name: "holding",
  };
  readonly held: Held[] = [];
  readonly cancels: number[] = [];
  private nextHandle = 100;
  /** Set: submit throws it (a device model with a bug, a native binding refusing an argument). */
  throwOnSubmit: unknown = null;
  async open(): Promise<void> {}
  submit(request: TransferRequest, done: TransferDone): number {
    if (this.throwOnSubmit !== null) throw this.throwOnSubmit;
    const handle = this.nextHandle++;
    this.held.push({ request, done, handle });
    return handle;
  }
  cancel(handle: number): void {
    this.cancels.push(handle);
  }
  setConfiguration = async () => OK;
  setInterface = async () => OK;
  clearHalt = async () => OK;
  reset = async () => OK;
  allocStreams?: (address: number, streams: number) => Promise<UrbStatus>;
  freeStreams?: (address: number) => Promise<UrbStatus>;
  async close(): Promise<void> {}
}

interface Answer {
  readonly id: number;
  readonly status: number;
  readonly actualLength: number;
}

/** [region, offset, length] */
type Seg = readonly [number, number, number];

function harness() {
  const ring = createRingBuffer(PORT_RING_GEOMETRY);
  const memory = [new SharedArrayBuffer(REGION_BYTES), new SharedArrayBuffer(REGION_BYTES)];
  const device = new HoldingDevice();
  const service = new PortService({
    device,
    portRing: ring,
    portBell: Doorbell.create(),
    backendBell: Doorbell.create(),
    memory,
  });
  // No id pool on this end: the test sends ids the real backend's pool never would.
  const front = new FrontRing(ring, PORT_RING_GEOMETRY, { responseBytes: PORT_RESPONSE_SIZE });
  const slotCopy = new Uint8Array(PORT_RING_GEOMETRY.slotSize);
  const send = (write: (slot: Uint8Array) => void) => {
    const slot = front.requestSlot();
    if (slot === null) throw new Error("port ring full");
    write(slot);
    front.commitRequest();
    front.pushRequests();
    service.drain();
  };
  return {
    device,
    service,
    bytes: (region: number) => new Uint8Array(memory[region]!),
    submit(id: number, directionIn: boolean, segs: readonly Seg[] = [[0, 0, 64]]) {
      const length = segs.reduce((n, s) => n + s[2], 0);
      send((slot) => {
        const segments = Uint32Array.from(segs.flat());
        writePortSubmit(
          slot,
          id,
          portSubmit({
            type: BULK,
            endpoint: 1,
            directionIn,
            bufferLength: length,
            segments,
            segmentCount: segs.length,
          }),
        );
      });
    },
    cancel(id: number, target: number) {
      send((slot) => writePortCancel(slot, id, target));
    },
    raw(write: (slot: Uint8Array) => void) {
      send(write);
    },
    /** Publish what the device completed and take every answer. */
    answers(): Answer[] {
      service.publish();
      const out: Answer[] = [];
      while (front.takeResponse(slotCopy)) {
        out.push({
          id: readU32(slotCopy, 0),
          status: readS32(slotCopy, 4),
          actualLength: readU32(slotCopy, 8),
        });
      }
      expect(front.fault).toBe(0);
      return out;
    },
  };
}

const done = (h: Held, result: TransferResult) => h.done(result);

describe("port service: cancel and done", () => {
  it("cancel before done: the device is asked once, the cancel answers OK, the transfer answers once with the device's status", () => {
    const h = harness();
    h.submit(7, true);
    expect(h.device.held).toHaveLength(1);
    h.cancel(300, 7);
    expect(h.device.cancels).toEqual([h.device.held[0]!.handle]);
    expect(h.answers()).toEqual([{ id: 300, status: OK, actualLength: 0 }]);
    expect(h.service.inFlight).toBe(1); // cancelling is not completed: only done completes
    done(h.device.held[0]!, { status: ECONNRESET, actualLength: 0 });
    expect(h.answers()).toEqual([{ id: 7, status: ECONNRESET, actualLength: 0 }]);
    expect(h.service.inFlight).toBe(0);
    expect(h.service.stats).toMatchObject({ submitted: 1, completed: 1, cancelled: 1, errors: 0 });
  });

  it("a second cancel of the same transfer is ENOENT and does not reach the device again", () => {
    const h = harness();
    h.submit(7, true);
    h.cancel(300, 7);
    h.cancel(301, 7);
    expect(h.device.cancels).toHaveLength(1);
    expect(h.answers()).toEqual([
      { id: 300, status: OK, actualLength: 0 },
      { id: 301, status: ENOENT, actualLength: 0 },
    ]);
    expect(h.service.stats.cancelled).toBe(1);
  });

  it("done before cancel: the transfer answers with its data and the late cancel is ENOENT, the device never asked", () => {
    const h = harness();
    h.submit(9, true);
    done(h.device.held[0]!, { status: OK, actualLength: 64 });
    h.cancel(300, 9);
    expect(h.device.cancels).toEqual([]);
    expect(h.answers()).toEqual([
      { id: 9, status: OK, actualLength: 64 }, // written to the ring at done, published with the cancel's answer
      { id: 300, status: ENOENT, actualLength: 0 },
    ]);
    expect(h.service.stats).toMatchObject({ completed: 1, cancelled: 0 });
  });

  it("a device that finishes a cancelled transfer anyway (the race lost) answers OK with its length, once", () => {
    const h = harness();
    h.submit(4, false);
    h.cancel(300, 4);
    done(h.device.held[0]!, { status: OK, actualLength: 64 });
    done(h.device.held[0]!, { status: ECONNRESET, actualLength: 0 });
    expect(h.answers()).toEqual([
      { id: 300, status: OK, actualLength: 0 },
      { id: 4, status: OK, actualLength: 64 },
    ]);
    expect(h.service.stats).toMatchObject({ bytesOut: 64, completed: 1 });
  });

  it("cancel of an id not in flight, or beyond the pool, is ENOENT", () => {
    const h = harness();
    h.cancel(300, 5);
    h.cancel(301, PORT_RING_GEOMETRY.slots);
    h.cancel(302, 0xffff_ffff);
    expect(h.answers().map((a) => a.status)).toEqual([ENOENT, ENOENT, ENOENT]);
    expect(h.device.cancels).toEqual([]);
  });
});

describe("port service: done twice", () => {
  it("the first done stands; the second neither answers nor counts", () => {
    const h = harness();
    h.submit(3, true);
    const held = h.device.held[0]!;
    done(held, { status: OK, actualLength: 10 });
    done(held, { status: EINVAL, actualLength: 0 });
    expect(h.answers()).toEqual([{ id: 3, status: OK, actualLength: 10 }]);
    expect(h.service.stats).toMatchObject({ completed: 1, errors: 0, bytesIn: 10 });
    expect(h.service.inFlight).toBe(0);
  });

  it("a stale done after the id was reused cannot answer (or untrack) the new transfer", () => {
    const h = harness();
    h.submit(3, true);
    const first = h.device.held[0]!;
    done(first, { status: OK, actualLength: 1 });
    expect(h.answers()).toHaveLength(1);
    h.submit(3, true); // the backend reuses the id
    done(first, { status: OK, actualLength: 2 });
    expect(h.answers()).toEqual([]);
    expect(h.service.inFlight).toBe(1);
    h.cancel(300, 3); // the new transfer is still cancellable
    expect(h.device.cancels).toEqual([h.device.held[1]!.handle]);
    done(h.device.held[1]!, { status: ECONNRESET, actualLength: 0 });
    expect(h.answers()).toEqual([
      { id: 300, status: OK, actualLength: 0 },
      { id: 3, status: ECONNRESET, actualLength: 0 },
    ]);
    expect(h.service.inFlight).toBe(0);
  });

  it("a length the device overstates on a bounced IN is clamped to the buffer, and copies no further", () => {
    // (A single-view transfer passes the device's length through; the backend clamps it to the URB.)
    const h = harness();
    h.bytes(1).fill(0xee);
    h.submit(2, true, [
      [0, 0, 16],
      [1, 0, 16],
    ]);
    done(h.device.held[0]!, { status: OK, actualLength: 4096 });
    expect(h.answers().map((a) => a.actualLength)).toEqual([32]);
    expect(h.bytes(1)[16]).toBe(0xee);
  });
});

describe("port service: a device call that throws", () => {
  it("answers that transfer -EPROTO, logs the first throw once, and the port goes on serving", () => {
    const h = harness();
    const lines: string[] = [];
    h.service.onLog((line) => lines.push(line));
    // What Buffer.writeUInt16LE throws for a value above 0xffff (a control buffer longer than wLength can be).
    h.device.throwOnSubmit = new RangeError('The value of "value" is out of range.');
    h.submit(1, true);
    h.submit(2, false);
    expect(h.answers()).toEqual([
      { id: 1, status: EPROTO, actualLength: 0 },
      { id: 2, status: EPROTO, actualLength: 0 },
    ]);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /holding: submit threw \(RangeError: The value of "value" is out of range\.\); answered -EPROTO/,
    );
    h.device.throwOnSubmit = null;
    h.submit(3, true);
    done(h.device.held[0]!, { status: OK, actualLength: 64 });
    expect(h.answers()).toEqual([{ id: 3, status: OK, actualLength: 64 }]);
    expect(h.service.inFlight).toBe(0);
    expect(h.service.stats).toMatchObject({ submitted: 3, completed: 3, deviceThrows: 2, errors: 2 });
  });

  it("an intercepted request (SET_CONFIGURATION) whose device call throws synchronously is answered -EPROTO", async () => {
    const h = harness();
    const lines: string[] = [];
    h.service.onLog((line) => lines.push(line));
    h.device.setConfiguration = () => {
      throw new TypeError("not a configuration");
    };
    h.raw((slot) =>
      writePortSubmit(
        slot,
        5,
        portSubmit({
          type: 2,
          endpoint: 0,
          directionIn: false,
          setup: { bmRequestType: 0, bRequest: 9, wValue: 1, wIndex: 0, wLength: 0 },
        }),
      ),
    );
    await eventually(() => h.service.inFlight === 0, 2000, "the intercepted request answered");
    expect(h.answers()).toEqual([{ id: 5, status: EPROTO, actualLength: 0 }]);
    expect(lines).toEqual([
      expect.stringMatching(/set-configuration threw \(TypeError: not a configuration\)/),
    ]);
  });
});

describe("port service: bulk streams", () => {
  /** A control request the port intercepts (no data stage). */
  const intercepted = (h: ReturnType<typeof harness>, id: number, setup: SetupPacket) =>
    h.raw((slot) =>
      writePortSubmit(slot, id, portSubmit({ type: 2, endpoint: 0, directionIn: false, setup })),
    );
  const streamIn = (h: ReturnType<typeof harness>, id: number, streamId: number) =>
    h.raw((slot) =>
      writePortSubmit(
        slot,
        id,
        portSubmit({
          type: BULK,
          endpoint: 1,
          directionIn: true,
          bufferLength: 64,
          segments: Uint32Array.of(0, 0, 64),
          segmentCount: 1,
          streamId,
        }),
      ),
    );
  const settled = (h: ReturnType<typeof harness>) =>
    eventually(() => h.service.inFlight === h.device.held.length, 2000, "the port answered");

  it("ALLOC_STREAMS goes to the device; ids 1..n reach it, n+1 and unallocated endpoints are -EINVAL at the port", async () => {
    const h = harness();
    const asked: [number, number][] = [];
    h.device.allocStreams = async (address, streams) => {
      asked.push([address, streams]);
      return OK;
    };
    intercepted(h, 1, allocStreamsSetup(0x81, 4));
    await settled(h);
    expect(asked).toEqual([[0x81, 4]]);
    streamIn(h, 2, 1);
    streamIn(h, 3, 4);
    streamIn(h, 4, 5);
    expect(h.device.held.map((t) => t.request.streamId)).toEqual([1, 4]);
    expect(h.answers()).toEqual([
      { id: 1, status: OK, actualLength: 0 },
      { id: 4, status: EINVAL, actualLength: 0 },
    ]);
    // FREE_STREAMS: the same id is refused afterwards, and the device heard of it.
    let freed = 0;
    h.device.freeStreams = async () => {
      freed++;
      return OK;
    };
    intercepted(h, 5, freeStreamsSetup(0x81));
    await settled(h);
    streamIn(h, 6, 1);
    expect(freed).toBe(1);
    expect(h.answers()).toEqual([
      { id: 5, status: OK, actualLength: 0 },
      { id: 6, status: EINVAL, actualLength: 0 },
    ]);
  });

  it("a configuration change drops the streams, as the xHCI drops its endpoint contexts", async () => {
    const h = harness();
    h.device.allocStreams = async () => OK;
    intercepted(h, 1, allocStreamsSetup(0x81, 8));
    await settled(h);
    intercepted(h, 2, { bmRequestType: 0, bRequest: 9, wValue: 1, wIndex: 0, wLength: 0 });
    await settled(h);
    streamIn(h, 3, 1);
    expect(h.device.held).toHaveLength(0);
    expect(h.answers().at(-1)).toEqual({ id: 3, status: EINVAL, actualLength: 0 });
  });

  it("the device's refusal is passed on and nothing is allocated", async () => {
    const h = harness();
    h.device.allocStreams = async () => EINVAL;
    intercepted(h, 1, allocStreamsSetup(0x81, 2));
    await settled(h);
    streamIn(h, 2, 1);
    expect(h.answers()).toEqual([
      { id: 1, status: EINVAL, actualLength: 0 },
      { id: 2, status: EINVAL, actualLength: 0 },
    ]);
  });

  it("a device without streams (a host device) answers -EINVAL with one log line, however often it is asked", async () => {
    const h = harness();
    const lines: string[] = [];
    h.service.onLog((line) => lines.push(line));
    intercepted(h, 1, allocStreamsSetup(0x81, 2));
    intercepted(h, 2, allocStreamsSetup(0x02, 2));
    await settled(h);
    expect(h.answers()).toEqual([
      { id: 1, status: EINVAL, actualLength: 0 },
      { id: 2, status: EINVAL, actualLength: 0 },
    ]);
    expect(lines).toEqual([expect.stringMatching(/holding: bulk streams are not supported/)]);
  });
});

describe("port service: ids and ops it refuses", () => {
  it("a submit with an id the pool never hands out is EINVAL, never reaches the device and is not tracked", () => {
    const h = harness();
    for (const id of [PORT_RING_GEOMETRY.slots, PORT_RING_GEOMETRY.slots + 1, 0xffff_ffff])
      h.submit(id, true);
    expect(h.answers()).toEqual([
      { id: PORT_RING_GEOMETRY.slots, status: EINVAL, actualLength: 0 },
      { id: PORT_RING_GEOMETRY.slots + 1, status: EINVAL, actualLength: 0 },
      { id: 0xffff_ffff, status: EINVAL, actualLength: 0 },
    ]);
    expect(h.device.held).toEqual([]);
    expect(h.service.inFlight).toBe(0);
    expect(h.service.stats.errors).toBe(3);
    h.submit(PORT_RING_GEOMETRY.slots - 1, true); // the highest valid id still works
    expect(h.device.held).toHaveLength(1);
  });

  it("an unknown op is answered EINVAL", () => {
    const h = harness();
    h.raw((slot) => {
      writePortCancel(slot, 12, 0);
      slot[4] = PortOp.CANCEL + 1;
    });
    expect(h.answers()).toEqual([{ id: 12, status: EINVAL, actualLength: 0 }]);
    expect(h.device.held).toEqual([]);
  });
});

describe("port service: scattered buffers", () => {
  // Three pieces in two regions, out of address order: the device must see one buffer in segment order.
  const scattered: Seg[] = [
    [1, 100, 30],
    [0, 4000, 500],
    [1, 7, 3],
  ];
  const total = 533;

  it("OUT: the device gets the segments' bytes concatenated in order (bounced and counted)", () => {
    const h = harness();
    const data = pattern(total, 5);
    let at = 0;
    for (const [region, offset, len] of scattered) {
      h.bytes(region).set(data.subarray(at, at + len), offset);
      at += len;
    }
    h.submit(1, false, scattered);
    const req = h.device.held[0]!.request;
    expect(req.buffer.length).toBe(total);
    expect(Buffer.compare(req.buffer, data)).toBe(0);
    expect(h.service.stats).toMatchObject({ bounceCopies: 1, bounceBytes: total });
  });

  it("IN: the device's bytes land in the segments in order, only up to the actual length; the rest is untouched", () => {
    const h = harness();
    for (const r of [0, 1]) h.bytes(r).fill(0xee);
    h.submit(1, true, scattered);
    const req = h.device.held[0]!.request;
    const data = pattern(total, 9);
    req.buffer.set(data);
    const actual = 40; // a short IN: the first segment (30) and 10 bytes of the second
    expect(h.bytes(1)[100]).toBe(0xee); // nothing reaches guest memory before done
    done(h.device.held[0]!, { status: OK, actualLength: actual });
    expect(h.answers()).toEqual([{ id: 1, status: OK, actualLength: actual }]);
    expect(Buffer.compare(h.bytes(1).subarray(100, 130), data.subarray(0, 30))).toBe(0);
    expect(Buffer.compare(h.bytes(0).subarray(4000, 4010), data.subarray(30, 40))).toBe(0);
    expect(
      h
        .bytes(0)
        .subarray(4010, 4500)
        .every((b) => b === 0xee),
    ).toBe(true);
    expect(
      h
        .bytes(1)
        .subarray(7, 10)
        .every((b) => b === 0xee),
    ).toBe(true);
    expect(h.bytes(1)[99]).toBe(0xee);
    expect(h.bytes(1)[130]).toBe(0xee);
  });

  it("IN, full length: every segment is filled", () => {
    const h = harness();
    h.submit(1, true, scattered);
    const data = pattern(total, 10);
    h.device.held[0]!.request.buffer.set(data);
    done(h.device.held[0]!, { status: OK, actualLength: total });
    h.answers();
    let at = 0;
    for (const [region, offset, len] of scattered) {
      expect(
        Buffer.compare(h.bytes(region).subarray(offset, offset + len), data.subarray(at, at + len)),
      ).toBe(0);
      at += len;
    }
  });

  it("segments that are one run of guest memory are one zero-copy view, not a bounce", () => {
    const h = harness();
    h.submit(1, true, [
      [0, 256, 100],
      [0, 356, 28],
      [0, 384, 128],
    ]);
    const buffer = h.device.held[0]!.request.buffer;
    expect(buffer.buffer).toBe(h.bytes(0).buffer);
    expect([buffer.byteOffset, buffer.length]).toEqual([256, 256]);
    expect(h.service.stats.bounceCopies).toBe(0);
  });
});
