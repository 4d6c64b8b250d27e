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
 * Work is linear in the bytes received: each byte is looked at once (copied
 * at most once), consumed chunks are dropped by index. The header is decoded and
 * framed by usbip/urb-header.ts (the one codec of it): a header that cannot be
 * framed ends the connection; everything else is the sink's to answer per URB.
 *
 *   HEADER --admit--> DATA (OUT bytes → target, or skipped) --> ISO (n × 16 bytes) --> sink.submit()
 *      \--block--> (stopped until resume())       CMD_UNLINK --> sink.unlink()
 */
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
  STOPPED,
}

/** Consumed chunks are dropped in one splice once this many (and half the list) piled up: amortised O(1). */
const COMPACT_AT = 64;

export class UrbReader {
  private chunks: Buffer[] = [];
  private first = 0;
  /** Read offset in chunks[first]. */
  private at = 0;
  private buffered = 0;
  private state = State.HEADER;
  private blocked = false;
  private running = false;
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

  constructor(private readonly sink: UrbReaderSink) {}

  /** Bytes received and not yet consumed (held while blocked). */
  get pending(): number {
    return this.buffered;
  }

  /** Bytes of PDUs not yet whole: what was read of the current one, and what is buffered. */
  get incomplete(): number {
    let current = 0;
    if (this.state === State.HEADER) current = this.headerFill;
    else if (this.state === State.DATA)
      current = URB_HEADER_SIZE + (this.h.directionIn ? 0 : this.h.transferBufferLength) - this.dataLeft;
    else if (this.state === State.ISO)
      current = URB_HEADER_SIZE + (this.h.directionIn ? 0 : this.h.transferBufferLength) + this.isoFill;
    return current + this.buffered;
  }

  /** Bytes of a PDU begun and not yet whole (the request clock, network-face/share.ts). */
  get partialBytes(): number {
    return this.incomplete;
  }

  /** PDUs read whole so far. */
  completed = 0;

  /** True while the sink has refused a header and resume() has not been called. */
  get isBlocked(): boolean {
    return this.blocked;
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
    return this.state === State.DATA && this.target !== null && this.buffered === 0 && !this.blocked
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

  /**
   * Copy the buffered bytes into memory of the reader's own: the caller is about to reuse the buffer
   * its chunks were read into (a socket's read buffer). Rare: only while blocked with bytes left over.
   */
  ownBuffered(): void {
    if (this.buffered === 0) return;
    const own = Buffer.allocUnsafe(this.buffered);
    this.copyOut(own, 0, this.buffered);
    this.chunks = [own];
    this.first = 0;
    this.at = 0;
    this.buffered = own.length;
  }

  push(chunk: Buffer): void {
    if (this.state === State.STOPPED || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.run();
  }

  /** Try the refused header again, then carry on with what is buffered. */
  resume(): void {
    if (!this.blocked || this.state === State.STOPPED) return;
    this.blocked = false;
    this.run();
  }

  /** Stop for good and let go of every buffered chunk. */
  stop(): void {
    this.state = State.STOPPED;
    this.chunks = [];
    this.first = 0;
    this.at = 0;
    this.buffered = 0;
    this.target = null;
  }

  private run(): void {
    if (this.running) return; // re-entered from a sink callback: the outer loop carries on
    this.running = true;
    try {
      while (!this.blocked && this.state !== State.STOPPED && this.step()) {}
    } finally {
      this.running = false;
    }
    if (this.first >= COMPACT_AT && this.first * 2 >= this.chunks.length) {
      this.chunks.splice(0, this.first);
      this.first = 0;
    }
  }

  /** One move of the state machine; false when it needs more bytes (or stopped). Bounded by the bytes. */
  private step(): boolean {
    switch (this.state) {
      case State.HEADER: {
        if (this.headerFill < URB_HEADER_SIZE) {
          if (this.buffered === 0) return false;
          this.headerFill += this.copyOut(this.header, this.headerFill, URB_HEADER_SIZE - this.headerFill);
          if (this.headerFill < URB_HEADER_SIZE) return false;
        }
        return this.onHeader();
      }
      case State.DATA: {
        if (this.dataLeft > 0) {
          if (this.buffered === 0) return false;
          const n =
            this.target === null
              ? this.skip(this.dataLeft)
              : this.copyOut(this.target, this.targetAt, this.dataLeft);
          this.targetAt += n;
          this.dataLeft -= n;
          if (this.dataLeft > 0) return false;
        }
        this.target = null;
        this.state = State.ISO;
        return true;
      }
      case State.ISO: {
        if (this.isoFill < this.isoBytes) {
          if (this.buffered === 0) return false;
          this.isoFill += this.copyOut(this.iso, this.isoFill, this.isoBytes - this.isoFill);
          if (this.isoFill < this.isoBytes) return false;
        }
        this.state = State.HEADER;
        this.headerFill = 0;
        this.completed++;
        this.sink.submit(this.h, this.iso.subarray(0, this.isoBytes));
        return true;
      }
      default:
        return false;
    }
  }

  /** A whole header is in `this.header`: frame it (urb-header.ts), then unlink, or admit the submit. */
  private onHeader(): boolean {
    const b = this.header;
    const problem = clientHeaderProblem(b);
    if (problem !== null) return this.fail(problem);
    if (headerCommand(b) === UsbipCommand.CMD_UNLINK) {
      const u = decodeUnlinkHeader(b);
      if (!this.sink.unlink(u.seqnum, u.devid, u.unlinkSeqnum)) {
        // Stay on this header (headerFill stays full): resume() offers it again.
        this.blocked = this.state !== State.STOPPED;
        return false;
      }
      this.headerFill = 0;
      this.completed++;
      return true;
    }
    const h = this.h;
    decodeSubmitHeader(b, h);
    this.target = null;
    if (!this.sink.admit(h)) {
      // Stay on this header (headerFill stays full): resume() admits it again.
      this.blocked = this.state !== State.STOPPED;
      return false;
    }
    if (this.state === State.STOPPED) return false;
    this.dataLeft = h.directionIn ? 0 : h.transferBufferLength;
    this.targetAt = this.target === null ? 0 : this.targetAt;
    this.isoBytes = h.packets * ISO_DESCRIPTOR_SIZE;
    this.isoFill = 0;
    this.state = State.DATA;
    return true;
  }

  private fail(reason: string): boolean {
    this.stop();
    this.sink.malformed(reason);
    return false;
  }

  /** Copy up to `n` buffered bytes to `out[at ..]`; returns how many. */
  private copyOut(out: Uint8Array, at: number, n: number): number {
    let done = 0;
    while (done < n && this.first < this.chunks.length) {
      const c = this.chunks[this.first]!;
      const take = Math.min(c.length - this.at, n - done);
      c.copy(out, at + done, this.at, this.at + take);
      done += take;
      this.advance(c, take);
    }
    return done;
  }

  /** Drop up to `n` buffered bytes; returns how many. */
  private skip(n: number): number {
    let done = 0;
    while (done < n && this.first < this.chunks.length) {
      const c = this.chunks[this.first]!;
      const take = Math.min(c.length - this.at, n - done);
      done += take;
      this.advance(c, take);
    }
    return done;
  }

  private advance(chunk: Buffer, n: number): void {
    this.buffered -= n;
    this.at += n;
    if (this.at === chunk.length) {
      this.chunks[this.first] = EMPTY;
      this.first++;
      this.at = 0;
      if (this.first === this.chunks.length) {
        this.chunks.length = 0;
        this.first = 0;
      }
    }
  }
}

const EMPTY = Buffer.alloc(0);
