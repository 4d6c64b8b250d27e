/**
 * One USB/IP client connection (a Session) and its CMD_SUBMITs (ServerUrb records). The session holds the
 * connection's phase, its stream reader and reply writer, the URBs it has in flight by seqnum with what
 * they hold of its share (engine slots, scratch frames), and where its next read lands. The records are
 * pooled per session and reuse their engine URB objects, so a steady stream allocates no record and no URB
 * per submit. What a session's events do is its owner's business (urb-phase.ts).
 */
import type { Socket } from "node:net";
import type { GuestOffset } from "../dma-map/types.js";
import type { IsoPacketSpec, Urb, UrbCallback, UrbCompletion } from "../frontend/index.js";
import { type FaceLogger, type LogFields, PeerWarnings } from "../network-face/log.js";
import { PooledUrb } from "../network-face/pooled-urb.js";
import type { PeerShare } from "../network-face/share.js";
import type { UrbStatus } from "../urb/status.js";
import type { EndpointNum } from "../urb/types.js";
import { TransferFlag } from "../usbip/protocol.js";
import { ByteQueue } from "../util/byte-queue.js";
import type { DeviceSlot, EndpointEntry } from "./exported-device.js";
import { type ReplyHolder, ReplyWriter } from "./reply-writer.js";
import { type SubmitHeader, UrbReader, type UrbReaderSink } from "./urb-reader.js";

/** An exported device as its importing session sees it. */
export type Slot = DeviceSlot<Session>;

/** What a session's reader, writer and engine completions report to (the server's URB phase). */
export interface SessionOwner {
  /** The reader has a whole CMD_SUBMIT header: go on (true) or stop at it. */
  admit(s: Session, h: SubmitHeader): boolean;
  /** The admitted submit is whole. */
  submit(s: Session, r: ServerUrb, h: SubmitHeader, iso: Uint8Array): void;
  /** A CMD_UNLINK: false stops the reader at it (its reply would pass the unsent bound). */
  unlink(s: Session, seqnum: number, devid: number, target: number): boolean;
  malformed(s: Session, reason: string): void;
  /** Bytes of the URB phase (the session keeps no reference to `chunk`). */
  received(s: Session, chunk: Buffer): void;
  /** An engine URB (or a local port reset) of `r.session` completed. */
  completed(r: ServerUrb, c: UrbCompletion): void;
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
export class ServerUrb extends PooledUrb implements ReplyHolder {
  seqnum = 0;
  kind = Kind.CONTROL;
  directionIn = false;
  /** Local answer decided at admission (bad endpoint, SET_ADDRESS, …): no engine URB. */
  verdict: UrbStatus | null = null;
  bmRequestType = 0;
  bRequest = 0;
  wValue = 0;
  isoFrames = 0;
  /** Iso packets (offset, length) as the client laid them out. */
  iso: IsoPacketSpec[] = [];
  /** Seqnums of CMD_UNLINKs waiting for this URB. */
  readonly unlinks: number[] = [];
  readonly done: UrbCallback;

  constructor(readonly session: Session) {
    super();
    this.done = (c) => session.owner.completed(this, c);
  }

  /** The writer is done with this record's IN data. */
  released(): void {
    this.session.release(this);
    this.session.share.progress();
  }

