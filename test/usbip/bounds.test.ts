/**
 * Bounds the USB/IP server keeps against one greedy or hostile client, each checked while a bystander
 * client on another device is being served:
 *   1. unsent replies: a client that never reads cannot make the server hold (much) more than
 *      maxUnsentBytes of replies, however many large INs it queued;
 *   2. fairness: one client's parked URBs (engine ring slots, guest memory) do not hold up other clients;
 *   3. receive queue: a PDU that arrives in 131072 tiny TCP segments costs linear time (it used to block
 *      the event loop for seconds);
 *   4. iso descriptors: packets must lie in the transfer buffer, and overlapping packets or lengths that
 *      add up past it get -EINVAL (they used to give replies up to 1024 times the buffer).
 * Every case ends by checking that the client's device is released and can be imported and used again.
 * Each describe block has its own server.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { FRAME_SIZE } from "../../src/dma-map/types.js";
import type { SubmitRequest, SubmitResult, UsbipClient } from "../../src/usbip/client.js";
import { NON_ISO_PACKETS, TransferFlag, URB_HEADER_SIZE } from "../../src/usbip/protocol.js";
import { encodeCmdSubmit } from "../../src/usbip/urb-pdus.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import {
  bulkIn,
  bulkOut,
  checkedControl,
  control,
  enumerate,
  getDescriptor,
  sleep,
  startServer,
  type TestServer,
} from "./helpers.js";

const MiB = 1024 * 1024;
/** How long a bystander may wait for an answer while the attack runs (today: > 10 s, or never). */
const ANSWER_MS = 2000;

const SET_CONFIGURATION = (value: number) => ({
  bmRequestType: 0x00,
  bRequest: 9,
  wValue: value,
  wIndex: 0,
  wLength: 0,
});
/** SET_INTERFACE(interface 0, alt 1): the loopback's iso endpoints 0x03 / 0x83 (256 bytes per 1 ms). */
const ISO_ALT_SETTING = { bmRequestType: 0x01, bRequest: 11, wValue: 1, wIndex: 0, wLength: 0 };
const GET_MAX_LUN = { bmRequestType: 0xa1, bRequest: 0xfe, wValue: 0, wIndex: 0, wLength: 1 };
const EINVAL = -22;

interface IsoPacket {
  readonly offset: number;
  readonly length: number;
}

/** `work`, or a rejection naming `what` once `ms` passed (measured, so a blocked event loop counts too). */
async function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    const value = await Promise.race([work, late]);
    const took = performance.now() - started;
    if (took > ms) throw new Error(`${what}: answered after ${Math.round(took)} ms (bound ${ms} ms)`);
    return value;
  } finally {
    clearTimeout(timer);
  }
}

/** A device descriptor read answered within ANSWER_MS. */
async function answers(client: UsbipClient, who: string): Promise<void> {
  const d = await within(ANSWER_MS, `${who}: GET_DESCRIPTOR(device)`, getDescriptor(client, 1, 0, 18));
  expect(d.length).toBe(18);
}

/** Device descriptor reads on `client`, one after another, while `busy()`; resolves with the slowest (ms). */
async function slowestAnswer(client: UsbipClient, busy: () => boolean): Promise<number> {
  let slowest = 0;
  while (busy()) {
    const started = performance.now();
    expect((await getDescriptor(client, 1, 0, 18)).length).toBe(18);
    slowest = Math.max(slowest, performance.now() - started);
    await sleep(20);
  }
  return slowest;
}

/** Once the client on 1-1 left, 1-1 is released and a new client can import it and loop data through it. */
async function loopbackUsableAgain(t: TestServer): Promise<void> {
  await eventually(() => !t.server.stats().imported.includes("1-1"), 10_000, "1-1 released");
  const again = await t.imported("1-1");
  await enumerate(again);
  const payload = pattern(3000, 77);
  expect((await bulkOut(again, 1, payload)).status).toBe(0);
  expect(Buffer.compare((await bulkIn(again, 1, payload.length)).data, payload)).toBe(0);
  again.close();
  await eventually(() => !t.server.stats().imported.includes("1-1"), 10_000, "1-1 released");
}

