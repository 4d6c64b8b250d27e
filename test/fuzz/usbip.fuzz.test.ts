/**
 * Fuzz: arbitrary and mutated byte streams into the USB/IP server over TCP loopback.
 *
 * Each fast-check run opens a connection and sends one of: raw bytes in the management phase; raw bytes
 * after a real import of 1-1; or a stream of valid PDUs for 1-1 (control IN/OUT, bulk OUT/IN, interrupt
 * IN, unlinks) with a few bytes mutated and perhaps cut short. The expected verdict comes from running the
 * server's own frame reader (readClientPdu) over the stream: a stream it cannot frame, or one that names
 * another devid, must get its connection closed; a stream that frames cleanly gets at most one reply per
 * seqnum, and exactly one (RET_SUBMIT, or RET_UNLINK -ECONNRESET for the unlink the test then sends) when
 * nothing was left half-sent. Every reply the server sends must frame (readServerPdu). Afterwards the
 * client vanishes and 1-1 must be released (importable again).
 *
 * Throughout, an honest client on 1-2 echoes verified payloads; it must keep moving data, and at the
 * end 1-1 is imported and used once more. Time-boxed and seeded like test/fuzz/backend.fuzz.test.ts.
 */
import { type Socket, connect as tcpConnect } from "node:net";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ECONNRESET } from "../../src/urb/status.js";
import { encodeSetup } from "../../src/usb/index.js";
import type { UsbipClient } from "../../src/usbip/client.js";
import { encodeImportRequest, readOpReply } from "../../src/usbip/management-pdus.js";
import {
  type ClientPdu,
  encodeCmdSubmit,
  encodeCmdUnlink,
  readClientPdu,
  readServerPdu,
  type SentSubmit,
  type ServerPdu,
} from "../../src/usbip/urb-pdus.js";
import { ByteQueue } from "../../src/util/byte-queue.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { HonestLoop } from "../support/honest-loop.js";
import { bulkIn, bulkOut, enumerate, startServer, type TestServer } from "../usbip/helpers.js";
import { fuzzBeside } from "./time-box.js";

const DEVID = 0x10001;

let t: TestServer;
let honest: UsbipClient;
let honestLoop: HonestLoop;

beforeAll(async () => {
  t = await startServer({
    devices: [
      { kind: "emulated", name: "loopback" },
      { kind: "emulated", name: "loopback" },
    ],
  });
  honest = await t.imported("1-2");
  await enumerate(honest);
  honestLoop = new HonestLoop(async (i) => {
    const data = pattern(4096, i);
    expect((await bulkOut(honest, 1, data)).status).toBe(0);
    const back = await bulkIn(honest, 1, 4096);
    if (back.status !== 0 || Buffer.compare(back.data, data) !== 0)
      throw new Error(`honest round ${i} failed`);
  });
}, 30_000);

afterAll(async () => {
  await honestLoop?.stop();
  await t?.close();
});

// ------------------------------------------------------------------ a raw client

