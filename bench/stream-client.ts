/**
 * The forked client's side of the network benches' streams (stream-bench.ts is the parent's side): what
 * usbip-client.ts and usbredir-client.ts share, so each keeps only its protocol.
 *
 * - `StreamState`: the running stream, the items it completed, the parent's `wait` (answered `waited`
 *   when the target is reached, timed here) and `stop` (answered `stopped` once drained).
 * - `SlotStream`: a stream of requests kept in flight over one socket, lean on purpose so the client is
 *   never the bottleneck. Slot i owns its pre-encoded request, whose tag (a USB/IP seqnum, a usbredir id)
 *   is rewritten only after its reply came back, so a request Node still holds for writing is never
 *   modified; tag = serial << bits | slot. Replies have a fixed header size: a header split across reads
 *   is gathered, IN data after a header is skipped in place, never copied. The protocol parses each header
 *   (`onHeader`) and calls `complete(slot)` or `skipThen(bytes, slot)`.
 * - `serveParent`: the loop over IPC, or over JSON lines on stdin / stdout for a client that runs under
 *   another program (bench/iso-client.ts, under the umockdev testbed): ready, one request at a time, exit
 *   when the parent goes; `wait` and `stop` are answered there.
 */
import type net from "node:net";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import type { StreamReply, StreamRequest } from "./stream-bench.js";

/** The running stream: its kind (null when idle), items completed, and a wait due at `target`. */
export class StreamState<Kind extends string> {
  active: Kind | null = null;
  streaming = false;
  /** Items in flight now. */
  inflight = 0;
  items = 0;
  private target = -1;
  private waitItems = 0;
  private waitStart = 0;
  /** The parent went: the client is exiting (a socket closing now is no error). */
  closing = false;

  constructor(
    /** Throws: the client's own error with its name. */
    readonly fail: (message: string) => never,
    private readonly send: (reply: StreamReply) => void,
  ) {}

  /** A stream of `kind` starts (nothing is in flight yet). */
  begin(kind: Kind): void {
    if (this.active !== null) this.fail(`start ${kind} while ${this.active} runs`);
    this.active = kind;
    this.streaming = true;
    this.items = 0;
    this.target = -1;
    this.inflight = 0;
  }

  itemDone(): void {
    if (++this.items === this.target) {
      this.target = -1;
      this.send({ ev: "waited", items: this.waitItems, ms: performance.now() - this.waitStart });
    }
  }

  /** Answer `stopped` once a stopped stream has nothing in flight. */
  maybeStopped(): void {
    if (!this.streaming && this.inflight === 0 && this.active !== null) {
      this.active = null;
      this.send({ ev: "stopped", items: this.items });
    }
  }

  wait(items: number): void {
    if (this.active === null || !this.streaming || this.target !== -1)
      this.fail("wait with no stream running, or twice");
    if (!Number.isInteger(items) || items < 1) this.fail(`wait for ${items} items`);
    this.waitItems = items;
    this.waitStart = performance.now();
    this.target = this.items + items;
  }

  stop(): void {
    if (this.active === null || !this.streaming) this.fail("stop with no stream running");
    this.streaming = false;
    this.target = -1;
    this.maybeStopped();
  }
}

/** One pre-encoded request and what its reply must carry. */
export interface StreamSlot {
  readonly pdu: Buffer;
  readonly directionIn: boolean;
  /** The length the reply must carry. */
  readonly expect: number;
  /** The tag in flight, 0 when idle. */
  tag: number;
}

/** Where a request carries its 32-bit tag. */
export interface TagField {
  readonly at: number;
  readonly littleEndian: boolean;
}

export class SlotStream<S extends StreamSlot> {
  slots: S[] = [];
  private socket: net.Socket | null = null;
  private slotBits = 0;
  private slotMask = 0;
  private serial = 1;
  private serialLimit = 1;
  /** Bulk pairs: OUT slots are [0, pairs), IN slots [pairs, 2 pairs); 0: every slot is an item. */
  private pairs = 0;
  /** Submitted counts keep the drain of a bulk pair stream balanced. */
  private outsSubmitted = 0;
  private insSubmitted = 0;
  private readonly partial: Buffer;
  private partialFill = 0;
  private skip = 0;
  private skipSlot = 0;

  constructor(
    private readonly state: StreamState<string>,
    private readonly tagField: TagField,
    /** Every reply starts with a header of this many bytes. */
    private readonly headerSize: number,
    /** Parse the header at `b[at]`; end with `complete(slot)` or `skipThen(dataBytes, slot)`. */
    private readonly onHeader: (b: Buffer, at: number) => void,
  ) {
    this.partial = Buffer.alloc(headerSize);
  }

  /** The socket requests go out on and replies come in on (read here from now on). */
  attach(socket: net.Socket): void {
    this.socket = socket;
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
  }

