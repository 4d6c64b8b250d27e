/**
 * The server's reader for the URB phase of a USB/IP connection: it walks the
 * byte stream once, in whatever segments TCP delivers it, and never
 * reassembles a PDU. A CMD_SUBMIT header (48 bytes, gathered across segments
 * when it must be) goes to the sink, which admits it — and then names where
 * the OUT data goes (a guest buffer: the bytes are copied there straight from
 * the socket's chunks) — or blocks it: the reader stops where it is, keeps the
 * unread chunks, and starts again at the same header on resume(). The iso
 * descriptors that follow the data are gathered into one reused array.
 *
 * The chunks, the loop, stopping and resuming are the network face's streaming
 * gate (network-face/stream-gate.ts); this file is USB/IP's steps. The header
 * is decoded and framed by usbip/urb-header.ts (the one codec of it): a header
 * that cannot be framed ends the connection; everything else is the sink's to
 * answer per URB.
 *
 *   HEADER --admit--> DATA (OUT bytes → target, or skipped) --> ISO (n × 16 bytes) --> sink.submit()
 *      \--block--> (stopped until resume())       CMD_UNLINK --> sink.unlink()
 */
import { StreamGate } from "../network-face/stream-gate.js";
import { MAX_ISO_PACKETS } from "../urb/limits.js";
import { ISO_DESCRIPTOR_SIZE, URB_HEADER_SIZE, UsbipCommand } from "../usbip/protocol.js";
import {
  clientHeaderProblem,
  decodeSubmitHeader,
  decodeUnlinkHeader,
  emptySubmitHeader,
  headerCommand,
  type SubmitHeader,
} from "../usbip/urb-header.js";

export type { SubmitHeader } from "../usbip/urb-header.js";

export interface UrbReaderSink {
  /**
   * A whole CMD_SUBMIT header. Return false to stop reading here (the same header comes again after
   * resume(), which only takes effect once admit has returned); true to go on, after calling
   * `reader.receiveInto(...)` for OUT data that should land somewhere (else it is read and dropped).
   */
  admit(h: SubmitHeader): boolean;
  /**
   * The admitted submit is complete: its OUT data landed, `iso` holds its packet descriptors (wire
   * form). `iso` is a view of the reader's own reused buffer: copy what you keep.
   */
  submit(h: SubmitHeader, iso: Uint8Array): void;
  /** A CMD_UNLINK; false stops the reader at it, as a refused admit does. */
  unlink(seqnum: number, devid: number, unlinkSeqnum: number): boolean;
  /** Framing is lost: nothing more is read; end the connection. */
  malformed(reason: string): void;
}

enum State {
  HEADER,
  DATA,
  ISO,
}

export class UrbReader extends StreamGate {
  private state = State.HEADER;
  private readonly header = Buffer.alloc(URB_HEADER_SIZE);
  private headerFill = 0;
  private readonly h: SubmitHeader = emptySubmitHeader();
  /** OUT data still to come for the current submit, and where it goes (null: dropped). */
  private dataLeft = 0;
  private target: Uint8Array | null = null;
  private targetAt = 0;
  private readonly iso = Buffer.alloc(MAX_ISO_PACKETS * ISO_DESCRIPTOR_SIZE);
  private isoFill = 0;
  private isoBytes = 0;

  constructor(private readonly sink: UrbReaderSink) {
    super();
  }

  /** Bytes of PDUs not yet whole: what was read of the current one, and what is buffered. */
  get incomplete(): number {
    let current = 0;
    if (this.state === State.HEADER) current = this.headerFill;
    else if (this.state === State.DATA)
      current = URB_HEADER_SIZE + (this.h.directionIn ? 0 : this.h.transferBufferLength) - this.dataLeft;
    else current = URB_HEADER_SIZE + (this.h.directionIn ? 0 : this.h.transferBufferLength) + this.isoFill;
    return this.isStopped ? 0 : current + this.pending;
  }

  /** Bytes of a PDU begun and not yet whole (the request clock, network-face/share.ts). */
  get partialBytes(): number {
    return this.incomplete;
  }

