/**
 * The replies of one USB/IP connection (RET_SUBMIT, RET_UNLINK), coalesced by the shared FrameWriter
 * (src/util/frame-writer.ts): every reply queued during one turn leaves in one writev, in the order
 * queued; IN data of ZERO_COPY_MIN bytes or more is written straight from guest memory, its buffer held
 * until the kernel has taken it. The 48-byte header is written by usbip/urb-header.ts (as stub_tx sends it).
 */
import type { Socket } from "node:net";
import { URB_HEADER_SIZE, UsbipCommand } from "../usbip/protocol.js";
import { type ReplyHeader, writeReplyHeader } from "../usbip/urb-header.js";
import { type Frame, type FrameCodec, type FrameHolder, FrameWriter } from "../util/frame-writer.js";

export { ZERO_COPY_MIN } from "../util/frame-writer.js";
export type ReplyHolder = FrameHolder;

/** One queued reply; pooled by the writer, so a steady stream allocates none. */
interface Reply extends Frame, ReplyHeader {}

const USBIP_REPLY: FrameCodec<Reply> = {
  create: () => ({
    command: 0,
    seqnum: 0,
    status: 0,
    actualLength: 0,
    startFrame: 0,
    numberOfPackets: 0,
    errorCount: 0,
    dataOffset: 0,
    dataLength: 0,
    tail: null,
    holder: null,
  }),
  headerSize: () => URB_HEADER_SIZE,
  maxHeaderSize: URB_HEADER_SIZE,
  writeHeader: writeReplyHeader,
};

export class ReplyWriter {
  private readonly frames: FrameWriter<Reply>;

  constructor(socket: Socket, memory: SharedArrayBuffer, onWritten: () => void) {
    this.frames = new FrameWriter(socket, memory, USBIP_REPLY, onWritten);
  }

  /** Bytes handed to the socket and not yet written to the kernel. */
  get unsent(): number {
    return this.frames.unsent;
  }

  /** Reply bytes queued or handed to the socket and not yet written to the kernel. */
  get owed(): number {
    return this.frames.owed;
  }

  /** Replies queued for the next flush. */
  get pending(): number {
    return this.frames.pending;
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
    const r = this.frames.frame();
    if (r === null) {
      holder?.released();
      return;
    }
    r.command = UsbipCommand.RET_SUBMIT;
    r.seqnum = seqnum;
    r.status = status;
    r.actualLength = actualLength;
    r.startFrame = startFrame;
    r.numberOfPackets = numberOfPackets;
    r.errorCount = errorCount;
    this.frames.setData(r, dataOffset, dataLength, tail, holder);
  }

  retUnlink(seqnum: number, status: number): void {
    const r = this.frames.frame();
    if (r === null) return;
    r.command = UsbipCommand.RET_UNLINK;
    r.seqnum = seqnum;
    r.status = status;
    r.actualLength = 0;
    r.startFrame = 0;
    r.numberOfPackets = 0;
    r.errorCount = 0;
  }

  /**
   * No more writes: the socket is destroyed (so nothing reads guest memory any more) and every holder
   * still waiting is released once; replies queued afterwards are dropped, their holders released at once.
   */
  close(): void {
    this.frames.close();
  }
}
