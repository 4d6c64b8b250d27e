/**
 * The replies of one USB/IP connection, coalesced: every RET_SUBMIT and
 * RET_UNLINK queued during one turn of the event loop leaves in one writev at
 * its end (a microtask), in the order queued. The headers, small IN data and
 * iso data are packed into one buffer per flush; the data of an IN transfer of
 * ZERO_COPY_MIN bytes or more is written straight from guest memory, and its
 * guest buffer stays held until the kernel has taken the bytes (the holder's
 * `released()` runs then, or when the connection closes).
 *
 * `unsent` counts the bytes handed to the socket and not yet written to the
 * kernel: the server stops starting a client's requests while it is over the
 * bound, so a client that does not read cannot make the server buffer more.
 */
import type { Socket } from "node:net";
import { URB_HEADER_SIZE, UsbipCommand } from "./protocol.js";

/** IN data at least this long is written from guest memory instead of being copied. */
export const ZERO_COPY_MIN = 4096;

/** What holds guest memory until its reply has been written. */
export interface ReplyHolder {
  released(): void;
}

/** One queued reply; pooled, so a steady stream allocates none. */
class Reply {
  command = 0;
  seqnum = 0;
  status = 0;
  actualLength = 0;
  startFrame = 0;
  numberOfPackets = 0;
  errorCount = 0;
  /** IN data in guest memory (offset, length), or length 0. */
  dataOffset = 0;
  dataLength = 0;
  /** Bytes sent after the data (iso: the compacted data, then the descriptors). */
  tail: Uint8Array | null = null;
  holder: ReplyHolder | null = null;
}

/** The holders of one flush, released together once its last byte reached the kernel. */
interface Flush {
  readonly bytes: number;
  readonly holders: ReplyHolder[];
}

export class ReplyWriter {
  /** Queued replies are queue[0 .. queued); the objects past that wait for reuse. */
  private readonly queue: Reply[] = [];
  private queued = 0;
  private scheduled = false;
  private closed = false;
  private readonly inProgress = new Set<Flush>();
  private readonly memory: Buffer;
  /** Bytes handed to the socket and not yet written to the kernel. */
  unsent = 0;

  constructor(
    private readonly socket: Socket,
    memory: SharedArrayBuffer,
    /** After a flush reached the kernel (unsent went down). */
    private readonly onWritten: () => void,
  ) {
    this.memory = Buffer.from(memory);
  }

  /** Replies queued for the next flush. */
  get pending(): number {
    return this.queued;
  }

  /**
   * Queue a RET_SUBMIT. `dataLength` bytes of IN data at `dataOffset` in guest memory follow the header,
   * then `tail`; `holder` is released once they are written (or dropped).
   */
  retSubmit(
    seqnum: number,
    status: number,
    actualLength: number,
    startFrame: number,
    numberOfPackets: number,
    errorCount: number,
    dataOffset: number,
    dataLength: number,
    tail: Uint8Array | null,
    holder: ReplyHolder | null,
  ): void {
    if (this.closed) {
      holder?.released();
      return;
    }
    if (dataLength > 0 && (dataOffset < 0 || dataOffset + dataLength > this.memory.length)) {
      throw new RangeError(`reply data [${dataOffset}, +${dataLength}) is outside guest memory`);
    }
    const r = this.next();
    r.command = UsbipCommand.RET_SUBMIT;
    r.seqnum = seqnum;
    r.status = status;
    r.actualLength = actualLength;
    r.startFrame = startFrame;
    r.numberOfPackets = numberOfPackets;
    r.errorCount = errorCount;
    r.dataOffset = dataOffset;
    r.dataLength = dataLength;
    r.tail = tail;
    r.holder = holder;
  }

  retUnlink(seqnum: number, status: number): void {
    if (this.closed) return;
    const r = this.next();
    r.command = UsbipCommand.RET_UNLINK;
    r.seqnum = seqnum;
    r.status = status;
    r.actualLength = 0;
    r.startFrame = 0;
    r.numberOfPackets = 0;
    r.errorCount = 0;
    r.dataOffset = 0;
    r.dataLength = 0;
    r.tail = null;
    r.holder = null;
  }