  /** The engine URB for this submit, reusing this record's objects where the type allows. */
  engineUrb(slot: Slot, h: SubmitHeader, entry: EndpointEntry): Urb {
    const endpoint = h.ep as EndpointNum;
    const interval = h.interval >= 1 ? h.interval : Math.max(1, entry.interval);
    if (this.kind === Kind.ISO) {
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
    const spec = this.spec;
    spec.kind = this.kind === Kind.CONTROL ? "control" : this.kind === Kind.BULK ? "bulk" : "interrupt";
    spec.port = slot.port;
    spec.device = slot.address;
    spec.endpoint = endpoint;
    spec.directionIn = h.directionIn;
    spec.shortNotOk = h.directionIn && (h.transferFlags & TransferFlag.SHORT_NOT_OK) !== 0;
    spec.zeroPacket = !h.directionIn && (h.transferFlags & TransferFlag.ZERO_PACKET) !== 0;
    spec.interval = interval;
    const setup = spec.setup;
    setup.bmRequestType = h.bmRequestType;
    setup.bRequest = h.bRequest;
    setup.wValue = h.wValue;
    setup.wIndex = h.wIndex;
    setup.wLength = h.wLength;
    return this.transfer();
  }
}

export type Phase = "op" | "importing" | "urb" | "closed";

export class Session implements UrbReaderSink {
  /** Management-phase bytes (and what followed the import request, until the URB phase starts). */
  readonly queue = new ByteQueue();
  phase: Phase = "op";
  slot: Slot | null = null;
  reader: UrbReader | null = null;
  writer: ReplyWriter | null = null;
  readonly inflight = new Map<number, ServerUrb>();
  private readonly free: ServerUrb[] = [];
  /** The admitted submit whose data and iso descriptors are still arriving. */
  private current: ServerUrb | null = null;
  /** What the client's requests hold against its bounds, and its flow control (network-face/share.ts). */
  readonly share: PeerShare;
  /** Per-packet warnings, rate-limited. */
  readonly warnings: PeerWarnings;
  /** Called once the last in-flight URB of a closed session came back. */
  onDrained: (() => void) | null = null;
  /** OUT bytes the socket read straight into guest memory (no copy on the way). */
  directBytes = 0;

  constructor(
    readonly owner: SessionOwner,
    readonly peer: string,
    readonly socket: Socket,
    share: (s: Session) => PeerShare,
    log: FaceLogger,
  ) {
    this.share = share(this);
    this.warnings = new PeerWarnings(log, () => this.fields());
    // The management phase's gate, for the request clock: a request half received is in the queue.
    const queue = this.queue;
    const session = this;
    this.share.gate = {
      get isBlocked() {
        return session.phase !== "op";
      },
      resume() {},
      get partialBytes() {
        return queue.length;
      },
      completed: 0,
    };
  }

  /** The structured fields of this client's log lines (JSON log format). */
  fields(): LogFields {
    return this.slot !== null ? { client: this.peer, busid: this.slot.busid } : { client: this.peer };
  }

  /** The OUT data due that the socket may read straight into guest memory, or null. */
  directTarget(): Uint8Array | null {
    return this.phase === "urb" ? (this.reader?.directTarget ?? null) : null;
  }

  /** Into the URB phase: the reader and writer, fed first with whatever followed the import request. */
  startUrbPhase(memory: SharedArrayBuffer): void {
    this.phase = "urb";
    this.writer = new ReplyWriter(this.socket, memory, () => this.share.written());
    this.reader = new UrbReader(this);
    this.share.gate = this.reader;
    this.share.handshakeDone();
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
    return this.owner.admit(this, h);
  }
  submit(h: SubmitHeader, iso: Uint8Array): void {
    const r = this.current!;
    this.current = null;
    this.owner.submit(this, r, h, iso);
  }
  unlink(seqnum: number, devid: number, unlinkSeqnum: number): boolean {
    return this.owner.unlink(this, seqnum, devid, unlinkSeqnum);
  }
  malformed(reason: string): void {
    this.owner.malformed(this, reason);
  }

  admitted(r: ServerUrb): void {
    this.current = r;
  }
  /** The submit being received when the connection ended: it never reached the engine. */
  abandonCurrent(): void {
    const r = this.current;
    this.current = null;
    if (r === null) return;
    if (this.inflight.get(r.seqnum) === r) {
      this.inflight.delete(r.seqnum);
      this.share.urbs--;
      this.share.isoFrames -= r.isoFrames;
    }
    this.release(r);
  }
}
