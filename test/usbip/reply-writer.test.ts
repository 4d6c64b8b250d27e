/**
 * The reply writer (src/usbip-server/reply-writer.ts) over a real TCP socket pair on 127.0.0.1: one turn's replies
 * leave in one corked flush, in order and byte-exact; zero-copy IN data keeps its holder until the write
 * callback, copied data lets go at once; close() releases every held buffer exactly once.
 */
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ECONNRESET, EPIPE } from "../../src/urb/status.js";
import { ISO_DESCRIPTOR_SIZE, URB_HEADER_SIZE, UsbipCommand } from "../../src/usbip/protocol.js";
import { readServerPdu, type ServerPdu } from "../../src/usbip/urb-pdus.js";
import { type ReplyHolder, ReplyWriter, ZERO_COPY_MIN } from "../../src/usbip-server/reply-writer.js";
import { ByteQueue } from "../../src/util/byte-queue.js";
import { pattern } from "../support/data.js";

// ---------------------------------------------------------------- a socket pair and a recording peer

interface Pair {
  /** The writer's end. */
  readonly local: Socket;
  /** The client's end: what it receives. */
  readonly peer: Socket;
  readonly received: Buffer[];
  /** Resolves once the peer holds at least `n` bytes. */
  receivedAtLeast(n: number): Promise<Buffer>;
  /** End the writer's side; resolves with everything the peer got once it sees the end. */
  finish(): Promise<Buffer>;
  close(): Promise<void>;
}

async function socketPair(): Promise<Pair> {
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
  const peer = connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => {
    peer.once("connect", resolve);
    peer.once("error", reject);
  });
  const local = await accepted;
  const received: Buffer[] = [];
  const waiters: { n: number; resolve: (b: Buffer) => void }[] = [];
  let ended = false;
  const endWaiters: (() => void)[] = [];
  peer.on("data", (chunk: Buffer) => {
    received.push(chunk);
    const all = Buffer.concat(received);
    for (const w of waiters.splice(0)) {
      if (all.length >= w.n) w.resolve(all);
      else waiters.push(w);
    }
  });
  peer.on("end", () => {
    ended = true;
    for (const e of endWaiters.splice(0)) e();
  });
  return {
    local,
    peer,
    received,
    receivedAtLeast(n) {
      const all = Buffer.concat(received);
      if (all.length >= n) return Promise.resolve(all);
      return new Promise((resolve) => waiters.push({ n, resolve }));
    },
    async finish() {
      local.end();
      if (!ended) await new Promise<void>((resolve) => endWaiters.push(resolve));
      return Buffer.concat(received);
    },
    async close() {
      local.destroy();
      peer.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Events in order; a test can wait for the n-th occurrence of one (no timers). */
class EventLog {
  readonly entries: string[] = [];
  private waiters: { entry: string; count: number; resolve: () => void }[] = [];

  push(entry: string): void {
    this.entries.push(entry);
    for (const w of this.waiters.splice(0)) {
      if (this.seen(w.entry) >= w.count) w.resolve();
      else this.waiters.push(w);
    }
  }

  /** Resolves once `entry` has been logged `count` times. */
  waitFor(entry: string, count = 1): Promise<void> {
    if (this.seen(entry) >= count) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ entry, count, resolve }));
  }

  private seen(entry: string): number {
    return this.entries.filter((e) => e === entry).length;
  }
}

/** Everything the writer does to its socket, in order, with the events of holders and callbacks. */
function instrument(socket: Socket, log: EventLog): void {
  const cork = socket.cork.bind(socket);
  const uncork = socket.uncork.bind(socket);
  const write = socket.write.bind(socket) as (
    chunk: Uint8Array,
    cb?: (err?: Error | null) => void,
  ) => boolean;
  socket.cork = () => {
    log.push("cork");
    cork();
  };
  socket.uncork = () => {
    log.push("uncork");
    uncork();
  };
  socket.write = ((chunk: Uint8Array, cb?: (err?: Error | null) => void) => {
    if (typeof cb !== "function") {
      log.push(`write ${chunk.length}`);
      return write(chunk);
    }
    log.push(`write ${chunk.length} +cb`);
    return write(chunk, (err) => {
      log.push("write done");
      cb(err);
    });
  }) as Socket["write"];
}

class Holder implements ReplyHolder {
  count = 0;
  constructor(
    readonly name: string,
    private readonly log: EventLog,
  ) {}
  released(): void {
    this.count++;
    this.log.push(`release ${this.name}`);
  }
}

/** Let every queued microtask run (the flush is one; the write callbacks come on a later tick). */
async function afterMicrotasks(): Promise<void> {
  await Promise.resolve();
  await Promise.resolve();
}

