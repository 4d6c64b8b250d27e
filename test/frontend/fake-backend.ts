/**
 * A fake usbback for frontend tests, in the test's own thread: the real
 * BackRing, ConnBack, GrantMapper and parse gate, answering per the
 * frontend ↔ backend contract with a loopback device model:
 * - SET_ADDRESS is virtualised (answered 0, the address table changes);
 * - SET_FEATURE(PORT_RESET) resets the address, is answered 0, then a conn
 *   event {port, speed} says "reset done";
 * - bulk/interrupt OUT data is queued per (port, endpoint) and returned by IN
 *   on the same endpoint number; an IN with nothing queued is held in flight;
 * - iso writes per-packet results into the descriptor grant;
 * - unlink of a held URB answers the URB -ECONNRESET first, then the unlink 0;
 *   an unlink of anything else is answered -ENOENT;
 * - a port with no device, or a wrong address, answers -ENODEV.
 * Misbehaving modes: "silent" (consumes, never answers), "bogus-id" (answers
 * an id never sent), "keep-grants" (never unmaps), "impossible-rsp-prod"
 * (publishes a response producer index far ahead of the requests).
 */

import type { ControllerHandles } from "../../src/connection/handles.js";
import { URB_RING_GEOMETRY } from "../../src/connection/handles.js";
import { GrantFault, type GrantFaultCode } from "../../src/dma-map/grant-fault.js";
import { accessForDirection, type GrantAccess, GrantMapper } from "../../src/dma-map/grant-mapper.js";
import { GuestMemory } from "../../src/dma-map/guest-memory.js";
import { type DomId, domId, type GrantRef } from "../../src/dma-map/types.js";
import { TransferBuffers } from "../../src/port/transfer-buffer.js";
import { BackRing } from "../../src/rings/back-ring.js";
import { ConnBack, type ConnEvent } from "../../src/rings/conn-ring.js";
import { Doorbell } from "../../src/rings/doorbell.js";
import { kRspProd } from "../../src/rings/layout.js";
import { encodeResponse } from "../../src/urb/codec.js";
import { parseIsoPacketDescriptors, writeIsoPacketResult } from "../../src/urb/iso.js";
import { ISO_FRAME_DESCRIPTOR_SIZE, URB_SLOT_SIZE } from "../../src/urb/layout.js";
import { parseIndirectSegments, parseRequest } from "../../src/urb/parse.js";
import {
  ECONNRESET,
  EINVAL,
  ENODEV,
  ENOENT,
  EPIPE,
  EPROTO,
  OK,
  type UrbStatus,
} from "../../src/urb/status.js";
import { type DataUrb, Direction, type Segment, type UrbId, type UrbRequest } from "../../src/urb/types.js";
import { UsbSpeed } from "../../src/usb/index.js";

export type FakeMode = "normal" | "silent" | "bogus-id" | "keep-grants" | "impossible-rsp-prod";

interface FakeDevice {
  speed: UsbSpeed;
  address: number;
  vendorData: Uint8Array;
}

/**
 * A URB's buffer made the way the engine makes it: each segment pinned (GrantMapper.pin, as the backend's
 * gate does), then one view or a bounce buffer (TransferBuffers, as the port service does).
 */
class MappedBuffer {
  #live = true;
  constructor(
    readonly view: Uint8Array,
    private readonly refs: readonly GrantRef[],
    /** The pinned segments when `view` is a bounce buffer (an IN's bytes go back at completion). */
    private readonly bounced: Uint32Array | null,
    private readonly access: GrantAccess,
    private readonly mapper: GrantMapper,
    private readonly buffers: TransferBuffers,
  ) {}

