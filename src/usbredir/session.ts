/**
 * One usbredir connection's state: its reader (the parse gate), its writer (one writev per turn, IN data
 * from guest memory), the data packets it has in the engine, its interrupt and iso streams, its bounds'
 * timers. The records of data packets are pooled and reuse their engine URB objects, so a steady stream
 * of transfers allocates no record and no URB per packet.
 */
import type { Socket } from "node:net";
import type { Urb, UrbCallback, UrbCompletion } from "../frontend/index.js";
import { type FaceLogger, type LogFields, PeerWarnings } from "../network-face/log.js";
import { PooledUrb } from "../network-face/pooled-urb.js";
import type { PeerShare } from "../network-face/share.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import { endpointNumberOf } from "../usb/index.js";
import { type Frame, type FrameCodec, type FrameHolder, FrameWriter } from "../util/frame-writer.js";
import { hasCap, type Negotiated, RedirCap, type RedirPacket, RedirType } from "./protocol.js";
import { type Admission, RedirReader, type RedirReaderSink } from "./reader.js";

/** An interrupt IN endpoint receiving on its own (streams.ts runs it). */
export interface InterruptStream {
  readonly endpoint: number;
  readonly maxPacketSize: number;
  readonly interval: number;
  running: boolean;
  /** Its URBs in the engine (unlinked when it stops). */
  readonly urbs: Urb[];
  /** Ids of the unsolicited interrupt_packets, counting up (QEMU ignores them). */
  nextId: number;
}

/** An iso endpoint streaming on its own (streams.ts runs it). */
export interface IsoStream {
  readonly endpoint: number;
  readonly directionIn: boolean;
  readonly pktsPerUrb: number;
  readonly noUrbs: number;
  readonly maxPacketSize: number;
  readonly interval: number;
  running: boolean;
  readonly urbs: Urb[];
  nextId: number;
  /** OUT: packets gathered for the next URBs. */
  out: Uint8Array[];
  dropped: number;
}

/** What a session needs of its server. */
export interface SessionOwner {
  admit(s: Session, p: RedirPacket): Admission;
  deliver(s: Session, p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void;
  drop(s: Session, reason: string): void;
  /** An engine URB of one of the session's data packets completed. */
  complete(s: Session, r: RedirUrb, c: UrbCompletion): void;
  /** The writer is done with a record's IN data (or never needed it): its memory can go. */
  release(s: Session, r: RedirUrb): void;
}

/** A packet on its way out: a header written by the codec (data packets), or a whole pre-encoded packet. */
export interface RedirFrame extends Frame {
  /** `tail` is a whole packet (device info, statuses): no header to write. */
  raw: boolean;
  type: number;
  idLow: number;
  idHigh: number;
  endpoint: number;
  status: number;
  /** The header's length field (actual bytes). */
  length: number;
  request: number;
  requestType: number;
  value: number;
  index: number;
  /** Bulk: the stream id echoed from the request. */
  streamId: number;
}

/** The data packets' headers under one connection's negotiated capabilities. */
function redirCodec(n: Negotiated): FrameCodec<RedirFrame> {
  const hs = n.headerSize;
  const bulk = hasCap(n.caps, RedirCap.BULK_LENGTH_32BIT) ? 10 : 8;
  const typeHeader = (type: number) =>
    type === RedirType.CONTROL_PACKET ? 10 : type === RedirType.BULK_PACKET ? bulk : 4;
  return {
    create: () => ({
      raw: false,
      type: 0,
      idLow: 0,
      idHigh: 0,
      endpoint: 0,
      status: 0,
      length: 0,
      request: 0,
      requestType: 0,
      value: 0,
      index: 0,
      streamId: 0,
      dataOffset: 0,
      dataLength: 0,
      tail: null,
      holder: null,
    }),
    headerSize: (f) => (f.raw ? 0 : hs + typeHeader(f.type)),
    maxHeaderSize: hs + 10,
    writeHeader(out, at, f) {
      if (f.raw) return;
      const th = typeHeader(f.type);
      out.writeUInt32LE(f.type, at);
      out.writeUInt32LE(th + f.dataLength, at + 4);
      out.writeUInt32LE(f.idLow >>> 0, at + 8);
      if (hs === 16) out.writeUInt32LE(f.idHigh >>> 0, at + 12);
      const h = at + hs;
      out[h] = f.endpoint;
      if (f.type === RedirType.CONTROL_PACKET) {
        out[h + 1] = f.request;
        out[h + 2] = f.requestType;
        out[h + 3] = f.status;
        out.writeUInt16LE(f.value, h + 4);
        out.writeUInt16LE(f.index, h + 6);
        out.writeUInt16LE(f.length, h + 8);
      } else {
        out[h + 1] = f.status;
        out.writeUInt16LE(f.length & 0xffff, h + 2);
        if (f.type === RedirType.BULK_PACKET) {
          out.writeUInt32LE(f.streamId, h + 4);
          if (th === 10) out.writeUInt16LE(f.length >>> 16, h + 8);
        }
      }
    },
  };
}

/**
 * A data packet from the guest (control, bulk, interrupt OUT), from admission until its reply is
 * written. Pooled per session; its engine URB objects are reused (network-face/pooled-urb.ts).
 */
export class RedirUrb extends PooledUrb {
  type = 0;
  idLow = 0;
  idHigh = 0;
  key: number | string = 0;
  endpoint = 0;
  directionIn = false;
  /** Bulk: the stream, echoed in the reply. */
  streamId = 0;
  /** Control fields, echoed in the reply. */
  request = 0;
  requestType = 0;
  value = 0;
  index = 0;
  /** Answered here without the engine (a usbredir status), or null. */
  verdict: number | null = null;
  cancelled = false;
  readonly done: UrbCallback;