class RawClient {
  readonly queue = new ByteQueue();
  closed = false;
  private readonly closedP: Promise<void>;
  private constructor(readonly socket: Socket) {
    socket.on("data", (c: Buffer) => this.queue.push(c));
    socket.on("error", () => undefined);
    this.closedP = new Promise((r) =>
      socket.once("close", () => {
        this.closed = true;
        r();
      }),
    );
  }
  static async open(): Promise<RawClient> {
    const socket = tcpConnect({ host: "127.0.0.1", port: t.port });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new RawClient(socket);
  }
  write(bytes: Uint8Array): void {
    if (!this.closed) this.socket.write(bytes);
  }
  /** Resolves true once closed, false after `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    return await Promise.race([
      this.closedP.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), ms)),
    ]);
  }
  async importDevice(busid: string): Promise<void> {
    this.write(encodeImportRequest(busid));
    const deadline = Date.now() + 5000;
    for (;;) {
      const r = readOpReply(this.queue, "import");
      if (r.kind === "frame") {
        if (r.frame.op !== "import" || r.frame.status !== 0)
          throw new Error(`import refused: ${r.frame.status}`);
        return;
      }
      if (r.kind === "malformed") throw new Error(`import reply malformed: ${r.reason}`);
      if (this.closed || Date.now() > deadline) throw new Error("no import reply");
      await new Promise((res) => setTimeout(res, 1));
    }
  }
  destroy(): void {
    this.socket.destroy();
  }
}

// ------------------------------------------------------------------ streams and the oracle

const pduArb = fc.oneof(
  fc.record({ k: fc.constant("getdesc" as const), len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ k: fc.constant("ctrlwrite" as const), data: fc.uint8Array({ minLength: 0, maxLength: 64 }) }),
  fc.record({ k: fc.constant("bulkout" as const), data: fc.uint8Array({ minLength: 1, maxLength: 2048 }) }),
  fc.record({ k: fc.constant("bulkin" as const), len: fc.integer({ min: 1, max: 2048 }) }),
  fc.record({ k: fc.constant("intin" as const) }),
  fc.record({ k: fc.constant("unlink" as const), back: fc.nat({ max: 5 }) }),
);

function encodeStream(
  pdus: readonly (typeof pduArb extends fc.Arbitrary<infer T> ? T : never)[],
): Uint8Array {
  const parts: Uint8Array[] = [];
  let seq = 0;
  const base = { devid: DEVID, transferFlags: 0, startFrame: 0, numberOfPackets: -1, interval: 0, iso: [] };
  for (const p of pdus) {
    seq++;
    switch (p.k) {
      case "getdesc":
        parts.push(
          encodeCmdSubmit({
            ...base,
            seqnum: seq,
            directionIn: true,
            ep: 0,
            transferBufferLength: p.len,
            setup: encodeSetup({
              bmRequestType: 0x80,
              bRequest: 6,
              wValue: 0x100,
              wIndex: 0,
              wLength: p.len,
            }),
            data: new Uint8Array(0),
          }),
        );
        break;
      case "ctrlwrite":
        parts.push(
          encodeCmdSubmit({
            ...base,
            seqnum: seq,
            directionIn: false,
            ep: 0,
            transferBufferLength: p.data.length,
            setup: encodeSetup({
              bmRequestType: 0x40,
              bRequest: 1,
              wValue: 0,
              wIndex: 0,
              wLength: p.data.length,
            }),
            data: p.data,
          }),
        );
        break;
      case "bulkout":
        parts.push(
          encodeCmdSubmit({
            ...base,
            seqnum: seq,
            directionIn: false,
            ep: 1,
            transferBufferLength: p.data.length,
            setup: new Uint8Array(8),
            data: p.data,
          }),
        );
        break;
      case "bulkin":
      case "intin":
        parts.push(
          encodeCmdSubmit({
            ...base,
            seqnum: seq,
            directionIn: true,
            ep: p.k === "bulkin" ? 1 : 2,
            transferBufferLength: p.k === "bulkin" ? p.len : 8,
            setup: new Uint8Array(8),
            data: new Uint8Array(0),
          }),
        );
        break;
      case "unlink":
        parts.push(
          encodeCmdUnlink({
            seqnum: seq,
            devid: DEVID,
            directionIn: false,
            ep: 0,
            unlinkSeqnum: Math.max(1, seq - 1 - p.back),
          }),
        );
        break;
    }
  }
  return Buffer.concat(parts);
}

interface Verdict {
  /** The server must close the connection. */
  readonly mustClose: boolean;
  /** Timing decides (a repeated seqnum is legal once the first completed). */
  readonly unsure: boolean;
  /** Submits the server frames before any closing point, by seqnum. */
  readonly submits: Map<number, SentSubmit>;
  /** Bytes left half-framed at the end. */
  readonly leftover: number;
}