/** Raw CMD_SUBMITs (bulk IN, no iso) for the client's device, with seqnums the client does not track. */
function rawBulkIns(client: UsbipClient, ep: number, length: number, count: number, firstSeq: number) {
  const pdus = Array.from({ length: count }, (_, i) =>
    encodeCmdSubmit({
      seqnum: firstSeq + i,
      devid: client.devid,
      directionIn: true,
      ep,
      transferFlags: 0,
      transferBufferLength: length,
      startFrame: 0,
      numberOfPackets: NON_ISO_PACKETS,
      interval: 0,
      setup: new Uint8Array(8),
      data: new Uint8Array(0),
      iso: [],
    }),
  );
  return Buffer.concat(pdus);
}

/** Submits in one TCP write (one segment, one read on the server). */
function corked(client: UsbipClient, requests: SubmitRequest[]): Promise<SubmitResult>[] {
  client.socket.cork();
  const done = requests.map((r) => client.submit(r).done);
  client.socket.uncork();
  return done;
}

/**
 * A dedicated server for the enclosing describe block. Clients made through `imported` are closed after
 * each test, so a test that fails midway does not leave its device imported for the next one.
 */
function useServer() {
  let server: TestServer | undefined;
  const opened: UsbipClient[] = [];
  beforeAll(async () => {
    server = await startServer();
  });
  afterEach(() => {
    for (const c of opened.splice(0)) c.close();
  });
  afterAll(async () => {
    await server?.close();
  });
  return {
    get t(): TestServer {
      return server!;
    },
    async imported(busid: string): Promise<UsbipClient> {
      const c = await server!.imported(busid);
      opened.push(c);
      return c;
    },
  };
}

/**
 * IN lengths that add up to all of the server's URB buffer space (guest memory from frame 1 up to the
 * frontend's scratch frames) with few URBs: 4 MiB buffers, then at most three of each smaller power of 4
 * down to 4 KiB, then one more 4 MiB. A server that shares one pool among clients is exhausted by them;
 * one that gives each device a region of its own sees its client exhaust that region and wait.
 */
function guestMemoryFillers(t: TestServer): number[] {
  let left = (t.server.connection.handles.scratchFirstFrame - 1) * FRAME_SIZE;
  const sizes: number[] = [];
  for (const size of [4 * MiB, MiB, 256 * 1024, 64 * 1024, 16 * 1024, FRAME_SIZE]) {
    for (; left >= size; left -= size) sizes.push(size);
  }
  sizes.push(4 * MiB);
  return sizes;
}

/** Bytes outside V8's heap held by this thread (ArrayBuffers and Buffers are counted in `external`). */
function externalBytes(): number {
  return process.memoryUsage().external;
}

/**
 * Submit through `client` (so it expects the RET_SUBMIT) but send the PDU here: the 48-byte header, then
 * `segment` bytes per write, yielding to the event loop after each so that the server (in this process)
 * reads every segment on its own: one 'data' event, one receive-queue chunk, per write.
 */
async function dribble(client: UsbipClient, request: SubmitRequest, segment: number) {
  let pdu: Uint8Array = new Uint8Array(0);
  Object.defineProperty(client.socket, "write", {
    configurable: true,
    value: (bytes: Uint8Array) => {
      pdu = bytes;
      return true;
    },
  });
  const sent = client.submit(request);
  delete (client.socket as { write?: unknown }).write; // back to net.Socket.prototype.write
  client.socket.write(pdu.subarray(0, URB_HEADER_SIZE));
  let writes = 1;
  for (let at = URB_HEADER_SIZE; at < pdu.length; at += segment) {
    client.socket.write(pdu.subarray(at, at + segment));
    writes++;
    await new Promise((resolve) => setImmediate(resolve));
  }
  return { done: sent.done, writes };
}