  constructor(readonly session: Session) {
    super();
    this.done = (c) => session.owner.complete(session, this, c);
  }

  released(): void {
    this.session.owner.release(this.session, this);
  }

  /** The engine URB for this packet, reusing this record's object of its type. */
  engineUrb(port: PortNum, device: DevAddr, interval: number): Urb {
    const spec = this.spec;
    spec.kind =
      this.type === RedirType.CONTROL_PACKET
        ? "control"
        : this.type === RedirType.BULK_PACKET
          ? "bulk"
          : "interrupt";
    spec.port = port;
    spec.device = device;
    spec.endpoint = endpointNumberOf(this.endpoint) as EndpointNum;
    spec.directionIn = this.directionIn;
    spec.interval = interval;
    spec.streamId = this.streamId;
    const setup = spec.setup;
    setup.bmRequestType = this.requestType;
    setup.bRequest = this.request;
    setup.wValue = this.value;
    setup.wIndex = this.index;
    setup.wLength = this.length;
    return this.transfer();
  }
}

export class Session implements RedirReaderSink {
  readonly reader: RedirReader;
  negotiated: Negotiated | null = null;
  /** Set with `negotiated` (the header width is known from then on). */
  writer: FrameWriter<RedirFrame> | null = null;
  peerVersion = "";
  closed = false;
  /** device_connect sent and not since disconnected. */
  announced = false;
  /** device_disconnect sent and its ack (the peer has the cap) not yet in: announce again only after it. */
  awaitingAck = false;
  /** Why the peer's own device filter (filter_filter) refuses the device: it is not announced then. */
  refusedBy: string | null = null;
  /**
   * Device-state requests (set/get configuration and alt, reset; announcing) queued to run one after
   * another; `peer` ones count against MAX_QUEUED_REQUESTS (data-packets.ts) until done.
   */
  readonly steps: { readonly peer: boolean; readonly step: () => Promise<void> }[] = [];
  stepping = false;
  /** The peer's device-state requests admitted and not yet done (at most MAX_QUEUED_REQUESTS). */
  requests = 0;
  /** The device-state request being delivered was admitted with the forced verdict: answer it inval. */
  forcedRequest = false;
  /** A reset is queued and has not started: another one is merged into it (resetMerged: the one being delivered). */
  resetQueued = false;
  resetMerged = false;
  /** Data packets with a reply due, by id. */
  readonly inflight = new Map<number | string, RedirUrb>();
  readonly interrupt = new Map<number, InterruptStream>();
  readonly iso = new Map<number, IsoStream>();
  /** IN streams waiting for the peer to read what they sent (streams.ts whenReading). */
  parked: (() => void)[] = [];
  /** The transfer admit() accepted whose data is arriving; deliver() starts it. */
  current: RedirUrb | null = null;
  /** What the connection holds against its bounds, and its flow control (network-face/share.ts). */
  readonly share: PeerShare;
  /** Per-packet warnings, rate-limited. */
  readonly warnings: PeerWarnings;
  onDrained: (() => void) | null = null;
  /** Packets received (stats). */
  packets = 0;
  private readonly free: RedirUrb[] = [];