  /** Copy a bounced IN's `actual` bytes back, then unpin. */
  complete(actual: number): void {
    if (!this.#live) return;
    if (this.bounced !== null && this.access === "write" && actual > 0)
      this.buffers.copyBack(this.bounced, this.view, Math.min(actual, this.view.length));
    this.release();
  }

  release(): void {
    if (!this.#live) return;
    this.#live = false;
    for (let i = this.refs.length - 1; i >= 0; i--) this.mapper.unmap(this.refs[i]!);
  }
}

/** Pin every segment for `access` (none left pinned on a fault) and build the buffer. */
function mapSegments(
  mapper: GrantMapper,
  buffers: TransferBuffers,
  domid: DomId,
  access: GrantAccess,
  segments: readonly Segment[],
): MappedBuffer | GrantFaultCode {
  const located = new Uint32Array(segments.length * 3);
  const refs: GrantRef[] = [];
  let total = 0;
  for (const [i, seg] of segments.entries()) {
    const fault = mapper.pin(seg.ref, domid, access, seg.offset, seg.length);
    if (fault !== GrantFault.OK) {
      for (let j = refs.length - 1; j >= 0; j--) mapper.unmap(refs[j]!);
      return fault;
    }
    refs.push(seg.ref);
    located.set([mapper.pinnedRegion, mapper.pinnedRegionOffset, seg.length], i * 3);
    total += seg.length;
  }
  const view = buffers.build(located, segments.length, total, access === "write");
  return new MappedBuffer(view, refs, buffers.bounced ? located : null, access, mapper, buffers);
}

interface HeldUrb {
  readonly req: DataUrb;
  readonly mapped: MappedBuffer | null;
}

/** The 18-byte device descriptor GET_DESCRIPTOR(DEVICE) returns. */
export const DEVICE_DESCRIPTOR = Uint8Array.from([
  18, 1, 0x00, 0x02, 0xff, 0, 0, 64, 0x34, 0x12, 0x78, 0x56, 0x00, 0x01, 1, 2, 3, 1,
]);

export class FakeBackend {
  readonly ring: BackRing;
  readonly conn: ConnBack;
  readonly mapper: GrantMapper;
  /** The port service's buffer maker (counts its bounces in `bounceStats`). */
  readonly bounceStats = { bounceCopies: 0, bounceBytes: 0 };
  private readonly buffers: TransferBuffers;
  readonly memory: GuestMemory;
  readonly frontendBell: Doorbell;
  readonly backendBell: Doorbell;
  readonly domid: DomId;
  mode: FakeMode;
  readonly devices = new Map<number, FakeDevice>();
  /** Every request that passed the parse gate, in arrival order. */
  readonly requests: UrbRequest[] = [];
  /** Requests the gate refused. */
  readonly rejected: string[] = [];
  /** What mapping an OUT buffer for write returned (the frontend must have granted it read-only). */
  readonly outWriteProbes: GrantFaultCode[] = [];
  /** Publish a port reset's conn event one step before its answer. */
  resetEventFirst = false;
  private readonly deferred: (() => void)[] = [];
  /** Most requests ever waiting unconsumed on the ring. */
  maxUnconsumed = 0;
  private readonly held = new Map<number, HeldUrb>();
  private readonly fifos = new Map<string, Uint8Array[]>();
  private readonly connQueue: ConnEvent[] = [];
  private readonly copy = new Uint8Array(URB_SLOT_SIZE);
  private readonly rspProdWord: Int32Array;
  private running = false;
  private loop: Promise<void> | null = null;

  constructor(handles: ControllerHandles, mode: FakeMode = "normal") {
    this.mode = mode;
    this.ring = new BackRing(handles.urbRing, URB_RING_GEOMETRY);
    this.conn = new ConnBack(handles.connRing);
    this.memory = new GuestMemory({ regions: handles.memory });
    this.mapper = new GrantMapper({ table: handles.grantTable, memory: this.memory });
    this.buffers = new TransferBuffers(this.memory.regions, this.bounceStats);
    this.frontendBell = new Doorbell(handles.frontendBell);
    this.backendBell = new Doorbell(handles.backendBell);
    this.domid = domId(handles.backendDomid);
    this.rspProdWord = new Int32Array(handles.urbRing, 0, kRspProd + 1);
  }

  /** Re-attach both ring ends after the frontend re-initialised them (a restarted backend). */
  reattach(): void {
    this.ring.reset();
    this.conn.ring.reset();
    this.held.clear();
    this.connQueue.length = 0;
  }

  get heldCount(): number {
    return this.held.size;
  }

  plug(port: number, speed: UsbSpeed = UsbSpeed.HIGH): void {
    this.devices.set(port, { speed, address: 0, vendorData: new Uint8Array(0) });
    this.postConn({ port, speed });
  }

  /** Unplug: the conn event, then the held URBs of that port are answered -ENODEV (as a real backend does). */
  unplug(port: number): void {
    this.devices.delete(port);
    this.postConn({ port, speed: UsbSpeed.NONE });
    for (const [id, held] of this.held) {
      if (held.req.port === port) {
        this.held.delete(id);
        held.mapped?.release();
        this.respond(id, ENODEV, 0);
      }
    }
    this.publish();
  }

  private postConn(event: ConnEvent): void {
    this.connQueue.push(event);
    this.flushConn();
  }

  private flushConn(): void {
    while (this.connQueue.length > 0 && this.conn.postEvent(this.connQueue[0]!)) this.connQueue.shift();
    if (this.conn.push()) this.frontendBell.ring();
  }

  /** Consume and answer every request on the ring; returns how many. */
  step(): number {
    this.flushConn();
    let n = this.deferred.length;
    for (const answer of this.deferred.splice(0)) answer();
    this.maxUnconsumed = Math.max(this.maxUnconsumed, this.ring.unconsumedRequests());
    while (n < URB_RING_GEOMETRY.slots && this.ring.takeRequest(this.copy)) {
      n++;
      this.handle(this.copy);
    }
    this.publish();
    this.flushConn();
    return n;
  }

  private publish(): void {
    if (this.ring.pushResponses()) this.frontendBell.ring();
  }

  /** Answer a held IN URB by hand (unmapping it first), e.g. with a lying actual length. */
  answerHeld(id: number, status: UrbStatus, actualLength: number): void {
    const held = this.held.get(id);
    if (held === undefined) throw new Error(`request ${id} is not held`);
    this.held.delete(id);
    held.mapped?.release();
    this.respond(id, status, actualLength);
    this.publish();
  }

  /** Write one response slot (not published until step/publish). */
  respond(id: number, status: UrbStatus, actualLength: number, startFrame = 0, errorCount = 0): void {
    if (this.mode === "silent") return;
    const answerId = this.mode === "bogus-id" ? 0xfff0 : id;
    encodeResponse(
      { id: answerId as UrbId, status, actualLength, startFrame, errorCount },
      this.ring.responseSlot(),
    );
    this.ring.commitResponse();
    if (this.mode === "impossible-rsp-prod") {
      // Publish an index far past anything the frontend asked for.
      this.ring.pushResponses();
      Atomics.add(this.rspProdWord, kRspProd, 1000);
    }
  }

  private handle(copy: Uint8Array): void {
    const parsed = parseRequest(copy);
    if (!parsed.ok) {
      this.rejected.push(parsed.reason);
      if (parsed.id !== null) this.respond(parsed.id, parsed.status, 0);
      return;
    }
    const req = parsed.req;
    this.requests.push(req);
    if (req.kind === "unlink") {
      const held = this.held.get(req.unlinkId);
      if (held === undefined) {
        this.respond(req.id, ENOENT, 0);
        return;
      }
      // Contract: the cancelled URB is answered first, then the unlink.
      this.held.delete(req.unlinkId);
      held.mapped?.release();
      this.respond(req.unlinkId, ECONNRESET, 0);
      this.respond(req.id, OK, 0);
      return;
    }
    const device = this.devices.get(req.port);
    if (device === undefined || device.address !== req.device) {
      this.respond(req.id, ENODEV, 0);
      return;
    }
    const mapped = this.mapBuffer(req);
    if (typeof mapped === "number") {
      this.respond(req.id, EINVAL, 0);
      return;
    }
    this.serve(req, device, mapped);
  }

  private segmentsOf(req: DataUrb): readonly Segment[] | GrantFaultCode {
    const buffer = req.buffer;
    if (buffer.kind === "none") return [];
    if (buffer.kind === "inline") return buffer.segments;
    const page = this.mapper.map(buffer.page.ref, this.domid, "read", buffer.page.offset, buffer.page.length);
    if (typeof page === "number") return page;
    const copied = page.slice();
    this.mapper.unmap(buffer.page.ref);
    const parsed = parseIndirectSegments(copied, buffer.count, req.bufferLength);
    return parsed.ok ? parsed.segments : GrantFault.MALFORMED_ENTRY;
  }

  private mapBuffer(req: DataUrb): MappedBuffer | null | GrantFaultCode {
    const segments = this.segmentsOf(req);
    if (typeof segments === "number") return segments;
    if (segments.length === 0) return null;
    if (req.direction === Direction.Out) {
      // Try to write an OUT buffer: the frontend must have granted it read-only.
      const probe = mapSegments(this.mapper, this.buffers, this.domid, "write", segments);
      if (typeof probe === "number") this.outWriteProbes.push(probe);
      else {
        this.outWriteProbes.push(GrantFault.OK);
        probe.release();
      }
    }
    const access = accessForDirection(req.direction === Direction.In);
    return mapSegments(this.mapper, this.buffers, this.domid, access, segments);
  }

  /** Unmap (unless misbehaving), then answer. */
  private finish(
    req: DataUrb,
    mapped: MappedBuffer | null,
    status: UrbStatus,
    actual: number,
    extra?: { startFrame: number; errorCount: number },
  ): void {
    if (this.mode !== "keep-grants") mapped?.complete(actual);
    this.respond(req.id, status, actual, extra?.startFrame ?? 0, extra?.errorCount ?? 0);
  }

  private serve(req: DataUrb, device: FakeDevice, mapped: MappedBuffer | null): void {
    const view = mapped?.view ?? new Uint8Array(0);
    switch (req.kind) {
      case "control": {
        const { bmRequestType, bRequest, wValue, wLength } = req.setup;
        if (bmRequestType === 0x00 && bRequest === 5) {
          device.address = wValue & 0x7f;
          this.finish(req, mapped, OK, 0);
        } else if (bmRequestType === 0x23 && bRequest === 3 && wValue === 4) {
          device.address = 0;
          if (this.resetEventFirst) {
            // The "reset done" event overtakes the answer, which goes out on the next step.
            this.postConn({ port: req.port, speed: device.speed });
            this.deferred.push(() => this.finish(req, mapped, OK, 0));
          } else {
            this.finish(req, mapped, OK, 0);
            this.postConn({ port: req.port, speed: device.speed });
          }
        } else if (bmRequestType === 0x80 && bRequest === 6 && wValue >> 8 === 1) {
          const n = Math.min(wLength, DEVICE_DESCRIPTOR.length);
          view.set(DEVICE_DESCRIPTOR.subarray(0, n));
          this.finish(req, mapped, OK, n);
        } else if (bmRequestType === 0x40) {
          device.vendorData = view.slice(0, wLength);
          this.finish(req, mapped, OK, wLength);
        } else if (bmRequestType === 0xc0) {
          const n = Math.min(wLength, device.vendorData.length);
          view.set(device.vendorData.subarray(0, n));
          this.finish(req, mapped, OK, n);
        } else {
          this.finish(req, mapped, EPIPE, 0);
        }
        return;
      }
      case "bulk":
      case "interrupt": {
        const key = `${req.port}:${req.endpoint}`;
        const fifo = this.fifos.get(key) ?? [];
        this.fifos.set(key, fifo);
        if (req.direction === Direction.Out) {
          fifo.push(view.slice());
          this.finish(req, mapped, OK, view.length);
          return;
        }
        const data = fifo.shift();
        if (data === undefined) {
          this.held.set(req.id, { req, mapped });
          return;
        }
        const n = Math.min(data.length, view.length);
        view.set(data.subarray(0, n));
        this.finish(req, mapped, OK, n);
        return;
      }
      case "isochronous": {
        const { ref, offset } = req.frameDescriptors;
        const bytes = req.numberOfPackets * ISO_FRAME_DESCRIPTOR_SIZE;
        const descriptors = this.mapper.map(ref, this.domid, "write", offset, bytes);
        if (typeof descriptors === "number") {
          this.finish(req, mapped, EINVAL, 0);
          return;
        }
        const parsed = parseIsoPacketDescriptors(descriptors.slice(), req.numberOfPackets, req.bufferLength);
        if (!parsed.ok) {
          this.mapper.unmap(ref);
          this.finish(req, mapped, parsed.status, 0);
          return;
        }
        // Packet i moves length − (i mod 3) bytes; every fourth packet fails with -EPROTO.
        let total = 0;
        let errors = 0;
        parsed.packets.forEach((packet, i) => {
          const actual = Math.max(0, packet.length - (i % 3));
          const status = i % 4 === 3 ? EPROTO : OK;
          if (status !== OK) errors++;
          if (req.direction === Direction.In) view.fill(i + 1, packet.offset, packet.offset + actual);
          writeIsoPacketResult(descriptors, i, status, actual);
          total += actual;
        });
        if (this.mode !== "keep-grants") this.mapper.unmap(ref);
        this.finish(req, mapped, OK, total, { startFrame: 77, errorCount: errors });
        return;
      }
    }
  }

  /** Serve requests whenever the frontend rings (for tests of the controller's own loop). */
  run(): void {
    if (this.loop !== null) return;
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        this.step();
        const wait = this.backendBell.waitAsync(this.ring);
        if (wait === null) await new Promise((r) => setImmediate(r));
        else await wait;
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.backendBell.ring();
    await this.loop;
    this.loop = null;
  }
}