// ---------------------------------------------------------------- expected bytes, by hand

function retSubmitBytes(
  seqnum: number,
  status: number,
  actualLength: number,
  startFrame: number,
  packets: number,
  errorCount: number,
  data: Uint8Array,
  tail: Uint8Array | null,
): Buffer {
  const h = Buffer.alloc(URB_HEADER_SIZE);
  h.writeUInt32BE(UsbipCommand.RET_SUBMIT, 0);
  h.writeUInt32BE(seqnum, 4);
  // devid, direction, ep: 0
  h.writeInt32BE(status, 20);
  h.writeInt32BE(actualLength, 24);
  h.writeInt32BE(startFrame, 28);
  h.writeInt32BE(packets, 32);
  h.writeInt32BE(errorCount, 36);
  return Buffer.concat([h, data, tail ?? new Uint8Array(0)]);
}

function retUnlinkBytes(seqnum: number, status: number): Buffer {
  const h = Buffer.alloc(URB_HEADER_SIZE);
  h.writeUInt32BE(UsbipCommand.RET_UNLINK, 0);
  h.writeUInt32BE(seqnum, 4);
  h.writeInt32BE(status, 20);
  return h;
}

function isoDescriptors(
  lengths: readonly number[],
  actual: readonly number[],
  statuses: readonly number[],
): Buffer {
  const out = Buffer.alloc(lengths.length * ISO_DESCRIPTOR_SIZE);
  let offset = 0;
  lengths.forEach((length, i) => {
    const p = i * ISO_DESCRIPTOR_SIZE;
    out.writeUInt32BE(offset, p);
    out.writeUInt32BE(length, p + 4);
    out.writeUInt32BE(actual[i]!, p + 8);
    out.writeInt32BE(statuses[i]!, p + 12);
    offset += length;
  });
  return out;
}

/** Decode a whole reply stream the way a client does (every seqnum taken as an IN request of up to 1 MiB). */
function decodeAll(bytes: Buffer): ServerPdu[] {
  const q = new ByteQueue();
  q.push(bytes);
  const out: ServerPdu[] = [];
  for (;;) {
    const r = readServerPdu(q, () => ({ directionIn: true, transferBufferLength: 1 << 20 }));
    if (r.kind === "need") break;
    if (r.kind === "malformed") throw new Error(r.reason);
    out.push(r.frame);
  }
  expect(q.length).toBe(0);
  return out;
}

// ---------------------------------------------------------------- tests

const GUEST_BYTES = 1 << 20;

