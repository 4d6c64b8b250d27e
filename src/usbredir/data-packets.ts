/**
 * The data path of a usbredir connection: bytes in (the reader, straight into guest memory where OUT data
 * is due), each data packet (control / bulk / interrupt OUT) admitted against the connection's share
 * (`maxUrbsPerPeer`, guest memory, unsent bytes) or refused, started as an engine URB, and answered
 * exactly once when it completes or its cancel won; the interrupt and iso streams run on it (it is their
 * StreamContext, streams.ts); and the flow control (reads paused while the reader waits, the stall and
 * blocked-packet timers). It allocates nothing per packet in steady state. Every other packet (hello,
 * device-state requests, streams' start and stop, filters) goes to the server (server.ts).
 */
import type { GuestOffset } from "../dma-map/types.js";
import type { UrbCompletion, VirtualHostController } from "../frontend/index.js";
import type { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import type { FaceLogger } from "../network-face/log.js";
import { Blocked } from "../network-face/share.js";
import { ECONNRESET, ENODEV, ENOENT, ESHUTDOWN, OK } from "../urb/status.js";
import type { DevAddr, PortNum } from "../urb/types.js";
import { endpointIsIn, RequestTypeByte, requestIsIn, StandardRequest } from "../usb/index.js";
import type { RedirDeviceModel } from "./device-model.js";
import {
  hasCap,
  RedirCap,
  RedirEpType,
  type RedirPacket,
  RedirStatus,
  RedirType,
  redirTypeName,
} from "./protocol.js";
import { type Admission, BLOCK } from "./reader.js";
import type { RedirUrb, Session, SessionOwner } from "./session.js";
import { redirStatusOf } from "./status.js";
import type { StreamContext } from "./streams.js";

export { redirStatusOf } from "./status.js";

/** A data packet's id as a map key: exact for ids below 2^53, a string above. */
export function idKey(low: number, high: number): number | string {
  return high < 0x200000 ? high * 0x1_0000_0000 + low : `${high}:${low}`;
}

/** A number as 0x-prefixed hex, `width` digits at least (log lines). */
export function hex(n: number, width = 2): string {
  return `0x${n.toString(16).padStart(width, "0")}`;
}

/** Where the engine's device is and the guest memory its URB buffers live in. */
export interface DataPlane {
  readonly hcd: VirtualHostController;
  readonly port: PortNum;
  readonly deviceAddress: DevAddr;
  /** The URB buffers' region of guest memory, and that memory. */
  readonly memory: GuestBufferAllocator;
  readonly memoryBytes: Uint8Array;
  readonly regionBytes: number;
  /** Scratch frames one connection's iso descriptors may hold. */
  readonly isoScratchFrames: number;
}

/** Device-state requests (configuration, alternate setting, reset) one connection may have admitted and not done. */
export const MAX_QUEUED_REQUESTS = 4;

/** What the data path needs of the server. */
export interface DataPacketsHost {
  /** Every packet that is not a data packet (hello, device-state requests, streams, filters, acks). */
  deliver(s: Session, p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void;
  /** Malformed or hostile input: log, close this connection only. */
  drop(s: Session, reason: string): void;
  /** A raw SET_CONFIGURATION / SET_INTERFACE in a control packet succeeded: ep_info changes. */
  applyConfiguration(s: Session, value: number): void;
  applyAlternate(s: Session, itf: number, alt: number): void;
  /** The guest loses the device (a USB disconnect); the connection stays. */
  disconnectGuest(s: Session): void;
}

export class DataPackets implements SessionOwner, StreamContext {
  readonly hcd: VirtualHostController;
  readonly port: PortNum;
  readonly deviceAddress: DevAddr;
  readonly memory: GuestBufferAllocator;
  readonly memoryBytes: Uint8Array;
  readonly isoScratchFrames: number;
  readonly redirStatusOf = redirStatusOf;
  private readonly regionBytes: number;
  /** The device as the guest was told of it: the packets' endpoints are checked against it. */
  model: RedirDeviceModel;
  private readonly counters = { urbs: 0, bytes: 0 };

  constructor(
    plane: DataPlane,
    model: RedirDeviceModel,
    /** The device's name (log lines). */
    private readonly name: string,
    private readonly log: FaceLogger,
    private readonly host: DataPacketsHost,
  ) {
    this.hcd = plane.hcd;
    this.port = plane.port;
    this.deviceAddress = plane.deviceAddress;
    this.memory = plane.memory;
    this.memoryBytes = plane.memoryBytes;
    this.regionBytes = plane.regionBytes;
    this.isoScratchFrames = plane.isoScratchFrames;
    this.model = model;
  }

  /** Bytes of the URB buffers' region in use now. */
  get memoryInUse(): number {
    return this.regionBytes - this.memory.freeBytes;
  }

  /** Bytes from the socket; `reused` when `chunk` is the staging buffer, read into again next time. */
  received(s: Session, chunk: Uint8Array, reused: boolean): void {
    if (s.closed) return;
    this.hcd.batch(() => {
      s.reader.push(chunk);
      if (reused) s.reader.ownBuffered();
    });
    s.share.updateFlow();
  }

  /** Bytes read straight into the guest buffer of the OUT data that was due. */
  receivedDirect(s: Session, n: number): void {
    if (s.closed) return;
    this.hcd.batch(() => s.reader.receivedDirect(n));
    s.share.updateFlow();
  }

  /**
   * The reader has a sound packet header: decide where its data goes, or stop reading here. Every packet
   * but the hello may make a reply, so none is admitted while the peer's unsent replies are over the
   * bound; device-state requests wait while MAX_QUEUED_REQUESTS of them are not done.
   */
  admit(s: Session, p: RedirPacket): Admission {
    s.current = null;
    if (p.type === RedirType.HELLO) return null;
    const share = s.share;
    if (share.overUnsent) {
      share.block(Blocked.SEND);
      return BLOCK;
    }
    switch (p.type) {
      case RedirType.CONTROL_PACKET:
      case RedirType.BULK_PACKET:
      case RedirType.INTERRUPT_PACKET:
        return this.admitTransfer(s, p);
      case RedirType.SET_CONFIGURATION:
      case RedirType.GET_CONFIGURATION:
      case RedirType.SET_ALT_SETTING:
      case RedirType.GET_ALT_SETTING:
      case RedirType.RESET:
        // A reset queued behind one that has not started yet is the same reset: merged, nothing queued.
        if (p.type === RedirType.RESET && s.resetQueued) {
          s.resetMerged = true;
          return null;
        }
        if (s.requests >= MAX_QUEUED_REQUESTS) {
          share.block(Blocked.SHARE);
          return BLOCK;
        }
        s.requests++;
        s.forcedRequest = share.takeForced();
        return null;
      default:
        return null;
    }
  }

  /** A device-state request of `s` is done: the next may be admitted. */
  requestDone(s: Session): void {
    if (s.requests > 0) s.requests--;
    s.share.progress();
  }

  private admitTransfer(s: Session, p: RedirPacket): Admission {
    const key = idKey(p.idLow, p.idHigh);
    const interruptOut = p.type === RedirType.INTERRUPT_PACKET;
    // QEMU completes an interrupt OUT at once and may reuse its id: those are not tracked by id.
    if (!interruptOut && s.inflight.has(key)) {
      this.host.drop(s, `${redirTypeName(p.type)} id ${p.idHigh}:${p.idLow} is already in flight`);
      return null;
    }
    const directionIn = endpointIsIn(p.endpoint);
    const r = s.record();
    r.type = p.type;
    r.idLow = p.idLow;
    r.idHigh = p.idHigh;
    r.key = key;
    r.endpoint = p.endpoint;
    r.directionIn = directionIn;
    r.request = p.request;
    r.requestType = p.requestType;
    r.streamId = p.type === RedirType.BULK_PACKET ? p.streamId : 0;
    r.value = p.value;
    r.index = p.index;
    s.current = r;
    if (s.share.takeForced()) {
      r.verdict = RedirStatus.INVAL;
      return null;
    }
    const problem = this.transferProblem(s, p, directionIn);
    if (problem !== null) {
      s.warnings.warn(`${s.peer}: ${redirTypeName(p.type)} refused: ${problem}`);
      r.verdict = RedirStatus.INVAL;
      return null;
    }
    if (s.share.urbsFull) return this.block(s);
    const length = p.length;
    if (length > 0) {
      const range = this.memory.tryAllocateTransfer(length);
      if (range === null) return this.block(s);
      r.offset = range.offset;
      r.length = length;
    }
    s.share.urbs++;
    if (!interruptOut) s.inflight.set(key, r);
    return directionIn || length === 0 ? null : this.memoryBytes.subarray(r.offset, r.offset + length);
  }

  /** Why a well-framed transfer cannot go to the device as it stands, or null. */
  private transferProblem(s: Session, p: RedirPacket, directionIn: boolean): string | null {
    if (!s.announced) return "no device is connected";
    if (p.length > this.regionBytes)
      return `${p.length} bytes exceed the ${this.regionBytes}-byte buffer region`;
    if (p.type === RedirType.CONTROL_PACKET) {
      if ((p.endpoint & 0x7f) !== 0) return `control packet for endpoint ${hex(p.endpoint)}`;
      if (requestIsIn(p.requestType) !== directionIn) return "endpoint direction differs from bmRequestType";
      return null;
    }
    const ep = this.model.endpoint(p.endpoint);
    const want = p.type === RedirType.BULK_PACKET ? RedirEpType.BULK : RedirEpType.INTERRUPT;
    if (ep === undefined || ep.type !== want) {
      return `endpoint ${hex(p.endpoint)} is not a ${want === RedirEpType.BULK ? "bulk" : "interrupt"} endpoint of the active settings`;
    }
    if (p.type === RedirType.BULK_PACKET && p.streamId !== 0) {
      // Which stream ids were allocated is the port's to check (src/port/port-service.ts): -EINVAL there.
      if (!hasCap(s.negotiated!.caps, RedirCap.BULK_STREAMS)) return "bulk streams were not negotiated";
      if (ep.maxStreams === 0) return `endpoint ${hex(p.endpoint)} has no streams`;
    }
    if (p.type === RedirType.INTERRUPT_PACKET && directionIn) {
      return "interrupt IN is received with start_interrupt_receiving, not requested";
    }
    return null;
  }

  /** Stop reading at this packet until something of the connection's share comes back. */
  private block(s: Session): Admission {
    if (s.current !== null) s.recycle(s.current);
    s.current = null;
    s.share.block(Blocked.SHARE);
    return BLOCK;
  }

  /** A packet waited blockedRequestMs for its share while nothing came back: say so; it is answered inval. */
  forcing(s: Session, ms: number): void {
    this.log.warn(
      `${s.peer}: a packet waited ${ms} ms for its share of the engine (${s.share.urbs} URBs, ` +
        `${this.regionBytes - this.memory.freeBytes} bytes of guest memory in use): answered inval`,
      s.fields(),
    );
  }

  /** A whole packet from the guest: a data packet starts here, every other goes to the server. */
  deliver(s: Session, p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void {
    if (s.closed) return;
    switch (p.type) {
      case RedirType.CONTROL_PACKET:
      case RedirType.BULK_PACKET:
      case RedirType.INTERRUPT_PACKET: {
        s.packets++;
        const r = s.current!;
        s.current = null;
        this.startTransfer(s, r);
        return;
      }
      default:
        this.host.deliver(s, p, typeHeader, data);
    }
  }

  startTransfer(s: Session, r: RedirUrb): void {
    if (r.verdict !== null) {
      this.reply(s, r, r.verdict, 0);
      return;
    }
    if (
      r.type === RedirType.CONTROL_PACKET &&
      r.requestType === RequestTypeByte.DEVICE_OUT &&
      r.request === StandardRequest.SET_ADDRESS
    ) {
      // SET_ADDRESS: the VMM's own business (QEMU never forwards it); the device keeps ours.
      this.complete(s, r, { status: OK, actualLength: 0, startFrame: 0, errorCount: 0 });
      return;
    }
    const interval =
      r.type === RedirType.INTERRUPT_PACKET ? Math.max(1, this.model.endpoint(r.endpoint)?.interval ?? 1) : 1;
    const urb = r.engineUrb(this.port, this.deviceAddress, interval);
    r.urb = urb;
    this.counters.urbs++;
    this.hcd.submitWithCallback(urb, r.done);
  }

  /** An engine URB of a data packet completed: exactly one reply (cancelled if its cancel won). */
  complete(s: Session, r: RedirUrb, c: UrbCompletion): void {
    s.share.urbs--;
    r.urb = null;
    if (s.inflight.get(r.key) === r) s.inflight.delete(r.key);
    if (s.closed) this.release(s, r);
    else {
      if (c.status === OK && r.type === RedirType.CONTROL_PACKET) this.noteStandardRequest(s, r);
      const cancelled = r.cancelled && (c.status === ECONNRESET || c.status === ENOENT);
      const status = cancelled ? RedirStatus.CANCELLED : redirStatusOf(c.status);
      this.reply(s, r, status, cancelled ? 0 : Math.min(c.actualLength, r.length));
      if (c.status === ENODEV || c.status === ESHUTDOWN) this.deviceLost(s, c);
    }
    this.settled(s);
  }

  /** A raw SET_CONFIGURATION or SET_INTERFACE in a control packet changed what ep_info says. */
  private noteStandardRequest(s: Session, r: RedirUrb): void {
    if (r.requestType === RequestTypeByte.DEVICE_OUT && r.request === StandardRequest.SET_CONFIGURATION)
      this.host.applyConfiguration(s, r.value & 0xff);
    else if (r.requestType === RequestTypeByte.INTERFACE_OUT && r.request === StandardRequest.SET_INTERFACE)
      this.host.applyAlternate(s, r.index & 0xff, r.value & 0xff);
  }

  /** The data packet's reply: same type, id and endpoint; IN data straight from guest memory. */
  private reply(s: Session, r: RedirUrb, status: number, actual: number): void {
    const data = r.directionIn ? actual : 0;
    this.counters.bytes += actual;
    // The record (and its guest buffer) goes back once the writer is done with the data.
    s.sendData(
      r.type,
      r.idLow,
      r.idHigh,
      r.endpoint,
      status,
      actual,
      r.offset,
      data,
      r,
      r.type === RedirType.CONTROL_PACKET || r.type === RedirType.BULK_PACKET ? r : null,
    );
  }

  /** The writer is done with a record's IN data (or it had none): its memory and the record go back. */
  release(s: Session, r: RedirUrb): void {
    if (r.length > 0) this.memory.release({ offset: r.offset as GuestOffset, length: r.length });
    r.length = 0;
    s.recycle(r);
    if (!s.closed) s.share.progress();
  }

  cancel(s: Session, key: number | string): void {
    const r = s.inflight.get(key);
    if (r === undefined || r.cancelled) return; // already answered (its reply is ahead of the cancel)
    r.cancelled = true;
    if (r.urb !== null) void this.hcd.unlink(r.urb);
  }

  /** The device went away under a URB: tell the guest once; the engine reports the port as failed. */
  deviceLost(s: Session, c: UrbCompletion): void {
    if (!s.announced || this.hcd.portStatus(this.port).connected) return;
    this.log.error(`${s.peer}: ${this.name} is gone (${c.detail ?? c.status})`, s.fields());
    this.host.disconnectGuest(s);
  }

  // ---------------------------------------------------------------- flow control (network-face/share.ts)

  /** A URB of `s` came back: resume a blocked reader, or finish draining a closed connection. */
  settled(s: Session): void {
    if (s.closed) {
      if (s.share.urbs === 0) s.onDrained?.();
      return;
    }
    s.share.progress();
    // Interrupt and iso IN data is sent from here too: a peer that stops reading it must start the stall timer.
    s.share.updateFlow();
  }

  /** The peer read its replies below the bound: streams that stopped for it go on. */
  drained(s: Session): void {
    if (s.closed) return;
    const parked = s.parked;
    s.parked = [];
    for (const resubmit of parked) resubmit();
  }

  /** Give back what admitTransfer took for a packet that never started. */
  abandon(s: Session, r: RedirUrb): void {
    s.share.urbs--;
    if (s.inflight.get(r.key) === r) s.inflight.delete(r.key);
    this.release(s, r);
  }

  drop(s: Session, reason: string): void {
    this.host.drop(s, reason);
  }
}
