/**
 * One USB/IP client connection (a Session) and its CMD_SUBMITs (ServerUrb records). The session holds the
 * connection's phase, its stream reader and reply writer, the URBs it has in flight by seqnum with what
 * they hold of its share (engine slots, scratch frames), and where its next read lands. The records are
 * pooled per session and reuse their engine URB objects, so a steady stream allocates no record and no URB
 * per submit. What a session's events do is its owner's business (urb-phase.ts).
 */
import type { Socket } from "node:net";
import type { GuestOffset } from "../dma-map/types.js";
import type {
  BufferSegment,
  BulkTransfer,
  ControlTransfer,
  InterruptTransfer,
  IsoPacketSpec,
  Urb,
  UrbCallback,
  UrbCompletion,
} from "../frontend/index.js";
import type { LogFields } from "../network-face/log.js";
import type { UrbStatus } from "../urb/status.js";
import type { EndpointNum } from "../urb/types.js";
import type { SetupPacket } from "../usb/index.js";
import { TransferFlag } from "../usbip/protocol.js";
import { ByteQueue } from "../util/byte-queue.js";
import type { DeviceSlot, EndpointEntry } from "./exported-device.js";
import { type ReplyHolder, ReplyWriter } from "./reply-writer.js";
import { type SubmitHeader, UrbReader, type UrbReaderSink } from "./urb-reader.js";

/** An exported device as its importing session sees it. */
export type Slot = DeviceSlot<Session>;

/** What a session's reader, writer and engine completions report to (the server's URB phase). */
export interface SessionOwner {
  /** The reader has a whole CMD_SUBMIT header; `forced` answers a request that waited too long. */
  admit(s: Session, h: SubmitHeader, forced: UrbStatus | null): boolean;
  /** The admitted submit is whole. */
  submit(s: Session, r: ServerUrb, h: SubmitHeader, iso: Uint8Array): void;
  unlink(s: Session, seqnum: number, devid: number, target: number): void;
  malformed(s: Session, reason: string): void;
  /** Bytes of the URB phase. */
  received(s: Session, chunk: Buffer): void;
  /** An engine URB (or a local port reset) of `r.session` completed. */
  completed(r: ServerUrb, c: UrbCompletion): void;
  /** Something of `s`'s share came back. */
  progress(s: Session): void;
  /** A flush of `s`'s replies reached the kernel. */
  written(s: Session): void;
}

/** What a CMD_SUBMIT became: the engine transfer types, or handled here (SET_ADDRESS, port reset). */
export enum Kind {
  CONTROL,
  BULK,
  INTERRUPT,
  ISO,
  LOCAL,
}

/**
 * One CMD_SUBMIT from the moment it is admitted until its reply is written; pooled per session, and
 * its engine URB objects are reused (the controller recycles their records), so a steady stream
 * allocates no record per URB.
 */
export class ServerUrb implements ReplyHolder {
  seqnum = 0;
  kind = Kind.CONTROL;
  directionIn = false;
  /** Local answer decided at admission (bad endpoint, SET_ADDRESS, …): no engine URB. */
  verdict: UrbStatus | null = null;
  bmRequestType = 0;
  bRequest = 0;
  wValue = 0;
  /** Its buffer in the device's region of guest memory (length 0: none). */
  offset = 0;
  length = 0;
  isoFrames = 0;
  /** Iso packets (offset, length) as the client laid them out. */
  iso: IsoPacketSpec[] = [];
  /** The engine URB now submitted, or null. */
  urb: Urb | null = null;
  /** Seqnums of CMD_UNLINKs waiting for this URB. */
  readonly unlinks: number[] = [];
  private readonly segment = { offset: 0 as GuestOffset, length: 0 };
  private readonly segments = [this.segment];
  private control: Mutable<ControlTransfer> | null = null;
  private bulk: Mutable<BulkTransfer> | null = null;
  private interrupt: Mutable<InterruptTransfer> | null = null;
  readonly done: UrbCallback;

  constructor(readonly session: Session) {
    this.done = (c) => session.owner.completed(this, c);
  }

