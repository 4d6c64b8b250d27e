/**
 * The USB/IP management phase (before a device is imported) against clients that abuse it: a second
 * OP_REQ_DEVLIST on the same connection (Linux's usbipd answers one request per connection, then closes
 * it), a request sent in part and never finished (in the management phase, and a CMD_SUBMIT header or its
 * OUT data after import), a connection that sends nothing at all, and more connections than the server
 * takes. Each is closed by the server within its bound (requestTimeoutMs, handshakeTimeoutMs,
 * maxConnections) with a log line, the refusals logged once per interval rather than once each, and
 * the server keeps serving honest clients.
 */
import { afterEach, describe, expect, it } from "vitest";
import { UsbipClient } from "../../src/usbip/client.js";
import { encodeDevlistRequest, encodeImportRequest, readOpReply } from "../../src/usbip/management-pdus.js";
import { encodeCmdSubmit } from "../../src/usbip/urb-pdus.js";
import type { UsbipServerOptions } from "../../src/usbip-server/server.js";
import { ByteQueue } from "../../src/util/byte-queue.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { bulkIn, bulkOut, enumerate, startServer, type TestServer } from "../usbip/helpers.js";
import { RawConnection } from "./raw-connection.js";

let t: TestServer | null = null;
const raws: RawConnection[] = [];
afterEach(async () => {
  for (const r of raws.splice(0)) r.destroy();
  await t?.close();
  t = null;
});

/** The server's options, with the bounds this test sets by their names in both servers. */
async function server(bounds: Record<string, number>): Promise<TestServer> {
  t = await startServer(bounds as Partial<UsbipServerOptions>);
  return t;
}

async function open(s: TestServer): Promise<RawConnection> {
  const r = await RawConnection.open(s.port);
  raws.push(r);
  return r;
}

/** An honest client still lists the devices, imports one and moves verified data. */
async function stillServes(s: TestServer): Promise<void> {
  const list = await UsbipClient.connect({ host: "127.0.0.1", port: s.port });
  try {
    expect((await list.devlist()).map((d) => d.busid)).toEqual(["1-1", "1-2", "1-3"]);
  } finally {
    list.close();
  }
  const c = await s.imported("1-1");
  await enumerate(c);
  const data = pattern(2000, 4);
  expect((await bulkOut(c, 1, data)).status).toBe(0);
  expect(Buffer.compare((await bulkIn(c, 1, data.length)).data, data)).toBe(0);
  c.close();
  await eventually(() => !s.server.stats().imported.includes("1-1"), 5000, "1-1 released");
}

/** Lines naming connection `r` at warn or error level. */
function linesOf(s: TestServer, r: RawConnection): string[] {
  return s.log.lines.filter((l) => /^(warn|error): /.test(l) && l.includes(`${r.name}:`));
}

describe("USB/IP management phase: one request per connection", () => {
  it("a second OP_REQ_DEVLIST on the same connection gets no answer: the connection closes after the first reply", async () => {
    const s = await server({});
    const r = await open(s);
    r.write(Buffer.concat([encodeDevlistRequest(), encodeDevlistRequest()]));
    await r.closedBy(5000, "the server to close the connection after one devlist reply");
    const q = new ByteQueue();
    q.push(r.received);
    const first = readOpReply(q, "devlist");
    expect(first.kind).toBe("frame");
    if (first.kind === "frame" && first.frame.op === "devlist") {
      expect(first.frame.devices.map((d) => d.busid)).toEqual(["1-1", "1-2", "1-3"]);
    }
    expect(q.length, "bytes after the first reply (a second answer)").toBe(0);
    await stillServes(s);
  });

  it("one OP_REQ_DEVLIST, answered, then the server closes the connection", async () => {
    const s = await server({});
    const r = await open(s);
    r.write(encodeDevlistRequest());
    await r.closedBy(5000, "the server to close the connection after its devlist reply");
    expect(r.received.length).toBeGreaterThan(12);
  });
});