/** One Bulk-Only command: CBW, optional data stage, CSW (checked). Resolves with the CSW status and IN data. */
async function scsi(
  c: UsbipClient,
  outEp: number,
  inEp: number,
  tag: number,
  cdb: number[],
  dataIn: number,
  dataOut?: Uint8Array,
): Promise<{ status: number; data: Uint8Array }> {
  const cbw = new Uint8Array(31);
  const v = new DataView(cbw.buffer);
  v.setUint32(0, 0x43425355, true);
  v.setUint32(4, tag, true);
  v.setUint32(8, dataOut?.length ?? dataIn, true);
  cbw[12] = dataIn > 0 ? 0x80 : 0;
  cbw[14] = cdb.length;
  cbw.set(cdb, 15);
  expect((await bulkOut(c, outEp, cbw)).status).toBe(0);
  let data: Uint8Array = new Uint8Array(0);
  if (dataOut !== undefined) expect((await bulkOut(c, outEp, dataOut)).status).toBe(0);
  else if (dataIn > 0) data = (await bulkIn(c, inEp, dataIn)).data;
  const csw = await bulkIn(c, inEp, 13);
  const cv = new DataView(csw.data.buffer, csw.data.byteOffset, 13);
  expect(cv.getUint32(0, true)).toBe(0x53425355);
  expect(cv.getUint32(4, true)).toBe(tag);
  return { status: csw.data[12]!, data };
}

describe("a client that never reads its replies", () => {
  const s = useServer(); // default send bound (16 MiB), 32 MiB guest memory
  let bystander: UsbipClient;

  beforeAll(async () => {
    bystander = await s.t.imported("1-3");
    await enumerate(bystander);
  });

  it("cannot make the server buffer replies past its send bound (256 × 4 MiB source-sink INs)", async () => {
    const hostile = await s.imported("1-1");
    await checkedControl(hostile, SET_CONFIGURATION(2)); // source-sink: every IN is answered at once
    hostile.socket.pause(); // never reads again: the kernel buffers fill, then the server's send queue
    const burst = rawBulkIns(hostile, 1, 4 * MiB, 256, 1000);
    const bound = 96 * MiB;
    const baseline = externalBytes();
    let growth = 0;
    try {
      hostile.writeRaw(burst);
      const sampling = (async () => {
        const end = performance.now() + 3000;
        while (performance.now() < end && growth < bound) {
          growth = Math.max(growth, externalBytes() - baseline);
          await sleep(25);
        }
      })();
      const meanwhile = (async () => {
        // During the burst: once the hostile client's replies are piling up in the server.
        await eventually(
          () => (s.t.server.stats().perDevice.find((d) => d.busid === "1-1")?.unsentBytes ?? 0) > 0,
          3000,
          "1-1's replies piling up",
        );
        await answers(bystander, "bystander on 1-3 during the burst");
      })();
      await Promise.all([sampling, meanwhile]);
      expect(growth, `external memory grew by ${(growth / MiB).toFixed(0)} MiB`).toBeLessThan(bound);
    } finally {
      hostile.close();
    }
    await answers(bystander, "bystander on 1-3 after the hostile client left");
    await loopbackUsableAgain(s.t);
  }, 30_000);
});

describe("250 parked URBs of one client", () => {
  const s = useServer();

  it("do not hold up imports and requests of other clients on 1-3 and 1-2", async () => {
    const a = await s.imported("1-1");
    await enumerate(a); // configuration 1: an IN with nothing queued stays pending
    const frontend = s.t.server.connection.frontend!;
    const before = frontend.stats().submitted;
    const parked = corked(
      a,
      Array.from({ length: 250 }, () => ({ ep: 1, directionIn: true, length: 64 })),
    );
    let settled = 0;
    for (const p of parked) void p.then(() => settled++);
    await eventually(() => frontend.stats().submitted > before, 5000, "A's INs reaching the engine");

    const b = await within(ANSWER_MS, "import of 1-3", s.imported("1-3"));
    await answers(b, "client B on 1-3");
    const maxLun = await within(ANSWER_MS, "client B: GET_MAX_LUN", control(b, GET_MAX_LUN));
    expect(maxLun.status).toBe(0);
    const c = await within(ANSWER_MS, "import of 1-2", s.imported("1-2"));
    await answers(c, "client C on 1-2");
    expect(settled, "A's parked INs are still pending").toBe(0);

    a.close();
    const results = await Promise.all(parked);
    expect(results.every((r) => r.status === -108)).toBe(true); // ended with A's connection
    await loopbackUsableAgain(s.t);
    await answers(b, "client B after A left");
  }, 30_000);
});

