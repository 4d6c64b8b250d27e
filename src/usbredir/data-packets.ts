/**
 * The data path of a usbredir connection: bytes in (the reader, straight into guest memory where OUT data
 * is due), each data packet (control / bulk / interrupt OUT) admitted against the connection's share
 * (`maxUrbsInFlight`, guest memory, unsent bytes) or refused, started as an engine URB, and answered
 * exactly once when it completes or its cancel won; the interrupt and iso streams run on it (it is their
 * StreamContext, streams.ts); and the flow control (reads paused while the reader waits, the stall and
 * blocked-packet timers). It allocates nothing per packet in steady state. Every other packet (hello,
 * device-state requests, streams' start and stop, filters) goes to the server (server.ts).
 */
import type { OnReadOpts } from "node:net";
import type { GuestOffset } from "../dma-map/types.js";
import type { UrbCompletion, VirtualHostController } from "../frontend/index.js";
import type { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import type { FaceLogger } from "../network-face/log.js";
import {
  ECONNRESET,
  EINVAL,
  ENODEV,
  ENOENT,
  EOVERFLOW,
  EPIPE,
  ESHUTDOWN,
  ETIME,
  ETIMEDOUT,
  OK,
} from "../urb/status.js";
import type { DevAddr, PortNum } from "../urb/types.js";
import { endpointIsIn, RequestTypeByte, requestIsIn, StandardRequest } from "../usb/index.js";
import type { RedirDeviceModel } from "./device-model.js";
import { RedirEpType, type RedirPacket, RedirStatus, RedirType, redirTypeName } from "./protocol.js";
import { type Admission, BLOCK } from "./reader.js";
import type { RedirUrb, Session, SessionOwner } from "./session.js";
import type { StreamContext } from "./streams.js";

/** Engine status → usbredir status (QEMU maps everything but success, stall and babble to an I/O error). */
export function redirStatusOf(status: number): RedirStatus {
  switch (status) {
    case OK:
      return RedirStatus.SUCCESS;
    case ECONNRESET:
    case ENOENT:
      return RedirStatus.CANCELLED;
    case EPIPE:
      return RedirStatus.STALL;
    case ETIMEDOUT:
    case ETIME:
      return RedirStatus.TIMEOUT;
    case EOVERFLOW:
      return RedirStatus.BABBLE;
    case EINVAL:
      return RedirStatus.INVAL;
    default:
      return RedirStatus.IOERROR;
  }
}

/** A data packet's id as a map key: exact for ids below 2^53, a string above. */
export function idKey(low: number, high: number): number | string {
  return high < 0x200000 ? high * 0x1_0000_0000 + low : `${high}:${low}`;
}

/** A number as 0x-prefixed hex, `width` digits at least (log lines). */
export function hex(n: number, width = 2): string {
  return `0x${n.toString(16).padStart(width, "0")}`;
}

/** The connection's bounds (UsbredirServerOptions, with their defaults applied). */
export interface ConnectionBounds {
  /** URBs one connection may have in the engine at once. */
  readonly maxUrbs: number;
  /** Unsent reply bytes above which no new packet is started ... */
  readonly maxSendQueue: number;
  /** ... and how long the peer may leave them unread before it is dropped. */
  readonly stalledMs: number;
  /** How long a packet may wait for its share while nothing completes before it is answered inval. */
  readonly blockedMs: number;
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
  readonly maxUrbs: number;
  readonly maxSendQueue: number;
  private readonly regionBytes: number;
  private readonly stalledMs: number;
  private readonly blockedMs: number;
  /** The device as the guest was told of it: the packets' endpoints are checked against it. */
  model: RedirDeviceModel;
  private readonly counters = { urbs: 0, bytes: 0 };

  constructor(
    plane: DataPlane,
    bounds: ConnectionBounds,
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
    this.maxUrbs = bounds.maxUrbs;
    this.maxSendQueue = bounds.maxSendQueue;
    this.stalledMs = bounds.stalledMs;
    this.blockedMs = bounds.blockedMs;
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
    this.updateFlow(s);
  }

  /** Bytes read straight into the guest buffer of the OUT data that was due. */
  receivedDirect(s: Session, n: number): void {
    if (s.closed) return;
    this.hcd.batch(() => s.reader.receivedDirect(n));
    this.updateFlow(s);
  }

  /** The reader has a sound packet header: decide where its data goes, or stop reading here. */
  admit(s: Session, p: RedirPacket): Admission {
    s.current = null;
    switch (p.type) {
      case RedirType.CONTROL_PACKET:
      case RedirType.BULK_PACKET:
      case RedirType.INTERRUPT_PACKET:
        return this.admitTransfer(s, p);
      default:
        return null;
    }
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
    r.value = p.value;
    r.index = p.index;
    s.current = r;
    if (s.forced) {
      s.forced = false;
      r.verdict = RedirStatus.INVAL;
      return null;
    }
    const problem = this.transferProblem(s, p, directionIn);
    if (problem !== null) {
      this.log.warn(`${s.peer}: ${redirTypeName(p.type)} refused: ${problem}`, s.fields());
      r.verdict = RedirStatus.INVAL;
      return null;
    }
    if (s.unsent > this.maxSendQueue) return this.block(s);
    if (s.urbs >= this.maxUrbs) return this.block(s);
    const length = p.length;
    if (length > 0) {
      const range = this.memory.tryAllocateTransfer(length);
      if (range === null) return this.block(s);
      r.offset = range.offset;
      r.length = length;
    }
    s.urbs++;
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
    if (p.type === RedirType.BULK_PACKET && p.streamId !== 0) return "bulk streams are not supported";
    if (p.type === RedirType.INTERRUPT_PACKET && directionIn) {
      return "interrupt IN is received with start_interrupt_receiving, not requested";
    }
    return null;
  }

  /** Stop reading at this packet until something of the connection's share comes back. */
  private block(s: Session): Admission {
    if (s.current !== null) s.recycle(s.current);
    s.current = null;
    if (s.blockTimer === null) {
      s.blockTimer = setTimeout(() => {
        s.blockTimer = null;
        if (s.closed || !s.reader.isBlocked) return;
        this.log.warn(
          `${s.peer}: a packet waited ${this.blockedMs} ms for its share of the engine (${s.urbs} URBs, ` +
            `${this.regionBytes - this.memory.freeBytes} bytes of guest memory in use): answered inval`,
          s.fields(),
        );
        s.forced = true;
        this.progress(s);
      }, this.blockedMs);
    }
    return BLOCK;
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
    s.urbs--;
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
      r.type === RedirType.CONTROL_PACKET ? r : null,
    );
  }

  /** The writer is done with a record's IN data (or it had none): its memory and the record go back. */
  release(s: Session, r: RedirUrb): void {
    if (r.length > 0) this.memory.release({ offset: r.offset as GuestOffset, length: r.length });
    r.length = 0;
    s.recycle(r);
    if (!s.closed) this.progress(s);
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

  // ---------------------------------------------------------------- flow control

  /** A URB of `s` came back: resume a blocked reader, or finish draining a closed connection. */
  settled(s: Session): void {
    if (s.closed) {
      if (s.urbs === 0) s.onDrained?.();
      return;
    }
    this.progress(s);
    // Interrupt and iso IN data is sent from here too: a peer that stops reading it must start the stall timer.
    this.updateFlow(s);
  }

  progress(s: Session): void {
    if (!s.reader.isBlocked) return;
    if (s.blockTimer !== null && !s.forced) {
      clearTimeout(s.blockTimer);
      s.blockTimer = null;
    }
    this.hcd.batch(() => s.reader.resume());
    this.updateFlow(s);
  }

  /** A flush of `s`'s frames reached the kernel. */
  written(s: Session): void {
    if (s.closed) return;
    if (s.unsent <= this.maxSendQueue) {
      if (s.stallTimer !== null) clearTimeout(s.stallTimer);
      s.stallTimer = null;
      // Streams that stopped for the peer to read go on (each parks again if the bound is passed again).
      const parked = s.parked;
      s.parked = [];
      for (const resubmit of parked) resubmit();
    }
    this.progress(s);
  }

  /** Reads paused while the reader waits; the stall timer runs while replies pile up unread. */
  private updateFlow(s: Session): void {
    if (s.closed) return;
    const pause = s.reader.isBlocked;
    if (pause !== s.paused) {
      s.paused = pause;
      if (pause) s.socket.pause();
      else s.socket.resume();
    }
    if (s.stallTimer === null && s.unsent > this.maxSendQueue) {
      s.stallTimer = setTimeout(() => {
        s.stallTimer = null;
        if (!s.closed && s.unsent > this.maxSendQueue) {
          this.host.drop(s, `peer stopped reading: ${s.unsent} bytes unsent for ${this.stalledMs} ms`);
        }
      }, this.stalledMs);
    }
  }

  /** Give back what admitTransfer took for a packet that never started. */
  abandon(s: Session, r: RedirUrb): void {
    s.urbs--;
    if (s.inflight.get(r.key) === r) s.inflight.delete(r.key);
    this.release(s, r);
  }

  drop(s: Session, reason: string): void {
    this.host.drop(s, reason);
  }
}

/** Each connection's staging buffer; OUT data of at least DIRECT_READ_MIN bytes is read into guest memory instead. */
const READ_BUFFER_BYTES = 128 * 1024;
const DIRECT_READ_MIN = 16 * 1024;

/** Where a connection's next read lands: the rest of the OUT data that is due, in guest memory, or staging. */
export class ReadTarget {
  session: Session | null = null;
  private readonly staging = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  readonly options: OnReadOpts;

  constructor(server: DataPackets) {
    this.options = {
      buffer: () => {
        const direct = this.session?.reader.directTarget ?? null;
        return direct !== null && direct.length >= DIRECT_READ_MIN ? direct : this.staging;
      },
      callback: (n, buf) => {
        const s = this.session;
        if (s === null || s.closed) return false;
        if (buf === this.staging) server.received(s, this.staging.subarray(0, n), true);
        else server.receivedDirect(s, n);
        return true;
      },
    };
  }
}
