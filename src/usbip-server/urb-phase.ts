/**
 * The URB phase of every client (stub_rx.c / stub_tx.c): a CMD_SUBMIT admitted against its client's share
 * (engine slots, scratch frames, guest memory, unsent replies) or answered here (bad endpoint, SET_ADDRESS,
 * port reset), started as an engine URB, its completion written as RET_SUBMIT (IN data from guest memory);
 * CMD_UNLINK with the stub's contract; and each client's flow control (reads paused while its reader waits
 * for its share, the stall and blocked-request timers). The per-URB path: it allocates nothing per submit
 * in steady state. The server (server.ts) owns the connections and what ends them.
 */

import type { IsoPacketSpec, UrbCompletion, VirtualHostController } from "../frontend/index.js";
import { isoDescriptorFrames } from "../frontend/validate.js";
import type { FaceLogger } from "../network-face/log.js";
import { Blocked } from "../network-face/share.js";
import { ECONNRESET, EINVAL, ENOMEM, EPIPE, OK, type UrbStatus } from "../urb/status.js";
import {
  EndpointType,
  endpointAddress,
  isPortReset,
  isRequest,
  isSetAddress,
  RequestTypeByte,
  StandardRequest,
} from "../usb/index.js";
import { ISO_DESCRIPTOR_SIZE } from "../usbip/protocol.js";
import { CONTROL_ENTRY } from "./exported-device.js";
import { Kind, type ServerUrb, type Session, type SessionOwner, type Slot } from "./session.js";
import type { SubmitHeader } from "./urb-reader.js";

/** What the URB phase takes of the server's options (the bounds themselves are each session's share). */
export interface UrbPhaseLimits {
  /** Scratch frames one client may hold (iso descriptors). */
  readonly scratchShare: number;
  /** Stall a forwarded SET_FEATURE(PORT_RESET) instead of resetting the device. */
  readonly stallPortReset: boolean;
}

/** What the URB phase needs of the server: ending a connection, resetting a device through the engine. */
export interface UrbPhaseHost {
  /** Malformed or hostile input: log, close this connection only. */
  drop(s: Session, reason: string): void;
  /** Port reset, then SET_ADDRESS, both through the engine. */
  resetAndAddress(slot: Slot): Promise<void>;
}

export class UrbPhase implements SessionOwner {
  private readonly scratchShare: number;
  private readonly stallPortReset: boolean;

  constructor(
    private readonly hcd: VirtualHostController,
    /** The guest memory URB buffers live in. */
    private readonly memoryBytes: Uint8Array,
    private readonly log: FaceLogger,
    limits: UrbPhaseLimits,
    private readonly host: UrbPhaseHost,
  ) {
    this.scratchShare = limits.scratchShare;
    this.stallPortReset = limits.stallPortReset;
  }

  /** OUT data the socket read straight into its guest buffer. */
  receivedDirect(s: Session, n: number): void {
    s.directBytes += n;
    this.hcd.batch(() => s.reader!.receivedDirect(n));
    s.share.updateFlow();
  }

  /** Bytes of the URB phase: the reader walks them; every submit they complete goes to the engine in one batch. */
  received(s: Session, chunk: Buffer): void {
    this.hcd.batch(() => {
      s.reader!.push(chunk);
      s.reader!.ownBuffered();
    });
    s.share.updateFlow();
  }