describe("one client's INs that fill guest memory", () => {
  const s = useServer(); // 32 MiB guest memory

  it("do not hold up another client's control requests and 64 KiB bulk transfers", async () => {
    const a = await s.imported("1-1");
    await enumerate(a);
    const b = await s.imported("1-3");
    const disk = await enumerate(b);
    const eps = disk.interfaces[0]!.endpoints;
    const inEp = eps.find((e) => e.address & 0x80)!.address & 0x0f;
    const outEp = eps.find((e) => !(e.address & 0x80))!.address;

    const frontend = s.t.server.connection.frontend!;
    const before = frontend.stats().submitted;
    // Pending INs on an empty FIFO that take every byte of the 32 MiB guest memory, and one more 4 MiB.
    const sizes = guestMemoryFillers(s.t);
    expect(sizes.length).toBeLessThanOrEqual(24); // memory is the bound here, not URBs or ring slots
    const parked = corked(
      a,
      sizes.map((length) => ({ ep: 1, directionIn: true, length })),
    );
    await eventually(() => frontend.stats().submitted > before, 5000, "A's INs reaching the engine");

    await answers(b, "client B on 1-3");
    const maxLun = await within(ANSWER_MS, "client B: GET_MAX_LUN", control(b, GET_MAX_LUN));
    expect(maxLun.status).toBe(0);
    // SCSI WRITE(10), then READ(10), of 128 sectors (64 KiB) through Bulk-Only transport.
    const sectors = pattern(64 * 1024, 21);
    const write = await within(
      ANSWER_MS,
      "client B: 64 KiB WRITE(10)",
      scsi(b, outEp, inEp, 1, [0x2a, 0, 0, 0, 0, 16, 0, 0, 128, 0], 0, sectors),
    );
    expect(write.status).toBe(0);
    const read = await within(
      ANSWER_MS,
      "client B: 64 KiB READ(10)",
      scsi(b, outEp, inEp, 2, [0x28, 0, 0, 0, 0, 16, 0, 0, 128, 0], sectors.length),
    );
    expect(read.status).toBe(0);
    expect(Buffer.compare(read.data, sectors)).toBe(0);

    a.close();
    const results = await Promise.all(parked);
    expect(results.every((r) => r.status === -108)).toBe(true); // ended with A's connection
    await loopbackUsableAgain(s.t);
    await answers(b, "client B after A left");
  }, 30_000);
});

describe("a PDU that arrives in tiny TCP segments", () => {
  const s = useServer();
  let bystander: UsbipClient;

  beforeAll(async () => {
    bystander = await s.t.imported("1-3");
    await enumerate(bystander);
  });

  it("a 512 KiB bulk OUT in 131072 segments neither blocks the event loop nor delays a bystander", async () => {
    const c = await s.imported("1-1");
    await enumerate(c);
    const payload = pattern(512 * 1024, 31);
    const loop = monitorEventLoopDelay({ resolution: 10 });
    let uploading = true;
    const polling = slowestAnswer(bystander, () => uploading);
    polling.catch(() => undefined); // awaited below; a failure meanwhile is not an unhandled rejection
    loop.enable();
    let out: SubmitResult;
    try {
      // 4 bytes per segment: 131072 chunks in the receive queue before the PDU is whole. Today's queue
      // (an Array.shift per chunk) spends seconds on that; 2-byte segments took ~19 s here.
      const upload = await dribble(c, { ep: 1, directionIn: false, data: payload }, 4);
      expect(upload.writes).toBe(1 + payload.length / 4);
      out = await within(5000, "the dribbled bulk OUT", upload.done);
    } finally {
      loop.disable();
      uploading = false;
    }
    const slowest = await within(ANSWER_MS, "bystander on 1-3 during the upload", polling);
    const blockedMs = loop.max / 1e6;
    expect(blockedMs, `event loop blocked for ${blockedMs.toFixed(0)} ms`).toBeLessThan(1000);
    expect(slowest, "slowest bystander answer during the upload, ms").toBeLessThan(ANSWER_MS);
    expect([out.status, out.actualLength]).toEqual([0, payload.length]);
    const back = await bulkIn(c, 1, payload.length);
    expect([back.status, back.actualLength]).toEqual([0, payload.length]);
    expect(Buffer.compare(back.data, payload)).toBe(0);
    c.close();
    await loopbackUsableAgain(s.t);
  }, 30_000);
});