/** What the server will make of `stream` after an import of devid DEVID (its own frame reader, replayed). */
function oracle(stream: Uint8Array): Verdict {
  const q = new ByteQueue();
  q.push(stream);
  const submits = new Map<number, SentSubmit>();
  const seen = new Set<number>();
  let unsure = false;
  for (;;) {
    const r = readClientPdu(q);
    if (r.kind === "need") return { mustClose: false, unsure, submits, leftover: q.length };
    if (r.kind === "malformed") return { mustClose: true, unsure, submits, leftover: 0 };
    const f: ClientPdu = r.frame;
    if (f.devid !== DEVID) return { mustClose: true, unsure, submits, leftover: 0 };
    if (f.command === "submit") {
      if (seen.has(f.seqnum)) unsure = true;
      seen.add(f.seqnum);
      submits.set(f.seqnum, { directionIn: f.directionIn, transferBufferLength: f.transferBufferLength });
    }
  }
}

const runArb = fc.oneof(
  {
    weight: 1,
    arbitrary: fc.record({
      mode: fc.constant("op-garbage" as const),
      bytes: fc.uint8Array({ maxLength: 400 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      mode: fc.constant("urb-garbage" as const),
      bytes: fc.oneof(
        fc.uint8Array({ maxLength: 400 }),
        // Garbage that starts like a CMD_SUBMIT header.
        fc.uint8Array({ minLength: 48, maxLength: 200 }).map((b) => {
          b.set([0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 1], 0);
          return b;
        }),
      ),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      mode: fc.constant("mutated" as const),
      pdus: fc.array(pduArb, { minLength: 1, maxLength: 10 }),
      mutations: fc.array(fc.record({ at: fc.nat(), value: fc.nat({ max: 255 }) }), { maxLength: 3 }),
      cut: fc.oneof({ weight: 4, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.nat() }),
    }),
  },
);
type Run = typeof runArb extends fc.Arbitrary<infer T> ? T : never;

const stats = { runs: 0, closedAsExpected: 0, replies: 0, exact: 0, unsure: 0 };

function readReplies(c: RawClient, submits: Map<number, SentSubmit>, into: ServerPdu[]): void {
  for (;;) {
    const r = readServerPdu(c.queue, (s) => submits.get(s));
    if (r.kind === "need") return;
    if (r.kind === "malformed") throw new Error(`server sent a reply that does not frame: ${r.reason}`);
    into.push(r.frame);
  }
}

async function released(): Promise<void> {
  await eventually(() => !t.server.stats().imported.includes("1-1"), 5000, "1-1 released");
}

async function oneRun(run: Run): Promise<void> {
  stats.runs++;
  const c = await RawClient.open();
  try {
    if (run.mode === "op-garbage") {
      c.write(run.bytes);
      await c.closedWithin(30);
      return;
    }
    await c.importDevice("1-1");
    if (run.mode === "urb-garbage") {
      c.write(run.bytes);
      const v = oracle(run.bytes);
      if (v.mustClose && !(await c.closedWithin(3000)))
        throw new Error("server kept a connection that sent garbage");
      if (v.mustClose) stats.closedAsExpected++;
      return;
    }
    let stream = encodeStream(run.pdus);
    for (const m of run.mutations) if (stream.length > 0) stream[m.at % stream.length] = m.value;
    if (run.cut >= 0) stream = stream.subarray(0, run.cut % (stream.length + 1));
    const v = oracle(stream);
    c.write(stream);
    const replies: ServerPdu[] = [];
    if (v.mustClose) {
      if (!(await c.closedWithin(3000)))
        throw new Error("server kept a connection whose stream does not frame");
      stats.closedAsExpected++;
      readReplies(c, v.submits, replies);
    } else {
      readReplies(c, v.submits, replies);
      if (!v.unsure && v.leftover === 0 && !c.closed) {
        // Before unlinking: the server has taken every submit (answered it, or holds it in the engine).
        const taken = () => {
          readReplies(c, v.submits, replies);
          const answered = new Set(replies.filter((r) => r.command === "ret-submit").map((r) => r.seqnum))
            .size;
          const held = t.server.stats().perDevice.find((d) => d.busid === "1-1")?.urbs ?? 0;
          return c.closed || answered + held >= v.submits.size;
        };
        await eventually(taken, 3000, "the server to take every submit");
        // Unlink whatever is still in flight, then every submit must have exactly one outcome.
        const answered = new Set(replies.filter((r) => r.command === "ret-submit").map((r) => r.seqnum));
        const unlinkOf = new Map<number, number>();
        let seq = 0x4000_0000;
        for (const s of v.submits.keys()) {
          if (answered.has(s)) continue;
          unlinkOf.set(++seq, s);
          c.write(encodeCmdUnlink({ seqnum: seq, devid: DEVID, directionIn: false, ep: 0, unlinkSeqnum: s }));
        }
        const deadline = Date.now() + 3000;
        const outcomes = () => {
          const n = new Map<number, number>();
          for (const r of replies) {
            const target =
              r.command === "ret-submit"
                ? r.seqnum
                : r.status === ECONNRESET
                  ? unlinkOf.get(r.seqnum)
                  : undefined;
            if (target !== undefined) n.set(target, (n.get(target) ?? 0) + 1);
          }
          return n;
        };
        while (
          [...v.submits.keys()].some((s) => outcomes().get(s) !== 1) &&
          Date.now() < deadline &&
          !c.closed
        ) {
          await new Promise((r) => setTimeout(r, 2));
          readReplies(c, v.submits, replies);
        }
        const n = outcomes();
        for (const s of v.submits.keys()) {
          if (n.get(s) !== 1)
            throw new Error(
              `seqnum ${s}: ${n.get(s) ?? 0} outcomes (replies ${JSON.stringify(replies.map((r) => [r.command, r.seqnum, r.status]))})`,
            );
        }
        stats.exact++;
      } else if (v.unsure) stats.unsure++;
    }
    // Never two RET_SUBMITs for one seqnum (a repeated seqnum may legally get one per submit).
    const count = new Map<number, number>();
    for (const r of replies)
      if (r.command === "ret-submit") count.set(r.seqnum, (count.get(r.seqnum) ?? 0) + 1);
    if (!v.unsure) for (const [s, n] of count) if (n > 1) throw new Error(`seqnum ${s} got ${n} RET_SUBMITs`);
    stats.replies += replies.length;
  } finally {
    c.destroy(); // the client vanishes, whatever it had in flight
    await released();
  }
}

describe("fuzz: arbitrary byte streams against the USB/IP server", () => {
  it("closes bad connections alone, answers framed URBs at most (or exactly) once, and keeps serving others", async () => {
    const { baselineRate, rate } = await fuzzBeside(
      { name: "honest client", rounds: () => honestLoop.rounds },
      500,
      "usbip",
      runArb,
      oneRun,
      stats,
    );
    expect(honestLoop.error).toBeNull();
    expect(stats.runs).toBeGreaterThan(20);
    expect(stats.closedAsExpected).toBeGreaterThan(0);
    expect(stats.exact).toBeGreaterThan(0);
    expect(rate).toBeGreaterThan(baselineRate * 0.05);
    // 1-1 is importable and works after all that.
    const again = await t.imported("1-1");
    await enumerate(again);
    const payload = pattern(3000, 9);
    expect((await bulkOut(again, 1, payload)).status).toBe(0);
    expect(Buffer.compare((await bulkIn(again, 1, 3000)).data, payload)).toBe(0);
    again.close();
    await released();
    const engine = await t.server.connection.stats();
    expect(engine.portWorkers[1]).not.toBeNull();
  }, 60_000);
});