  /** During admit(): the admitted submit's OUT data (all transfer_buffer_length bytes) goes to `bytes[offset ..]`. */
  receiveInto(bytes: Uint8Array, offset: number): void {
    if (offset < 0 || offset + this.h.transferBufferLength > bytes.length) {
      throw new RangeError(
        `OUT data target [${offset}, +${this.h.transferBufferLength}) does not fit ${bytes.length} bytes`,
      );
    }
    this.target = bytes;
    this.targetAt = offset;
  }

  /**
   * OUT data the socket may read straight into its target now (nothing else buffered): its length,
   * 0 when none; the bytes go to `directTarget`, then receivedDirect(n).
   */
  get directLength(): number {
    return this.state === State.DATA && this.target !== null && this.pending === 0 && !this.isBlocked
      ? this.dataLeft
      : 0;
  }

  /** The OUT data the socket may read straight into now (directLength bytes of the target), or null. */
  get directTarget(): Uint8Array | null {
    const n = this.directLength;
    return n === 0 ? null : this.target!.subarray(this.targetAt, this.targetAt + n);
  }

  /** `n` (≤ directLength) bytes of OUT data were read straight into the target. */
  receivedDirect(n: number): void {
    if (n <= 0 || n > this.directLength)
      throw new RangeError(`receivedDirect(${n}) outside [1, ${this.directLength}]`);
    this.targetAt += n;
    this.dataLeft -= n;
    this.run();
  }

  protected override stopped_(): void {
    this.target = null;
  }

  protected malformed(reason: string): void {
    this.sink.malformed(reason);
  }

  /** One move of the state machine; false when it needs more bytes (or stopped). Bounded by the bytes. */
  protected step(): boolean {
    const bytes = this.bytes;
    switch (this.state) {
      case State.HEADER: {
        if (this.headerFill < URB_HEADER_SIZE) {
          this.headerFill += bytes.copyOut(this.header, this.headerFill, URB_HEADER_SIZE - this.headerFill);
          if (this.headerFill < URB_HEADER_SIZE) return false;
        }
        return this.onHeader();
      }
      case State.DATA: {
        if (this.dataLeft > 0) {
          const n =
            this.target === null
              ? bytes.dropUpTo(this.dataLeft)
              : bytes.copyOut(this.target, this.targetAt, this.dataLeft);
          this.targetAt += n;
          this.dataLeft -= n;
          if (this.dataLeft > 0) return false;
        }
        this.target = null;
        this.state = State.ISO;
        return true;
      }
      default: {
        if (this.isoFill < this.isoBytes) {
          this.isoFill += bytes.copyOut(this.iso, this.isoFill, this.isoBytes - this.isoFill);
          if (this.isoFill < this.isoBytes) return false;
        }
        this.state = State.HEADER;
        this.headerFill = 0;
        this.completed++;
        this.sink.submit(this.h, this.iso.subarray(0, this.isoBytes));
        return true;
      }
    }
  }

  /** A whole header is in `this.header`: frame it (urb-header.ts), then unlink, or admit the submit. */
  private onHeader(): boolean {
    const b = this.header;
    const problem = clientHeaderProblem(b);
    if (problem !== null) return this.fail(problem);
    if (headerCommand(b) === UsbipCommand.CMD_UNLINK) {
      const u = decodeUnlinkHeader(b);
      // Refused: stay on this header (headerFill stays full): resume() offers it again.
      if (!this.sink.unlink(u.seqnum, u.devid, u.unlinkSeqnum)) return this.stopHere();
      this.headerFill = 0;
      this.completed++;
      return true;
    }
    const h = this.h;
    decodeSubmitHeader(b, h);
    this.target = null;
    // Refused: stay on this header (headerFill stays full): resume() admits it again.
    if (!this.sink.admit(h)) return this.stopHere();
    if (this.isStopped) return false;
    this.dataLeft = h.directionIn ? 0 : h.transferBufferLength;
    this.targetAt = this.target === null ? 0 : this.targetAt;
    this.isoBytes = h.packets * ISO_DESCRIPTOR_SIZE;
    this.isoFill = 0;
    this.state = State.DATA;
    return true;
  }
}