describe("iso descriptors that do not fit the transfer buffer", () => {
  const s = useServer();
  let bystander: UsbipClient;

  beforeAll(async () => {
    bystander = await s.t.imported("1-3");
    await enumerate(bystander);
  });

  /** A client on 1-1 (configuration 1) with the iso alternate setting selected. */
  async function isoClient(): Promise<UsbipClient> {
    await eventually(() => !s.t.server.stats().imported.includes("1-1"), 10_000, "1-1 released");
    const c = await s.imported("1-1");
    await enumerate(c);
    await checkedControl(c, ISO_ALT_SETTING);
    return c;
  }

  function iso(c: UsbipClient, directionIn: boolean, length: number, packets: IsoPacket[]) {
    return c.submit({
      ep: 3,
      directionIn,
      ...(directionIn ? { length } : { data: pattern(length, 3) }),
      interval: 1,
      transferFlags: TransferFlag.ISO_ASAP,
      iso: packets,
    }).done;
  }

  /** -EINVAL with nothing transferred, and the connection stays open. */
  function expectRefused(r: SubmitResult, c: UsbipClient): void {
    expect([r.status, r.actualLength, r.data.length, c.closed], "[status, actual, data, closed]").toEqual([
      EINVAL,
      0,
      0,
      false,
    ]);
  }

  /** A valid iso IN of 4 × 256 bytes still completes on the same connection, with per-packet results. */
  async function stillUsable(c: UsbipClient): Promise<void> {
    const packets = [0, 256, 512, 768].map((offset) => ({ offset, length: 256 }));
    const r = await iso(c, true, 1024, packets);
    expect(r.status).toBe(0);
    expect(r.iso.map((d) => [d.offset, d.length, d.actualLength, d.status])).toEqual(
      packets.map((p) => [p.offset, 256, 256, 0]),
    );
    expect(r.actualLength).toBe(1024);
    expect(c.closed).toBe(false);
  }

  it("1024 packets all at offset 0 of a 256-byte IN buffer: -EINVAL, not 256 KiB of data", async () => {
    const c = await isoClient();
    const packets = Array.from({ length: 1024 }, () => ({ offset: 0, length: 256 }));
    expectRefused(await iso(c, true, 256, packets), c);
    await stillUsable(c);
    await answers(bystander, "bystander on 1-3");
    c.close();
    await loopbackUsableAgain(s.t);
  }, 30_000);

  it("IN packets that do not fit the buffer, in bounds but adding up past it or ending past it: -EINVAL", async () => {
    const c = await isoClient();
    // Both packets lie inside the 256-byte buffer, but 200 + 156 bytes do not fit in 256.
    const packets = [
      { offset: 0, length: 200 },
      { offset: 100, length: 156 },
    ];
    expectRefused(await iso(c, true, 256, packets), c);
    await stillUsable(c);
    // Ends at byte 300 of 256 (today the engine's gate already refuses this one).
    expectRefused(await iso(c, true, 256, [{ offset: 200, length: 100 }]), c);
    await stillUsable(c);
    await answers(bystander, "bystander on 1-3");
    c.close();
    await loopbackUsableAgain(s.t);
  }, 30_000);

  it("overlapping OUT packets: -EINVAL", async () => {
    const c = await isoClient();
    const packets = [
      { offset: 0, length: 256 },
      { offset: 0, length: 256 },
    ];
    expectRefused(await iso(c, false, 256, packets), c);
    await stillUsable(c);
    await answers(bystander, "bystander on 1-3");
    c.close();
    await loopbackUsableAgain(s.t);
  }, 30_000);
});