  /** The writer is done with this record's IN data. */
  released(): void {
    this.session.release(this);
    this.session.owner.progress(this.session);
  }

  /** The engine URB for this submit, reusing this record's objects where the type allows. */
  engineUrb(slot: Slot, h: SubmitHeader, entry: EndpointEntry): Urb {
    const segment = this.segment;
    segment.offset = this.offset as GuestOffset;
    segment.length = this.length;
    const buffer = this.length > 0 ? this.segments : NO_SEGMENTS;
    const endpoint = h.ep as EndpointNum;
    const shortNotOk = h.directionIn && (h.transferFlags & TransferFlag.SHORT_NOT_OK) !== 0;
    const zeroPacket = !h.directionIn && (h.transferFlags & TransferFlag.ZERO_PACKET) !== 0;
    const interval = h.interval >= 1 ? h.interval : Math.max(1, entry.interval);
    // Control, bulk and interrupt reuse one object each: set the fields they share, then their own.
    let u: Mutable<ControlTransfer | BulkTransfer | InterruptTransfer>;
    switch (this.kind) {
      case Kind.CONTROL: {
        if (this.control === null) {
          const setup = { bmRequestType: 0, bRequest: 0, wValue: 0, wIndex: 0, wLength: 0 };
          this.control = { type: "control", ...this.base(slot), setup };
        }
        const setup = this.control.setup as Mutable<SetupPacket>;
        setup.bmRequestType = h.bmRequestType;
        setup.bRequest = h.bRequest;
        setup.wValue = h.wValue;
        setup.wIndex = h.wIndex;
        setup.wLength = h.wLength;
        u = this.control;
        break;
      }
      case Kind.BULK: {
        if (this.bulk === null) this.bulk = { type: "bulk", ...this.base(slot), zeroPacket: false };
        this.bulk.zeroPacket = zeroPacket;
        u = this.bulk;
        break;
      }
      case Kind.INTERRUPT: {
        if (this.interrupt === null) {
          this.interrupt = { type: "interrupt", ...this.base(slot), zeroPacket: false, interval };
        }
        this.interrupt.zeroPacket = zeroPacket;
        this.interrupt.interval = interval;
        u = this.interrupt;
        break;
      }
      default:
        return {
          type: "isochronous",
          port: slot.port,
          device: slot.address,
          endpoint,
          directionIn: h.directionIn,
          buffer: this.length > 0 ? [{ offset: this.offset as GuestOffset, length: this.length }] : [],
          interval: Math.min(interval, 0xffff),
          iso: {
            asap: (h.transferFlags & TransferFlag.ISO_ASAP) !== 0,
            startFrame: h.startFrame >>> 0,
            packets: this.iso,
          },
        };
    }
    u.endpoint = endpoint;
    u.directionIn = h.directionIn;
    u.buffer = buffer;
    u.shortNotOk = shortNotOk;
    return u;
  }

  /** The fields every transfer type shares, for a new reusable URB object on this device. */
  private base(slot: Slot) {
    return {
      port: slot.port,
      device: slot.address,
      endpoint: 0 as EndpointNum,
      directionIn: false,
      buffer: NO_SEGMENTS,
      shortNotOk: false,
    };
  }
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
const NO_SEGMENTS: readonly BufferSegment[] = Object.freeze([]);

export type Phase = "op" | "importing" | "urb" | "closed";

/** Why a session's reader is stopped at a header. */
export enum Blocked {
  NO,
  /** Its unsent replies are over the bound: wait for the client to read. */
  SEND,
  /** Its share of engine slots, guest memory or scratch frames is in use: wait for its URBs. */
  SHARE,
}

/** Each connection's read buffer; OUT data of at least DIRECT_READ_MIN bytes is read into guest memory instead. */
const READ_BUFFER_BYTES = 128 * 1024;
const DIRECT_READ_MIN = 16 * 1024;

export class Session implements UrbReaderSink {
  readonly queue = new ByteQueue();
  phase: Phase = "op";
  slot: Slot | null = null;
  reader: UrbReader | null = null;
  writer: ReplyWriter | null = null;
  readonly inflight = new Map<number, ServerUrb>();
  private readonly free: ServerUrb[] = [];
  /** The admitted submit whose data and iso descriptors are still arriving. */
  private current: ServerUrb | null = null;
  blocked = Blocked.NO;
  /** Set when a blocked request has waited too long: admit it with this status. */
  private forced: UrbStatus | null = null;
  paused = false;
  stallTimer: NodeJS.Timeout | null = null;
  blockTimer: NodeJS.Timeout | null = null;
  /** Engine slots and scratch frames this client's URBs hold now. */
  urbs = 0;
  isoFrames = 0;
  /** Called once the last in-flight URB of a closed session came back. */
  onDrained: (() => void) | null = null;