  /**
   * The reader has a whole CMD_SUBMIT header: check what the stream's framing allows, then start it
   * if the client's share allows (else stop the reader here). Every answer counts against the unsent
   * bound, local ones too: past it nothing is admitted. A request that waited blockedRequestMs for its
   * share is answered -ENOMEM.
   */
  admit(s: Session, h: SubmitHeader): boolean {
    const share = s.share;
    if (share.overUnsent) return this.block(s, Blocked.SEND);
    const slot = s.slot!;
    if (h.devid !== slot.devid) {
      this.drop(s, `CMD_SUBMIT for devid 0x${h.devid.toString(16)}, imported 0x${slot.devid.toString(16)}`);
      return false;
    }
    if (s.inflight.has(h.seqnum)) {
      this.drop(s, `seqnum ${h.seqnum} is already in flight`);
      return false;
    }
    const r = s.record();
    r.seqnum = h.seqnum;
    r.directionIn = h.directionIn;
    r.bmRequestType = h.bmRequestType;
    r.bRequest = h.bRequest;
    r.wValue = h.wValue;
    if (share.takeForced()) return this.answerLocally(s, r, ENOMEM);
    let type: number;
    if (h.ep > 15) return this.answerLocally(s, r, EINVAL);
    if (h.ep === 0) {
      if (isSetAddress(h)) {
        // vhci never forwards it; the device already has the address the server gave it.
        return this.answerLocally(s, r, OK);
      }
      type = EndpointType.CONTROL;
    } else {
      const table = slot.endpoints.get(slot.configuration) ?? slot.anyEndpoints;
      const entry = table.get(endpointAddress(h.ep, h.directionIn));
      if (entry === undefined) return this.answerLocally(s, r, EINVAL);
      type = entry.type;
    }
    if ((type === EndpointType.ISOCHRONOUS) !== h.packets > 0) return this.answerLocally(s, r, EINVAL);
    const length = h.transferBufferLength;
    if (length > slot.memoryBytes) return this.answerLocally(s, r, ENOMEM);
    // The client's share: engine slots, scratch frames, guest memory.
    if (share.urbsFull) return this.block(s, Blocked.SHARE, r);
    const isoFrames = h.packets > 0 ? isoDescriptorFrames(h.packets) : 0;
    if (isoFrames > this.scratchShare) return this.answerLocally(s, r, ENOMEM);
    if (share.isoFrames + isoFrames > this.scratchShare) return this.block(s, Blocked.SHARE, r);
    if (length > 0) {
      const range = slot.memory.tryAllocateTransfer(length);
      if (range === null) return this.block(s, Blocked.SHARE, r);
      r.offset = range.offset;
      r.length = length;
      if (!h.directionIn) s.reader!.receiveInto(this.memoryBytes, range.offset);
    }
    r.kind =
      type === EndpointType.CONTROL
        ? Kind.CONTROL
        : type === EndpointType.BULK
          ? Kind.BULK
          : type === EndpointType.INTERRUPT
            ? Kind.INTERRUPT
            : Kind.ISO;
    r.isoFrames = isoFrames;
    share.isoFrames += isoFrames;
    share.urbs++;
    s.inflight.set(r.seqnum, r);
    s.admitted(r);
    return true;
  }

  /** Admit a request that the server answers itself with `status` (its data, if any, is read and dropped). */
  private answerLocally(s: Session, r: ServerUrb, status: UrbStatus): boolean {
    r.verdict = status;
    r.kind = Kind.LOCAL;
    s.admitted(r);
    return true;
  }

  /** Stop the reader at this request until the client's share frees up (or it reads its replies). */
  private block(s: Session, why: Blocked.SEND | Blocked.SHARE, r: ServerUrb | null = null): boolean {
    if (r !== null) s.release(r);
    s.share.block(why);
    return false;
  }

