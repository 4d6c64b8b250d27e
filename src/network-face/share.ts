/**
 * One peer's share of a network server, and its flow control — the same for USB/IP and usbredir.
 *
 * A share counts what the peer's requests hold (engine slots, scratch frames; its guest memory is its
 * region's allocator) against the bounds (bounds.ts), and runs the one flow-control loop:
 * - a request that would pass a bound is not started: the gate stops at it (`block`) and reading pauses;
 *   SEND (replies unread over maxUnsent) waits for the peer to read, SHARE (slots, frames, memory) for its
 *   own URBs to come back, at most blockedMs while none does — then the request is admitted with the
 *   forced verdict (each protocol answers it with its error status);
 * - `progress` (something of the share came back) and `written` (a flush reached the kernel) resume it;
 * - a peer over the unsent bound that does not read for stalledMs is dropped;
 * - a request begun and not finished for requestMs, and a handshake not done in handshakeMs, end the
 *   connection (the clock of the first runs only while the peer is the one to send: not while blocked).
 */
import type { OnReadOpts, Socket } from "node:net";
import type { PeerBounds } from "./bounds.js";

/** The gate (a protocol's stream reader) as the share sees it. */
export interface ShareGate {
  /** Stopped at a request it may not start. */
  readonly isBlocked: boolean;
  /** Try the request it stopped at again. */
  resume(): void;
  /** Bytes of a request begun and not yet whole (what was read of it and what is buffered). */
  readonly partialBytes: number;
  /** Requests whole so far (a counter: the request clock restarts when it moves). */
  readonly completed: number;
}

/** What the share needs of its connection. */
export interface ShareHost {
  /** Run `fn` with the engine's submissions batched (one doorbell). */
  batch(fn: () => void): void;
  /** End the connection (a bound passed, or hostile input). */
  drop(reason: string): void;
  /** Reply bytes queued or handed to the socket and not yet written to the kernel. */
  owed(): number;
  /** Guest memory the peer's requests hold now (for the log line of a forced request). */
  memoryInUse(): number;
  /** A request waited blockedMs for its share: say so (the request is then admitted with the forced verdict). */
  forcing(waitedMs: number): void;
  /** The peer read its replies down below the bound (streams that parked for it go on). */
  drained?(): void;
}

/** Why a share's gate is stopped at a request. */
export enum Blocked {
  NO,
  /** Its unsent replies are over the bound: wait for the peer to read. */
  SEND,
  /** Its share of engine slots, guest memory or scratch frames is in use: wait for its URBs. */
  SHARE,
}

export class PeerShare {
  /** Engine slots and scratch frames the peer's requests hold now. */
  urbs = 0;
  isoFrames = 0;
  blocked = Blocked.NO;
  /** Reads paused (the gate is stopped). */
  paused = false;
  closed = false;
  /** The gate of the phase the connection is in (null: nothing gated yet). */
  gate: ShareGate | null = null;
  private forced = false;
  private stallTimer: NodeJS.Timeout | null = null;
  private blockTimer: NodeJS.Timeout | null = null;
  private handshakeTimer: NodeJS.Timeout | null = null;
  private requestTimer: NodeJS.Timeout | null = null;
  /** The request being received: the gate's `completed` when it began, and when (0: none). */
  private requestMark = -1;
  private requestSince = 0;

  constructor(
    private readonly socket: Socket,
    readonly bounds: PeerBounds,
    private readonly host: ShareHost,
  ) {}

  /** Replies unread over the bound: no request may start. */
  get overUnsent(): boolean {
    return this.host.owed() > this.bounds.maxUnsent;
  }

  /** Every engine slot of the share is in use. */
  get urbsFull(): boolean {
    return this.urbs >= this.bounds.maxUrbs;
  }

  /**
   * The gate stops at a request (return the gate's "stop" from its admit); SHARE arms the blocked-request
   * timer, after which the request is admitted with the forced verdict.
   */
  block(why: Blocked.SEND | Blocked.SHARE): void {
    this.blocked = why;
    if (why === Blocked.SEND) {
      // What the peer is owed counts this turn's replies at their largest; the writer's flush (a microtask
      // queued with the first of them, so before this one) replaces that by their bytes. If that brings it
      // under the bound, no write callback will say so (the kernel may never take the rest): look again.
      queueMicrotask(this.recheckSend);
      return;
    }
    if (this.blockTimer !== null) return;
    this.blockTimer = setTimeout(() => {
      this.blockTimer = null;
      if (this.closed || this.blocked !== Blocked.SHARE) return;
      this.host.forcing(this.bounds.blockedMs);
      this.forced = true;
      this.progress();
    }, this.bounds.blockedMs);
  }

  private readonly recheckSend = (): void => {
    if (!this.closed && this.blocked === Blocked.SEND && !this.overUnsent) this.progress();
  };

  /** Whether the request now admitted must get the forced verdict (once). */
  takeForced(): boolean {
    const f = this.forced;
    this.forced = false;
    return f;
  }