  /** Set by accept() right after construction. */
  socket!: Socket;
  /** OUT bytes the socket read straight into guest memory (no copy on the way). */
  directBytes = 0;
  /** What reads land in, except OUT data read straight into guest memory (urb-reader.ts). */
  readonly staging = Buffer.allocUnsafe(READ_BUFFER_BYTES);

  constructor(
    readonly owner: SessionOwner,
    readonly peer: string,
  ) {}

  /** The structured fields of this client's log lines (JSON log format). */
  fields(): LogFields {
    return this.slot !== null ? { client: this.peer, busid: this.slot.busid } : { client: this.peer };
  }

  /** Where the next read lands: the rest of the OUT data that is due, in its guest buffer, or staging. */
  nextReadBuffer(memory: Buffer): Uint8Array {
    const reader = this.reader;
    if (this.phase !== "urb" || reader === null) return this.staging;
    const length = reader.directLength;
    if (length < DIRECT_READ_MIN) return this.staging;
    const at = reader.directOffset;
    return memory.subarray(at, at + length);
  }

  /** Into the URB phase: the reader and writer, fed first with whatever followed the import request. */
  startUrbPhase(memory: SharedArrayBuffer): void {
    this.phase = "urb";
    this.writer = new ReplyWriter(this.socket, memory, () => this.owner.written(this));
    this.reader = new UrbReader(this);
    const rest = this.queue.length > 0 ? Buffer.from(this.queue.take(this.queue.length)) : null;
    this.queue.clear();
    if (rest !== null) this.owner.received(this, rest);
  }

  record(): ServerUrb {
    const r = this.free.pop() ?? new ServerUrb(this);
    r.verdict = null;
    r.urb = null;
    r.length = 0;
    r.isoFrames = 0;
    r.unlinks.length = 0;
    return r;
  }

  /** Its reply is written (or will never be): give back its guest memory, recycle the record. */
  release(r: ServerUrb): void {
    const slot = this.slot;
    if (r.length > 0 && slot !== null)
      slot.memory.release({ offset: r.offset as GuestOffset, length: r.length });
    r.length = 0;
    if (r.kind === Kind.ISO) r.iso = [];
    this.free.push(r);
  }

  // UrbReaderSink: the reader calls these as the stream arrives.
  admit(h: SubmitHeader): boolean {
    return this.owner.admit(this, h, this.takeForced());
  }
  submit(h: SubmitHeader, iso: Uint8Array): void {
    const r = this.current!;
    this.current = null;
    this.owner.submit(this, r, h, iso);
  }
  unlink(seqnum: number, devid: number, unlinkSeqnum: number): void {
    this.owner.unlink(this, seqnum, devid, unlinkSeqnum);
  }
  malformed(reason: string): void {
    this.owner.malformed(this, reason);
  }

  admitted(r: ServerUrb): void {
    this.current = r;
  }
  force(status: UrbStatus): void {
    this.forced = status;
  }
  private takeForced(): UrbStatus | null {
    const f = this.forced;
    this.forced = null;
    return f;
  }
  /** The submit being received when the connection ended: it never reached the engine. */
  abandonCurrent(): void {
    const r = this.current;
    this.current = null;
    if (r === null) return;
    if (this.inflight.get(r.seqnum) === r) {
      this.inflight.delete(r.seqnum);
      this.urbs--;
      this.isoFrames -= r.isoFrames;
    }
    this.release(r);
  }
}