  /**
   * Put `slots` (a power of two of them) in flight; with `pairs` > 0 the first `pairs` are bulk OUTs and
   * the next `pairs` bulk INs that read their data back, and only INs count as items.
   */
  load(slots: S[], pairs: number): void {
    this.slots = slots;
    this.pairs = pairs;
    this.outsSubmitted = this.insSubmitted = pairs;
    this.slotBits = Math.log2(slots.length);
    this.slotMask = slots.length - 1;
    this.serial = 1;
    this.serialLimit = 2 ** (32 - this.slotBits);
    this.partialFill = this.skip = 0;
    const socket = this.socket!;
    socket.cork();
    for (let i = 0; i < slots.length; i++) this.submit(i);
    socket.uncork();
  }

  /** The slot of the request `tag` names, or -1 when no request with that tag is in flight. */
  slotOf(tag: number): number {
    const slot = tag & this.slotMask;
    const s = this.slots[slot];
    return s !== undefined && s.tag === tag && tag !== 0 ? slot : -1;
  }

  /** The reply's header is parsed and `bytes` of IN data follow it: skip them, then complete `slot`. */
  skipThen(bytes: number, slot: number): void {
    this.skip = bytes;
    this.skipSlot = slot;
  }

  /** A request's reply is in: count it, and resubmit it while the stream runs (or a bulk pair drains). */
  complete(slot: number): void {
    const state = this.state;
    state.inflight--;
    if (this.pairs === 0) {
      state.itemDone();
      if (state.streaming) this.submit(slot);
    } else if (slot < this.pairs) {
      if (state.streaming) {
        this.outsSubmitted++;
        this.submit(slot);
      }
    } else {
      state.itemDone();
      // Draining: INs go on until every OUT's data has been read back, so the FIFO ends empty.
      if (state.streaming || this.insSubmitted < this.outsSubmitted) {
        this.insSubmitted++;
        this.submit(slot);
      }
    }
    state.maybeStopped();
  }

  private submit(slot: number): void {
    const s = this.slots[slot]!;
    s.tag = ((this.serial << this.slotBits) | slot) >>> 0;
    this.serial = this.serial + 1 < this.serialLimit ? this.serial + 1 : 1;
    if (this.tagField.littleEndian) s.pdu.writeUInt32LE(s.tag, this.tagField.at);
    else s.pdu.writeUInt32BE(s.tag, this.tagField.at);
    this.state.inflight++;
    this.socket!.write(s.pdu);
  }

  private onData(chunk: Buffer): void {
    if (this.state.active === null || this.slots.length === 0)
      this.state.fail(`${chunk.length} bytes from the server with no request sent`);
    const size = this.headerSize;
    const partial = this.partial;
    const end = chunk.length;
    let at = 0;
    this.socket!.cork(); // resubmissions of this read leave in one writev
    while (at < end) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, end - at);
        this.skip -= n;
        at += n;
        if (this.skip === 0) this.complete(this.skipSlot);
      } else if (this.partialFill === 0 && end - at >= size) {
        this.onHeader(chunk, at);
        at += size;
      } else {
        const n = Math.min(size - this.partialFill, end - at);
        chunk.copy(partial, this.partialFill, at, at + n);
        this.partialFill += n;
        at += n;
        if (this.partialFill === size) {
          this.partialFill = 0;
          this.onHeader(partial, 0);
        }
      }
    }
    this.socket!.uncork();
  }
}

/** How a client hears its parent: IPC (forked), or JSON lines on stdin, answered on stdout. */
export type ParentChannel = "ipc" | "lines";

/**
 * The client's loop: `handle` answers its own requests (connect, start), `wait` and `stop` are
 * answered here; `ready` is sent once listening. Anything thrown exits non-zero with the message; the
 * client exits when the parent goes (IPC disconnected, or stdin closed).
 */
export function serveParent<Req extends { readonly cmd: string }>(
  script: string,
  state: StreamState<string>,
  send: (reply: StreamReply) => void,
  handle: (m: Req) => Promise<void>,
  channel: ParentChannel = "ipc",
): void {
  if (channel === "ipc" && process.send === undefined)
    state.fail(`run me with child_process.fork (${script} does)`);
  const onMessage = async (m: Req | StreamRequest<unknown>) => {
    if (m.cmd === "wait") state.wait((m as { readonly items: number }).items);
    else if (m.cmd === "stop") state.stop();
    else await handle(m as Req);
  };
  const onRequest = (m: unknown) => {
    onMessage(m as Req).catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
  };
  const parentGone = () => {
    state.closing = true;
    process.exit(0);
  };
  if (channel === "ipc") {
    process.on("message", onRequest);
    process.on("disconnect", parentGone);
  } else {
    const lines = createInterface({ input: process.stdin });
    lines.on("line", (line) => onRequest(JSON.parse(line)));
    lines.on("close", parentGone);
  }
  send({ ev: "ready" });
}