  /** The admitted submit is whole (data in guest memory, iso descriptors in `iso`): answer it or start it. */
  submit(s: Session, r: ServerUrb, h: SubmitHeader, iso: Uint8Array): void {
    if (r.kind === Kind.LOCAL) {
      s.writer!.retSubmit(r.seqnum, r.verdict ?? EINVAL, 0, 0, 0, 0, 0, 0, null, null);
      s.release(r);
      return;
    }
    if (r.kind === Kind.ISO) {
      const problem = this.isoLayout(r, h.packets, iso);
      if (problem !== null) {
        s.inflight.delete(r.seqnum);
        s.share.urbs--;
        s.share.isoFrames -= r.isoFrames;
        s.writer!.retSubmit(r.seqnum, EINVAL, 0, 0, 0, 0, 0, 0, null, null);
        s.warnings.warn(`${s.peer}: iso CMD_SUBMIT seqnum ${r.seqnum} refused: ${problem}`);
        s.release(r);
        return;
      }
    }
    const slot = s.slot!;
    if (r.kind === Kind.CONTROL && isPortReset(h)) {
      this.portReset(s, r);
      return;
    }
    const table = slot.endpoints.get(slot.configuration) ?? slot.anyEndpoints;
    const entry =
      h.ep === 0 ? CONTROL_ENTRY : (table.get(endpointAddress(h.ep, h.directionIn)) ?? CONTROL_ENTRY);
    const urb = r.engineUrb(slot, h, entry);
    r.urb = urb;
    this.hcd.submitWithCallback(urb, r.done);
  }

  /**
   * Iso packet descriptors (wire form) against the buffer: each inside it, none overlapping, and the
   * lengths within the buffer. Null when they are sound (they are then kept in `r.iso`), else why not.
   */
  private isoLayout(r: ServerUrb, packets: number, iso: Uint8Array): string | null {
    const v = new DataView(iso.buffer, iso.byteOffset, iso.byteLength);
    const specs: IsoPacketSpec[] = [];
    let ordered = true;
    let lastEnd = 0;
    for (let i = 0; i < packets; i++) {
      const offset = v.getUint32(i * ISO_DESCRIPTOR_SIZE);
      const length = v.getUint32(i * ISO_DESCRIPTOR_SIZE + 4);
      if (offset + length > r.length) {
        return `packet ${i} (offset ${offset}, length ${length}) ends past the ${r.length}-byte buffer`;
      }
      if (offset < lastEnd) ordered = false;
      lastEnd = offset + length;
      specs.push({ offset, length });
    }
    if (!ordered) {
      // Out of order is allowed; overlap is not (the reply's data would repeat bytes).
      const sorted = [...specs].sort((a, b) => a.offset - b.offset);
      for (let i = 1; i < sorted.length; i++) {
        const prev = sorted[i - 1]!;
        if (sorted[i]!.offset < prev.offset + prev.length) {
          return `packets overlap at offset ${sorted[i]!.offset}`;
        }
      }
    }
    r.iso = specs;
    return null;
  }

  /** A forwarded SET_FEATURE(PORT_RESET): reset in the engine, then give the device its address back. */
  private portReset(s: Session, r: ServerUrb): void {
    const slot = s.slot!;
    r.kind = Kind.LOCAL;
    const answer = (status: UrbStatus) =>
      this.completed(r, { status, actualLength: 0, startFrame: 0, errorCount: 0 });
    if (this.stallPortReset) {
      queueMicrotask(() => answer(EPIPE));
      return;
    }
    this.host.resetAndAddress(slot).then(
      () => answer(OK),
      (err: unknown) => {
        this.log.warn(`${s.peer}: port reset of ${slot.busid} failed: ${(err as Error).message}`, s.fields());
        answer(EINVAL);
      },
    );
  }

