/**
 * The parse gate of a usbredir connection: it frames the peer's byte stream into packets and checks
 * each against the protocol's rules before anything acts on it. One reader per connection, either
 * side (`peer` names who sends the bytes it reads: "guest" on usbvirt's host side).
 *
 *   HEADER (12/16 + type header bytes) --sink.admit--> DATA (copied where the sink says) --> sink.deliver
 *       \--block--> stopped at this header until resume()
 *
 * Framing errors end the connection (`sink.malformed`), never throw: the first packet must be a hello;
 * the type must be one the peer's role sends; `length` must hold the type header the negotiated
 * capabilities call for, and the data must be what that header implies (transfer data only in its data
 * direction, at most MAX_REDIR_DATA bytes; bounded hello and filter data). Whatever is well framed but
 * wrong for the device (bad endpoint, unknown interface, …) is the sink's to answer, not the reader's.
 * Work is linear in the bytes received; data is copied once, from the socket's chunks to its target. The
 * chunks, the loop, stopping and resuming are the network face's streaming gate (network-face/stream-gate.ts);
 * this file is usbredir's steps.
 */
import { StreamGate } from "../network-face/stream-gate.js";
import {
  decodeTypeHeader,
  emptyPacket,
  framingProblem,
  HELLO_NEGOTIATED,
  MAX_REDIR_DATA,
  type Negotiated,
  type RedirPacket,
  type RedirRole,
  RedirType,
  redirTypeName,
  typeHeaderSize,
} from "./protocol.js";

/** What the sink wants done with an admitted packet's data. */
export const BLOCK = "block";
export type Admission = Uint8Array | typeof BLOCK | null;

export interface RedirReaderSink {
  /**
   * A packet's headers are in and sound. Return where its `p.dataLength` data bytes go (a view of
   * exactly that length), null to have the reader gather them into a buffer of its own (small data:
   * hello, filter, replies a client reads), or BLOCK to stop here until `resume()` (the same packet
   * is admitted again then).
   */
  admit(p: RedirPacket, typeHeader: Uint8Array): Admission;
  /** The packet is whole; `data` is the admitted view or the reader's buffer (valid during the call). */
  deliver(p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void;
  /** Framing is lost: nothing more is read; end the connection with `reason`. */
  malformed(reason: string): void;
}

enum State {
  HEADER,
  DATA,
}

const EMPTY = new Uint8Array(0);
const MAX_TYPE_HEADER = 288;

export class RedirReader extends StreamGate {
  private readonly p = emptyPacket();
  /** The packet's header and type header, copied out of the stream (one buffer, one view, reused). */
  private readonly head = new Uint8Array(16 + MAX_TYPE_HEADER);
  private readonly headView = new DataView(this.head.buffer);
  private typeHeaderLength = 0;
  private state = State.HEADER;
  private negotiated: Negotiated = HELLO_NEGOTIATED;
  private helloSeen = false;
  private target: Uint8Array = EMPTY;
  /** The target is the sink's (guest memory), not the reader's own buffer. */
  private targetAdmitted = false;
  private filled = 0;

  constructor(
    private readonly peer: RedirRole,
    private readonly sink: RedirReaderSink,
  ) {
    super();
  }

  /** Bytes received of a packet not yet delivered: a partial header, or the headers and part of the data. */
  get partialBytes(): number {
    if (this.state !== State.DATA) return this.pending;
    return this.negotiated.headerSize + this.typeHeaderLength + this.filled + this.pending;
  }

  /** Headers are 16 bytes from now on if both sides have 64-bit ids; call from deliver(hello). */
  setNegotiated(n: Negotiated): void {
    this.negotiated = n;
  }

  /**
   * The rest of the current packet's data when it goes to the sink's view and nothing is buffered ahead
   * of it: the socket may read straight into it (then `receivedDirect`). Null otherwise.
   */
  get directTarget(): Uint8Array | null {
    if (this.state !== State.DATA || !this.targetAdmitted || this.pending > 0 || this.isStopped) return null;
    return this.target.subarray(this.filled);
  }

  /** `n` bytes were read straight into `directTarget`. */
  receivedDirect(n: number): void {
    this.filled += n;
    this.run();
  }

  protected malformed(reason: string): void {
    this.sink.malformed(reason);
  }

  protected step(): boolean {
    return this.state === State.HEADER ? this.readHeaders() : this.readData();
  }

  /** Frame and check the next packet's headers, then admit it. False when more bytes are needed or it stopped. */
  private readHeaders(): boolean {
    const hs = this.negotiated.headerSize;
    const bytes = this.bytes;
    if (bytes.length < hs) return false;
    const head = this.head;
    const v = this.headView;
    bytes.peekInto(head.subarray(0, hs));
    const p = this.p;
    p.type = v.getUint32(0, true);
    const length = v.getUint32(4, true);
    p.idLow = v.getUint32(8, true);
    p.idHigh = hs === 16 ? v.getUint32(12, true) : 0;
    if (!this.helloSeen && p.type !== RedirType.HELLO) {
      return this.fail(`first packet is ${redirTypeName(p.type)}, not hello`);
    }
    if (this.helloSeen && p.type === RedirType.HELLO) return this.fail("a second hello");
    const th = typeHeaderSize(p.type, this.negotiated.caps, this.peer);
    if (th < 0) return this.fail(`${redirTypeName(p.type)} is not a packet the ${this.peer} side sends`);
    if (length < th) {
      return this.fail(`${redirTypeName(p.type)} length ${length} is shorter than its ${th}-byte header`);
    }
    p.dataLength = length - th;
    if (p.dataLength > MAX_REDIR_DATA) {
      return this.fail(`${redirTypeName(p.type)} of ${length} bytes (at most ${MAX_REDIR_DATA} of data)`);
    }
    if (bytes.length < hs + th) return false;
    bytes.peekInto(head.subarray(0, hs + th));
    this.typeHeaderLength = th;
    decodeTypeHeader(p, this.headView, hs, this.negotiated.caps);
    const problem = framingProblem(p, this.peer);
    if (problem !== null) return this.fail(problem);
    const typeHeader = head.subarray(hs, hs + th);
    const admitted = this.sink.admit(p, typeHeader);
    if (this.isStopped) return false;
    // Refused: the headers stay in the stream; resume() admits the same packet again.
    if (admitted === BLOCK) return this.stopHere();
    if (admitted !== null && admitted.length !== p.dataLength) {
      throw new Error(`usbredir reader: admitted a ${admitted.length}-byte target for ${p.dataLength} bytes`);
    }
    bytes.skip(hs + th);
    if (p.type === RedirType.HELLO) this.helloSeen = true;
    this.target = admitted ?? (p.dataLength > 0 ? new Uint8Array(p.dataLength) : EMPTY);
    this.targetAdmitted = admitted !== null;
    this.filled = 0;
    this.state = State.DATA;
    return true;
  }

  /** Copy what has arrived of the data into its target; deliver once whole. */
  private readData(): boolean {
    this.filled += this.bytes.copyOut(this.target, this.filled, this.target.length - this.filled);
    if (this.filled < this.target.length) return false;
    this.state = State.HEADER;
    const data = this.target;
    this.target = EMPTY;
    const hs = this.negotiated.headerSize;
    this.completed++;
    this.sink.deliver(this.p, this.head.subarray(hs, hs + this.typeHeaderLength), data);
    return true;
  }
}