describe("USB/IP: requests sent in part and never finished, connections that say nothing", () => {
  it("4 bytes of an OP header, then silence: dropped after requestTimeoutMs", async () => {
    const s = await server({ requestTimeoutMs: 300, handshakeTimeoutMs: 60_000 });
    const r = await open(s);
    r.write(encodeDevlistRequest().subarray(0, 4));
    // Well before handshakeTimeoutMs: the half-sent request is what ends it.
    await r.closedBy(10_000, "the half-sent request to be dropped");
    expect(r.received.length).toBe(0);
    await eventually(() => linesOf(s, r).length > 0, 2000, "a log line naming the connection");
    await stillServes(s);
  });

  it("20 of the 40 bytes of an OP_REQ_IMPORT, then silence: dropped after requestTimeoutMs", async () => {
    const s = await server({ requestTimeoutMs: 300, handshakeTimeoutMs: 60_000 });
    const held = await Promise.all(Array.from({ length: 8 }, () => open(s)));
    for (const r of held) r.write(encodeImportRequest("1-1").subarray(0, 20));
    for (const r of held) await r.closedBy(10_000, "every half-sent import to be dropped");
    await stillServes(s);
  });

  it("after import, half a CMD_SUBMIT header, and a bulk OUT whose data never all arrives: dropped after requestTimeoutMs", async () => {
    const s = await server({ requestTimeoutMs: 300 });
    const submit = {
      seqnum: 1,
      devid: 0x10001,
      directionIn: false,
      ep: 1,
      transferFlags: 0,
      transferBufferLength: 4096,
      startFrame: 0,
      numberOfPackets: -1,
      interval: 0,
      setup: new Uint8Array(8),
      data: pattern(4096, 1),
      iso: [],
    };
    for (const cut of [30, 48 + 100]) {
      const c = await s.imported("1-1");
      await enumerate(c);
      let closed = false;
      void c.whenClosed().then(() => {
        closed = true;
      });
      c.writeRaw(encodeCmdSubmit(submit).subarray(0, cut));
      await eventually(
        () => closed,
        10_000,
        `the connection holding ${cut} bytes of a CMD_SUBMIT to be dropped`,
      );
      await eventually(() => !s.server.stats().imported.includes("1-1"), 5000, "1-1 released");
    }
    await stillServes(s);
  });

  it("a connection that sends nothing is dropped after handshakeTimeoutMs", async () => {
    const s = await server({ handshakeTimeoutMs: 300 });
    const r = await open(s);
    await r.closedBy(10_000, "the silent connection to be dropped");
    expect(r.received.length).toBe(0);
    await eventually(() => linesOf(s, r).length > 0, 2000, "a log line naming the connection");
    await stillServes(s);
  });
});

describe("USB/IP: maxConnections", () => {
  it("N+1 connections: the extra ones are closed at once, unanswered, logged once per interval; the server keeps serving", async () => {
    const s = await server({ maxConnections: 3 });
    const held = await Promise.all([open(s), open(s), open(s)]);
    await eventually(() => s.server.stats().clients === 3, 5000, "three connections held");
    const before = s.log.lines.length;
    const extra = await Promise.all(Array.from({ length: 10 }, () => open(s)));
    for (const r of extra) r.write(encodeDevlistRequest());
    for (const r of extra) await r.closedBy(5000, "the connection over maxConnections to be closed");
    for (const r of extra) expect(r.received.length, "an answer to a refused connection").toBe(0);
    const refusals = s.log.lines.slice(before).filter((l) => /^(warn|error): /.test(l));
    expect(refusals.length, refusals.join("\n")).toBeGreaterThanOrEqual(1);
    expect(refusals.length, refusals.join("\n")).toBeLessThanOrEqual(2);
    // The held connections were not touched; once one goes, a new client is served.
    for (const r of held) expect(r.closed).toBe(false);
    held[0]!.destroy();
    await eventually(() => s.server.stats().clients === 2, 5000, "a slot free");
    await stillServes(s);
  });
});