  constructor(
    readonly owner: SessionOwner,
    readonly socket: Socket,
    readonly peer: string,
    private readonly memory: SharedArrayBuffer,
    share: (s: Session) => PeerShare,
    log: FaceLogger,
  ) {
    this.reader = new RedirReader("guest", this);
    this.share = share(this);
    this.share.gate = this.reader;
    this.warnings = new PeerWarnings(log, () => this.fields());
  }

  fields(): LogFields {
    return { client: this.peer };
  }

  /** Both hellos are in: the writer frames data packets with the negotiated header from now on. */
  negotiate(n: Negotiated): void {
    this.negotiated = n;
    this.reader.setNegotiated(n);
    this.writer = new FrameWriter(this.socket, this.memory, redirCodec(n), () => this.share.written());
  }

  /** Bytes queued for the peer and not yet taken by the kernel. */
  get unsent(): number {
    // The writer counts what it queued and handed to the socket until the kernel took it; before it exists, the socket.
    return this.writer?.owed ?? this.socket.writableLength;
  }

  admit(p: RedirPacket, _typeHeader: Uint8Array): Admission {
    return this.owner.admit(this, p);
  }
  deliver(p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void {
    this.owner.deliver(this, p, typeHeader, data);
  }
  malformed(reason: string): void {
    this.owner.drop(this, reason);
  }

  /** Queue a whole pre-encoded packet, in order with the data packets' replies. */
  send(pkt: Uint8Array): void {
    if (this.closed) return;
    if (this.writer === null) {
      this.socket.write(pkt); // our hello, before the peer's
      return;
    }
    const f = this.writer.frame();
    if (f === null) return;
    f.raw = true;
    this.writer.setData(f, 0, 0, pkt, null);
  }

  /**
   * Queue a data packet's header, with `dataLength` bytes of IN data at `dataOffset` in guest memory;
   * `holder` is released once they are written. Null fields a packet type lacks stay 0.
   */
  sendData(
    type: number,
    idLow: number,
    idHigh: number,
    endpoint: number,
    status: number,
    length: number,
    dataOffset: number,
    dataLength: number,
    holder: FrameHolder | null,
    echo: RedirUrb | null = null,
  ): void {
    const w = this.writer;
    const f = this.closed || w === null ? null : w.frame();
    if (f === null) {
      holder?.released();
      return;
    }
    f.raw = false;
    f.type = type;
    f.idLow = idLow;
    f.idHigh = idHigh;
    f.endpoint = endpoint;
    f.status = status;
    f.length = length;
    f.streamId = 0;
    if (echo !== null) {
      f.request = echo.request;
      f.requestType = echo.requestType;
      f.value = echo.value;
      f.index = echo.index;
      f.streamId = echo.streamId;
    }
    w!.setData(f, dataOffset, dataLength, null, holder);
  }

  record(): RedirUrb {
    const r = this.free.pop() ?? new RedirUrb(this);
    r.verdict = null;
    r.urb = null;
    r.cancelled = false;
    r.offset = 0;
    r.length = 0;
    return r;
  }

  recycle(r: RedirUrb): void {
    this.free.push(r);
  }

  /** Stop reading and writing; the writer releases what it still holds. */
  close(): void {
    this.closed = true;
    this.reader.stop();
    if (this.writer !== null) this.writer.close();
    else this.socket.destroy();
  }
}
