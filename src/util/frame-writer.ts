/**
 * The replies of one network connection, coalesced — shared by the USB/IP and usbredir servers, which
 * differ only in their headers. Every frame queued during one turn of the event loop leaves in one writev
 * at its end (a microtask), in the order queued. Headers, small IN data and tails are packed into one
 * buffer per flush; IN data of ZERO_COPY_MIN bytes or more is written straight from guest memory, and its
 * guest buffer stays held until the kernel has taken the bytes (the holder's `released()` runs then, or
 * when the connection closes).
 *
 * `unsent` counts the bytes handed to the socket and not yet written to the kernel: a server stops
 * starting a client's requests while it is over its bound, so a peer that does not read cannot make the
 * server buffer more.
 */
import type { Socket } from "node:net";

/** IN data at least this long is written from guest memory instead of being copied. */
export const ZERO_COPY_MIN = 4096;

/** What holds guest memory until its frame has been written. */
export interface FrameHolder {
  released(): void;
}

/** The part of a queued frame the writer handles; a protocol's frame adds its header fields. */
export interface Frame {
  /** IN data in guest memory (offset, length), or length 0. */
  dataOffset: number;
  dataLength: number;
  /** Bytes sent after the data. */
  tail: Uint8Array | null;
  holder: FrameHolder | null;
}

/** A protocol's header: its size and how it is written in front of the frame's data. */
export interface FrameCodec<F extends Frame> {
  create(): F;
  headerSize(f: F): number;
  /** The largest headerSize: what a queued frame is counted as before its header is written. */
  readonly maxHeaderSize: number;
  /** Write `f`'s header at `out[at ..]` (headerSize bytes). */
  writeHeader(out: Buffer, at: number, f: F): void;
}

/** The holders of one flush, released together once its last byte reached the kernel. */
interface Flush {
  readonly bytes: number;
  readonly holders: FrameHolder[];
}

export class FrameWriter<F extends Frame> {
  /** Queued frames are queue[0 .. queued); the objects past that wait for reuse. */
  private readonly queue: F[] = [];
  private queued = 0;
  private scheduled = false;
  private closed = false;
  private readonly inProgress = new Set<Flush>();
  private readonly memory: Buffer;
  /** Bytes handed to the socket and not yet written to the kernel. */
  unsent = 0;
  /** Bytes of the frames queued for the next flush: their data and tails, and at most maxHeaderSize each. */
  private queuedBytes = 0;

  constructor(
    private readonly socket: Socket,
    memory: SharedArrayBuffer,
    private readonly codec: FrameCodec<F>,
    /** After a flush reached the kernel (unsent went down). */
    private readonly onWritten: () => void,
  ) {
    this.memory = Buffer.from(memory);
  }

  /** Frames queued for the next flush. */
  get pending(): number {
    return this.queued;
  }

  /** What the peer is owed and has not taken: `unsent` and the frames queued for this turn's flush. */
  get owed(): number {
    return this.unsent + this.queuedBytes;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * A frame to fill (its header fields, then `data`/`tail`/`holder` through `setData`); it leaves in this
   * turn's flush. Null when the writer is closed: the caller releases what it holds itself.
   */
  frame(): F | null {
    if (this.closed) return null;
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flushNow);
    }
    let f = this.queue[this.queued];
    if (f === undefined) {
      f = this.codec.create();
      this.queue.push(f);
    }
    this.queued++;
    this.queuedBytes += this.codec.maxHeaderSize;
    f.dataOffset = 0;
    f.dataLength = 0;
    f.tail = null;
    f.holder = null;
    return f;
  }

  /** The frame's IN data in guest memory, then `tail`; `holder` is released once they are written (or dropped). */
  setData(
    f: F,
    dataOffset: number,
    dataLength: number,
    tail: Uint8Array | null,
    holder: FrameHolder | null,
  ): void {
    if (dataLength > 0 && (dataOffset < 0 || dataOffset + dataLength > this.memory.length)) {
      throw new RangeError(`reply data [${dataOffset}, +${dataLength}) is outside guest memory`);
    }
    f.dataOffset = dataOffset;
    f.dataLength = dataLength;
    f.tail = tail;
    f.holder = holder;
    // frame() counted the largest header; its fields are set now, so its own size is known.
    this.queuedBytes +=
      this.codec.headerSize(f) - this.codec.maxHeaderSize + dataLength + (tail === null ? 0 : tail.length);
  }

  /**
   * No more writes: the socket is destroyed (so nothing reads guest memory any more) and every holder
   * still waiting is released once; frames asked for afterwards are refused (null).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    for (let i = 0; i < this.queued; i++) this.recycle(this.queue[i]!)?.released();
    this.queued = 0;
    this.queuedBytes = 0;
    for (const f of this.inProgress) for (const h of f.holders) h.released();
    this.inProgress.clear();
    this.unsent = 0;
  }

  /** Clear a frame for reuse; returns the holder it had. */
  private recycle(f: F): FrameHolder | null {
    const holder = f.holder;
    f.holder = null;
    f.tail = null;
    return holder;
  }

  private readonly flushNow = (): void => {
    this.scheduled = false;
    const n = this.queued;
    if (n === 0 || this.closed) return;
    const codec = this.codec;
    let packed = 0;
    let total = 0;
    for (let i = 0; i < n; i++) {
      const f = this.queue[i]!;
      const head = codec.headerSize(f);
      const tail = f.tail === null ? 0 : f.tail.length;
      packed += head + tail + (f.dataLength < ZERO_COPY_MIN ? f.dataLength : 0);
      total += head + tail + f.dataLength;
    }
    const out = Buffer.allocUnsafe(packed);
    // Holders of zero-copy data wait for the write; the others' data is copied, so they go at once.
    const holders: FrameHolder[] = [];
    const copied: FrameHolder[] = [];
    const flush: Flush = { bytes: total, holders };
    const socket = this.socket;
    socket.cork();
    let from = 0;
    let at = 0;
    for (let i = 0; i < n; i++) {
      const f = this.queue[i]!;
      codec.writeHeader(out, at, f);
      at += codec.headerSize(f);
      if (f.dataLength >= ZERO_COPY_MIN) {
        socket.write(out.subarray(from, at));
        socket.write(this.memory.subarray(f.dataOffset, f.dataOffset + f.dataLength));
        from = at;
      } else if (f.dataLength > 0) {
        this.memory.copy(out, at, f.dataOffset, f.dataOffset + f.dataLength);
        at += f.dataLength;
      }
      if (f.tail !== null) {
        out.set(f.tail, at);
        at += f.tail.length;
      }
      const holder = this.recycle(f);
      if (holder !== null) (f.dataLength >= ZERO_COPY_MIN ? holders : copied).push(holder);
    }
    this.queued = 0;
    this.queuedBytes = 0;
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
