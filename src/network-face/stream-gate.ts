/**
 * The streaming gate both servers read their peer through: the unread bytes (whatever segments TCP
 * delivered, never reassembled: util/byte-queue.ts), and the loop that walks them — admit → data → deliver,
 * in a protocol's own steps — stopping at a request the sink refuses (`stopHere`) and starting again at the
 * same request on `resume()`, stopping for good on a framing error (`fail`). A protocol's reader
 * (usbip-server/urb-reader.ts, usbredir/reader.ts) extends it with its header codec and its steps; the
 * per-peer share (share.ts) sees it as a ShareGate (stopped or not, a request half received, requests done).
 *
 * Work is linear in the bytes received: each byte is looked at once and copied at most once, to where
 * the sink said (guest memory, or a buffer of the reader's), or read by the socket straight into its
 * target when nothing is buffered ahead of it (the reader's directTarget).
 */
import { ByteQueue } from "../util/byte-queue.js";
import type { ShareGate } from "./share.js";

export abstract class StreamGate implements ShareGate {
  /** Bytes received and not yet consumed. */
  protected readonly bytes = new ByteQueue();
  /** Requests read whole so far. */
  completed = 0;
  private blocked = false;
  private stopped = false;
  /** Re-entrancy guard: a sink callback may push() or resume(); the outer loop carries on. */
  private running = false;

  /** Bytes received and not yet consumed (held while stopped at a request). */
  get pending(): number {
    return this.bytes.length;
  }

  /** Stopped at a request the sink refused, until resume(). */
  get isBlocked(): boolean {
    return this.blocked;
  }

  /** Stopped for good (a framing error, or the connection is over). */
  get isStopped(): boolean {
    return this.stopped;
  }

  /** Bytes of a request begun and not yet whole (what was read of it and what is buffered). */
  abstract get partialBytes(): number;

  push(chunk: Uint8Array): void {
    if (this.stopped || chunk.length === 0) return;
    this.bytes.push(chunk);
    this.run();
  }

  /** Offer the request the gate stopped at again, then carry on with what is buffered. */
  resume(): void {
    if (!this.blocked || this.stopped) return;
    this.blocked = false;
    this.run();
  }

  /**
   * Copy the buffered bytes into memory of the gate's own: the caller is about to reuse the buffer they
   * were read into (a socket's read buffer). Rare in steady state: only bytes left over past a request.
   */
  ownBuffered(): void {
    this.bytes.detach();
  }

  /** Stop for good and let go of every buffered byte. */
  stop(): void {
    this.stopped = true;
    this.bytes.clear();
    this.stopped_();
  }

  /** What a reader lets go of when it stops (its target). */
  protected stopped_(): void {}

  /** One move of the protocol's state machine; false when it needs more bytes, stopped here or stopped. */
  protected abstract step(): boolean;

  /** The sink refused the request: stay at it until resume(). Returns false (the step's answer). */
  protected stopHere(): false {
    this.blocked = !this.stopped;
    return false;
  }

  /** Framing is lost: stop for good, tell the sink. Returns false (the step's answer). */
  protected fail(reason: string): false {
    this.stop();
    this.malformed(reason);
    return false;
  }

  /** The sink's malformed(). */
  protected abstract malformed(reason: string): void;

  protected run(): void {
    if (this.running) return;
    this.running = true;
    try {
      while (!this.blocked && !this.stopped && this.step()) {}
    } finally {
      this.running = false;
    }
  }
}