  /**
   * No more writes: the socket is destroyed (so nothing reads guest memory any more) and every holder
   * still waiting is released once; replies queued afterwards are dropped, their holders released at once.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    for (let i = 0; i < this.queued; i++) this.recycle(this.queue[i]!)?.released();
    this.queued = 0;
    for (const f of this.inProgress) for (const h of f.holders) h.released();
    this.inProgress.clear();
    this.unsent = 0;
  }

  private next(): Reply {
    if (!this.scheduled && !this.closed) {
      this.scheduled = true;
      queueMicrotask(this.flushNow);
    }
    let r = this.queue[this.queued];
    if (r === undefined) {
      r = new Reply();
      this.queue.push(r);
    }
    this.queued++;
    return r;
  }

  /** Clear a reply for reuse; returns the holder it had. */
  private recycle(r: Reply): ReplyHolder | null {
    const holder = r.holder;
    r.holder = null;
    r.tail = null;
    return holder;
  }

  private readonly flushNow = (): void => {
    this.scheduled = false;
    const n = this.queued;
    if (n === 0 || this.closed) return;
    let packed = 0;
    let total = 0;
    for (let i = 0; i < n; i++) {
      const r = this.queue[i]!;
      const tail = r.tail === null ? 0 : r.tail.length;
      packed += URB_HEADER_SIZE + tail + (r.dataLength < ZERO_COPY_MIN ? r.dataLength : 0);
      total += URB_HEADER_SIZE + tail + r.dataLength;
    }
    const out = Buffer.allocUnsafe(packed);
    // Holders of zero-copy data wait for the write; the others' data is copied, so they go at once.
    const holders: ReplyHolder[] = [];
    const copied: ReplyHolder[] = [];
    const flush: Flush = { bytes: total, holders };
    const socket = this.socket;
    socket.cork();
    let from = 0;
    let at = 0;
    for (let i = 0; i < n; i++) {
      const r = this.queue[i]!;
      out.writeUInt32BE(r.command, at);
      out.writeUInt32BE(r.seqnum >>> 0, at + 4);
      // devid, direction, ep: 0, as Linux's stub_tx sends them.
      out.fill(0, at + 8, at + 20);
      out.writeInt32BE(r.status | 0, at + 20);
      if (r.command === UsbipCommand.RET_SUBMIT) {
        out.writeInt32BE(r.actualLength | 0, at + 24);
        out.writeInt32BE(r.startFrame | 0, at + 28);
        out.writeInt32BE(r.numberOfPackets | 0, at + 32);
        out.writeInt32BE(r.errorCount | 0, at + 36);
        out.fill(0, at + 40, at + 48);
      } else {
        out.fill(0, at + 24, at + 48);
      }
      at += URB_HEADER_SIZE;
      if (r.dataLength >= ZERO_COPY_MIN) {
        socket.write(out.subarray(from, at));
        socket.write(this.memory.subarray(r.dataOffset, r.dataOffset + r.dataLength));
        from = at;
      } else if (r.dataLength > 0) {
        this.memory.copy(out, at, r.dataOffset, r.dataOffset + r.dataLength);
        at += r.dataLength;
      }
      if (r.tail !== null) {
        out.set(r.tail, at);
        at += r.tail.length;
      }
      const holder = this.recycle(r);
      if (holder !== null) (r.dataLength >= ZERO_COPY_MIN ? holders : copied).push(holder);
    }
    this.queued = 0;
    this.unsent += total;
    this.inProgress.add(flush);
    socket.write(out.subarray(from, at), () => this.written(flush));
    socket.uncork();
    for (const h of copied) h.released();
  };

  private written(flush: Flush): void {
    if (!this.inProgress.delete(flush)) return; // closed meanwhile: already released
    this.unsent -= flush.bytes;
    for (const h of flush.holders) h.released();
    this.onWritten();
  }
}