describe("ReplyWriter over a TCP socket pair", () => {
  let pair: Pair;
  let memory: SharedArrayBuffer;
  let guest: Uint8Array;
  let log: EventLog;
  let writes: number;

  beforeEach(async () => {
    pair = await socketPair();
    memory = new SharedArrayBuffer(GUEST_BYTES);
    guest = new Uint8Array(memory);
    guest.set(pattern(GUEST_BYTES, 0x9e57));
    log = new EventLog();
    instrument(pair.local, log);
    writes = 0;
  });

  afterEach(async () => {
    await pair.close();
  });

  function writer(): ReplyWriter {
    return new ReplyWriter(pair.local, memory, () => {
      writes++;
      log.push("written");
    });
  }

  it("sends one turn's replies in one corked flush, in order, byte-exact", async () => {
    const w = writer();
    const copied = new Holder("copied", log);
    const below = new Holder("below", log);
    const atMin = new Holder("atMin", log);
    const big = new Holder("big", log);
    const withTail = new Holder("withTail", log);
    const isoPayload = pattern(24, 5);
    const isoTail = Buffer.concat([isoPayload, isoDescriptors([8, 8, 8], [8, 8, 8], [0, -18, 0])]);
    const zcTail = isoDescriptors([4096, 4096], [4096, 4096], [0, 0]);

    // [seqnum, expected bytes]: the replies of one turn.
    w.retSubmit(1, 0, 100, 0, 0, 0, 0x1000, 100, null, copied);
    w.retUnlink(2, ECONNRESET);
    w.retSubmit(3, 0, ZERO_COPY_MIN, 0, 0, 0, 0x2000, ZERO_COPY_MIN, null, atMin);
    w.retSubmit(4, EPIPE, 0, 0, 0, 0, 0, 0, null, null);
    w.retSubmit(5, 0, 24, 7, 3, 1, 0, 0, isoTail, null);
    w.retSubmit(6, 0, ZERO_COPY_MIN - 1, 0, 0, 0, 0x4001, ZERO_COPY_MIN - 1, null, below);
    w.retSubmit(7, 0, 8192, 11, 2, 0, 0x8000, 8192, zcTail, withTail);
    w.retUnlink(8, 0);
    w.retSubmit(9, -2, 65536, 0, 0, 0, 0x1_0000, 65536, null, big);
    const expected = Buffer.concat([
      retSubmitBytes(1, 0, 100, 0, 0, 0, guest.subarray(0x1000, 0x1000 + 100), null),
      retUnlinkBytes(2, ECONNRESET),
      retSubmitBytes(3, 0, ZERO_COPY_MIN, 0, 0, 0, guest.subarray(0x2000, 0x2000 + ZERO_COPY_MIN), null),
      retSubmitBytes(4, EPIPE, 0, 0, 0, 0, new Uint8Array(0), null),
      retSubmitBytes(5, 0, 24, 7, 3, 1, new Uint8Array(0), isoTail),
      retSubmitBytes(
        6,
        0,
        ZERO_COPY_MIN - 1,
        0,
        0,
        0,
        guest.subarray(0x4001, 0x4001 + ZERO_COPY_MIN - 1),
        null,
      ),
      retSubmitBytes(7, 0, 8192, 11, 2, 0, guest.subarray(0x8000, 0x8000 + 8192), zcTail),
      retUnlinkBytes(8, 0),
      retSubmitBytes(9, -2, 65536, 0, 0, 0, guest.subarray(0x1_0000, 0x2_0000), null),
    ]);

    // Queued, not yet sent: nothing touched the socket, nothing released.
    expect(w.pending).toBe(9);
    expect(w.unsent).toBe(0);
    expect(log.entries).toEqual([]);

    await afterMicrotasks();
    expect(w.pending).toBe(0);
    expect(w.unsent).toBe(expected.length);

    const bytes = await pair.receivedAtLeast(expected.length);
    await log.waitFor("written");
    expect(bytes.length).toBe(expected.length);
    expect(bytes.equals(expected)).toBe(true);

    // One flush: every write between one cork and its uncork; the packed buffer split only around
    // zero-copy data (seqnums 3, 7, 9), the last write carrying the callback (here empty: seqnum 9 has no tail).
    const h = URB_HEADER_SIZE;
    expect(log.entries.slice(0, 9)).toEqual([
      "cork",
      `write ${h + 100 + h + h}`,
      `write ${ZERO_COPY_MIN}`,
      `write ${h + h + isoTail.length + h + ZERO_COPY_MIN - 1 + h}`,
      "write 8192",
      `write ${zcTail.length + h + h}`,
      "write 65536",
      "write 0 +cb",
      "uncork",
    ]);
    // Copied data let go at the flush; zero-copy holders only after the write callback, then onWritten.
    expect(log.entries.slice(9)).toEqual([
      "release copied",
      "release below",
      "write done",
      "release atMin",
      "release withTail",
      "release big",
      "written",
    ]);
    expect(w.unsent).toBe(0);
    expect(writes).toBe(1);
    for (const holder of [copied, below, atMin, big, withTail]) expect(holder.count).toBe(1);

    // What a client decodes: the same replies, in order.
    const pdus = decodeAll(bytes);
    expect(pdus.map((p) => `${p.command} ${p.seqnum} ${p.status}`)).toEqual([
      "ret-submit 1 0",
      `ret-unlink 2 ${ECONNRESET}`,
      "ret-submit 3 0",
      `ret-submit 4 ${EPIPE}`,
      "ret-submit 5 0",
      "ret-submit 6 0",
      "ret-submit 7 0",
      "ret-unlink 8 0",
      "ret-submit 9 -2",
    ]);
    for (const p of pdus) expect([p.devid, p.directionIn, p.ep]).toEqual([0, false, 0]);
    const iso = pdus[4]!;
    expect(iso.command === "ret-submit" && [iso.startFrame, iso.numberOfPackets, iso.errorCount]).toEqual([
      7, 3, 1,
    ]);
    expect(iso.command === "ret-submit" && Buffer.from(iso.data).equals(isoPayload)).toBe(true);
    expect(iso.command === "ret-submit" && iso.iso.map((d) => d.status)).toEqual([0, -18, 0]);
  });

  it("releases a copied holder at the flush even when its reply has no data", async () => {
    const w = writer();
    const h = new Holder("none", log);
    w.retSubmit(1, 0, 0, 0, 0, 0, 0, 0, null, h);
    expect(h.count).toBe(0);
    await afterMicrotasks();
    expect(h.count).toBe(1);
    expect(log.entries).toEqual(["cork", `write ${URB_HEADER_SIZE} +cb`, "uncork", "release none"]);
    await pair.receivedAtLeast(URB_HEADER_SIZE);
    expect(await pair.finish()).toEqual(retSubmitBytes(1, 0, 0, 0, 0, 0, new Uint8Array(0), null));
    expect(h.count).toBe(1);
  });

  it("flushes each turn separately: onWritten once per flush, unsent back to 0 each time", async () => {
    const w = writer();
    const first = new Holder("first", log);
    const second = new Holder("second", log);
    w.retSubmit(1, 0, 8192, 0, 0, 0, 0, 8192, null, first);
    w.retUnlink(2, 0);
    await afterMicrotasks();
    const firstBytes = URB_HEADER_SIZE + 8192 + URB_HEADER_SIZE;
    expect(w.unsent).toBe(firstBytes);
    await pair.receivedAtLeast(firstBytes);
    await log.waitFor("written");
    expect(w.unsent).toBe(0);
    expect(first.count).toBe(1);

    w.retSubmit(3, 0, 5000, 0, 0, 0, 0x3_0000, 5000, null, second);
    await afterMicrotasks();
    expect(w.unsent).toBe(URB_HEADER_SIZE + 5000);
    expect(second.count).toBe(0);
    const all = await pair.finish();
    await log.waitFor("written", 2);
    expect(w.unsent).toBe(0);
    expect(second.count).toBe(1);
    expect(log.entries.filter((e) => e === "cork")).toHaveLength(2);
    expect(all).toEqual(
      Buffer.concat([
        retSubmitBytes(1, 0, 8192, 0, 0, 0, guest.subarray(0, 8192), null),
        retUnlinkBytes(2, 0),
        retSubmitBytes(3, 0, 5000, 0, 0, 0, guest.subarray(0x3_0000, 0x3_0000 + 5000), null),
      ]),
    );
  });

  it("close() before the flush releases every queued holder once and sends nothing", async () => {
    const w = writer();
    const zc = new Holder("zc", log);
    const small = new Holder("small", log);
    w.retSubmit(1, 0, 65536, 0, 0, 0, 0, 65536, null, zc);
    w.retSubmit(2, 0, 10, 0, 0, 0, 0, 10, null, small);
    w.retUnlink(3, 0);
    w.close();
    expect([zc.count, small.count]).toEqual([1, 1]);
    expect(w.pending).toBe(0);
    expect(w.unsent).toBe(0);

    await afterMicrotasks();
    w.close();
    expect(await pair.finish()).toHaveLength(0);
    expect(log.entries).toEqual(["release zc", "release small"]);
    expect(writes).toBe(0);
  });

  it("close() between the flush and its write callback releases zero-copy holders once, never again", async () => {
    const w = writer();
    const zc = new Holder("zc", log);
    const zc2 = new Holder("zc2", log);
    const small = new Holder("small", log);
    w.retSubmit(1, 0, 65536, 0, 0, 0, 0, 65536, null, zc);
    w.retSubmit(2, 0, 10, 0, 0, 0, 0x2_0000, 10, null, small);
    w.retSubmit(3, 0, ZERO_COPY_MIN, 0, 0, 0, 0x3_0000, ZERO_COPY_MIN, pattern(3, 1), zc2);
    await afterMicrotasks();
    // Flushed: the copied holder is gone, the zero-copy ones wait for the callback (not yet run).
    expect([zc.count, zc2.count, small.count]).toEqual([0, 0, 1]);
    expect(log.entries).not.toContain("write done");
    expect(w.unsent).toBeGreaterThan(0);

    w.close();
    expect([zc.count, zc2.count, small.count]).toEqual([1, 1, 1]);
    expect(w.unsent).toBe(0);
    w.close();
    expect([zc.count, zc2.count, small.count]).toEqual([1, 1, 1]);

    // The write callback still comes (the socket lives on): no second release, no onWritten.
    await log.waitFor("write done");
    expect([zc.count, zc2.count, small.count]).toEqual([1, 1, 1]);
    expect(writes).toBe(0);
    expect(w.unsent).toBe(0);
    expect(log.entries.slice(log.entries.indexOf("uncork") + 1)).toEqual([
      "release small",
      "release zc",
      "release zc2",
      "write done",
    ]);
  });

  it("close() after the write callback releases nothing twice", async () => {
    const w = writer();
    const zc = new Holder("zc", log);
    w.retSubmit(1, 0, 8192, 0, 0, 0, 0, 8192, null, zc);
    await afterMicrotasks();
    await log.waitFor("written");
    expect(zc.count).toBe(1);
    w.close();
    expect(zc.count).toBe(1);
  });
});