  /** Something of the share came back (a URB, guest memory, a flush): try the request the gate stopped at. */
  progress(): void {
    if (this.closed || this.blocked === Blocked.NO) return;
    if (this.blockTimer !== null) {
      clearTimeout(this.blockTimer);
      this.blockTimer = null;
    }
    this.blocked = Blocked.NO;
    const gate = this.gate;
    if (gate !== null) this.host.batch(() => gate.resume());
    this.updateFlow();
  }

  /** A flush of the peer's replies reached the kernel. */
  written(): void {
    if (this.closed || this.overUnsent) return;
    if (this.stallTimer !== null) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.host.drained?.();
    if (this.blocked === Blocked.SEND) this.progress();
  }

  /**
   * After every read and every resume: reads paused while the gate is stopped; the stall timer runs while
   * replies pile up unread; the request clock runs while a request is half received.
   */
  updateFlow(): void {
    if (this.closed) return;
    const pause = this.gate?.isBlocked ?? false;
    if (pause !== this.paused) {
      this.paused = pause;
      if (pause) this.socket.pause();
      else this.socket.resume();
    }
    if (this.stallTimer === null && this.overUnsent) {
      this.stallTimer = setTimeout(() => {
        this.stallTimer = null;
        if (this.closed || !this.overUnsent) return;
        this.host.drop(
          `peer stopped reading: ${this.host.owed()} bytes unsent for ${this.bounds.stalledMs} ms`,
        );
      }, this.bounds.stalledMs);
    }
    this.watchRequest();
  }

  /** The request clock: started when a request is first seen half received, restarted when one completes. */
  watchRequest(): void {
    const gate = this.gate;
    if (this.closed || gate === null || this.bounds.requestMs === 0) return;
    if (gate.isBlocked || gate.partialBytes === 0) {
      this.requestSince = 0;
      return;
    }
    if (this.requestSince === 0 || gate.completed !== this.requestMark) {
      this.requestMark = gate.completed;
      this.requestSince = performance.now();
    }
    if (this.requestTimer === null) this.armRequestTimer(this.bounds.requestMs);
  }

  private armRequestTimer(ms: number): void {
    this.requestTimer = setTimeout(
      () => {
        this.requestTimer = null;
        if (this.closed || this.requestSince === 0) return;
        const gate = this.gate;
        if (
          gate === null ||
          gate.isBlocked ||
          gate.partialBytes === 0 ||
          gate.completed !== this.requestMark
        ) {
          this.requestSince = 0;
          return;
        }
        const waited = performance.now() - this.requestSince;
        if (waited >= this.bounds.requestMs) {
          this.host.drop(
            `a request begun ${Math.round(waited)} ms ago is not finished (${gate.partialBytes} bytes of it in; ` +
              `requestTimeoutMs ${this.bounds.requestMs})`,
          );
        } else this.armRequestTimer(this.bounds.requestMs - waited);
      },
      Math.max(1, Math.ceil(ms)),
    );
  }

  /** The handshake (management phase, hello) must be done within handshakeMs, or `onLate` ends it. */
  startHandshake(onLate: (ms: number) => void): void {
    if (this.bounds.handshakeMs === 0 || this.handshakeTimer !== null) return;
    this.handshakeTimer = setTimeout(() => {
      this.handshakeTimer = null;
      if (!this.closed) onLate(this.bounds.handshakeMs);
    }, this.bounds.handshakeMs);
  }

  handshakeDone(): void {
    if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
  }

  /** The connection is over: every timer stops. */
  close(): void {
    this.closed = true;
    for (const t of [this.stallTimer, this.blockTimer, this.handshakeTimer, this.requestTimer]) {
      if (t !== null) clearTimeout(t);
    }
    this.stallTimer = this.blockTimer = this.handshakeTimer = this.requestTimer = null;
  }
}

/** Each connection's read buffer; OUT data of at least DIRECT_READ_MIN bytes is read into guest memory instead. */
export const READ_BUFFER_BYTES = 128 * 1024;
export const DIRECT_READ_MIN = 16 * 1024;

/** Where a connection's reads go. */
export interface ReadSink {
  /** Nothing more is read. */
  readonly readsDone: boolean;
  /** The rest of the OUT data that is due, where it goes in guest memory (nothing buffered before it), or null. */
  directTarget(): Uint8Array | null;
  /** Bytes read into the staging buffer: the sink copies what it keeps (the buffer is read into again). */
  received(chunk: Buffer): void;
  /** `n` bytes were read straight into `directTarget()`. */
  receivedDirect(n: number): void;
}

/**
 * Where a connection's next read lands: the rest of the OUT data that is due, in guest memory, when it is
 * at least DIRECT_READ_MIN bytes, else the connection's one staging buffer (util/read-into.ts).
 */
export class ReadTarget {
  sink: ReadSink | null = null;
  readonly staging = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  readonly options: OnReadOpts;

  constructor() {
    this.options = {
      buffer: () => {
        const direct = this.sink?.directTarget() ?? null;
        return direct !== null && direct.length >= DIRECT_READ_MIN ? direct : this.staging;
      },
      callback: (n, buf) => {
        const s = this.sink;
        if (s === null || s.readsDone) return false;
        if (buf === this.staging) s.received(this.staging.subarray(0, n));
        else s.receivedDirect(n);
        return true;
      },
    };
  }
}