  /** An engine URB (or a local port reset) of `r.session` completed: queue its reply. */
  completed(r: ServerUrb, c: UrbCompletion): void {
    const s = r.session;
    s.inflight.delete(r.seqnum);
    s.share.urbs--;
    s.share.isoFrames -= r.isoFrames;
    r.isoFrames = 0;
    r.urb = null;
    if (s.phase !== "urb") {
      s.release(r);
      if (s.phase === "closed" && s.inflight.size === 0) s.onDrained?.();
      return;
    }
    const writer = s.writer!;
    if (r.unlinks.length > 0 && c.status === ECONNRESET) {
      // Cancelled: RET_UNLINK -ECONNRESET, and no RET_SUBMIT for it.
      for (const u of r.unlinks) writer.retUnlink(u, ECONNRESET);
      s.release(r);
    } else {
      if (
        c.status === OK &&
        r.kind === Kind.CONTROL &&
        isRequest(r, RequestTypeByte.DEVICE_OUT, StandardRequest.SET_CONFIGURATION)
      ) {
        s.slot!.configuration = r.wValue & 0xff;
      }
      // IN data goes from guest memory: the writer holds the buffer until it is written.
      const held = r.kind !== Kind.ISO && r.directionIn && c.actualLength > 0;
      if (r.kind === Kind.ISO) this.isoReply(s, r, c);
      else if (held) {
        const actual = Math.min(c.actualLength, r.length);
        writer.retSubmit(r.seqnum, c.status, actual, 0, 0, 0, r.offset, actual, null, r);
      } else writer.retSubmit(r.seqnum, c.status, c.actualLength, 0, 0, 0, 0, 0, null, null);
      // RET_UNLINK 0 for unlinks that came too late: after the RET_SUBMIT, as stub_tx orders them.
      for (const u of r.unlinks) writer.retUnlink(u, OK);
      if (!held) s.release(r);
    }
    s.share.progress();
  }

  /** RET_SUBMIT of an iso URB: each packet's actual bytes compacted (IN), then the descriptors. */
  private isoReply(s: Session, r: ServerUrb, c: UrbCompletion): void {
    const packets = r.iso;
    const results = c.isoPackets;
    let actual = 0;
    let errors = 0;
    for (let i = 0; i < packets.length; i++) {
      const got = Math.min(results?.[i]?.actualLength ?? 0, packets[i]!.length);
      actual += got;
      if ((results?.[i]?.status ?? c.status) !== 0) errors++;
    }
    const dataBytes = r.directionIn ? actual : 0;
    const tail = new Uint8Array(dataBytes + packets.length * ISO_DESCRIPTOR_SIZE);
    const v = new DataView(tail.buffer);
    let at = 0;
    for (let i = 0; i < packets.length; i++) {
      const p = packets[i]!;
      const got = Math.min(results?.[i]?.actualLength ?? 0, p.length);
      if (r.directionIn && got > 0) {
        tail.set(this.memoryBytes.subarray(r.offset + p.offset, r.offset + p.offset + got), at);
        at += got;
      }
      const d = dataBytes + i * ISO_DESCRIPTOR_SIZE;
      v.setUint32(d, p.offset);
      v.setUint32(d + 4, p.length);
      v.setUint32(d + 8, got);
      v.setInt32(d + 12, results?.[i]?.status ?? c.status);
    }
    s.writer!.retSubmit(r.seqnum, c.status, actual, c.startFrame, packets.length, errors, 0, 0, tail, null);
  }

  /** CMD_UNLINK: its RET_UNLINK counts against the unsent bound like any reply (false: stop the reader). */
  unlink(s: Session, seqnum: number, devid: number, target: number): boolean {
    const slot = s.slot!;
    if (devid !== slot.devid) {
      this.drop(s, `CMD_UNLINK for devid 0x${devid.toString(16)}, imported 0x${slot.devid.toString(16)}`);
      return false;
    }
    if (s.share.overUnsent) return this.block(s, Blocked.SEND);
    const r = s.inflight.get(target);
    if (r === undefined) {
      // Already completed: its RET_SUBMIT is ahead of this in the stream.
      s.writer!.retUnlink(seqnum, OK);
      return true;
    }
    // At most one RET_UNLINK per URB in flight waits with it: a repeated unlink of the same URB is answered
    // now as one that came too late (0), so a peer cannot pile up replies on a URB that never completes.
    if (r.unlinks.length > 0) {
      s.writer!.retUnlink(seqnum, OK);
      return true;
    }
    r.unlinks.push(seqnum);
    if (r.urb !== null) void this.hcd.unlink(r.urb);
    return true;
  }

  malformed(s: Session, reason: string): void {
    this.drop(s, reason);
  }

  private drop(s: Session, reason: string): void {
    this.host.drop(s, reason);
  }
}
