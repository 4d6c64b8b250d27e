/**
 * usbredir peers that hold a connection without finishing anything: one that never sends its hello
 * (handshakeTimeoutMs, the name both servers use), one that sends part of a packet header after its hello
 * and stops, one whose bulk OUT data never all arrives (it holds guest memory meanwhile): each is dropped
 * once its bound passes (requestTimeoutMs for a packet begun and not finished). And a crowd of
 * connections while one peer holds the device: each is closed at once, logged once per interval rather
 * than once each, and the holder keeps moving data.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { UsbredirClient } from "../../src/usbredir/client.js";
import { encodeBulkPacket, encodeHello, RedirStatus } from "../../src/usbredir/protocol.js";
import type { UsbredirServerOptions } from "../../src/usbredir/server.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { LOOPBACK, startRedirServer, type TestRedirServer } from "../usbredir/helpers.js";
import { RawPeer } from "../usbredir/raw-peer.js";
import { RawConnection } from "./raw-connection.js";

let t: TestRedirServer | null = null;
const peers: { destroy(): void }[] = [];
afterEach(async () => {
  for (const p of peers.splice(0)) p.destroy();
  await t?.close();
  t = null;
});

/** The server, with the bounds this test sets by their names in both servers. */
async function server(bounds: Record<string, number>): Promise<TestRedirServer> {
  t = await startRedirServer(LOOPBACK, bounds as Partial<UsbredirServerOptions>);
  return t;
}

/** The device is free again: the next connection gets it and echoes verified data. */
async function nextConnectionMovesData(s: TestRedirServer): Promise<void> {
  await eventually(() => s.server.stats().peer === null, 5000, "the device released");
  const c = await s.connect({ timeoutMs: 5000 });
  await echo(c, 1);
  c.close();
}

async function echo(c: UsbredirClient, seed: number): Promise<void> {
  const data = pattern(3000, seed);
  expect((await c.bulk(0x01, data).reply).status).toBe(RedirStatus.SUCCESS);
  const back = await c.bulk(0x81, data.length).reply;
  expect(back.status).toBe(RedirStatus.SUCCESS);
  expect(Buffer.compare(back.data, data)).toBe(0);
}

describe("usbredir: connections that never finish what they began", () => {
  it("no hello at all: dropped after handshakeTimeoutMs", async () => {
    const s = await server({ handshakeTimeoutMs: 300 });
    const p = await RawPeer.open(s.port);
    peers.push(p);
    expect(await p.closedWithin(10_000), `still open; the log:\n${s.log.lines.join("\n")}`).toBe(true);
    await nextConnectionMovesData(s);
  });

  it("half a hello: dropped after requestTimeoutMs, well before handshakeTimeoutMs", async () => {
    const s = await server({ requestTimeoutMs: 300, handshakeTimeoutMs: 60_000 });
    const p = await RawPeer.open(s.port);
    peers.push(p);
    p.write(encodeHello("slow", 0).subarray(0, 20));
    expect(await p.closedWithin(10_000), `still open; the log:\n${s.log.lines.join("\n")}`).toBe(true);
    await nextConnectionMovesData(s);
  });

  it("after the hello, 6 bytes of a packet header, then silence: dropped after requestTimeoutMs", async () => {
    const s = await server({ requestTimeoutMs: 300 });
    const p = await RawPeer.open(s.port);
    peers.push(p);
    await p.hello();
    p.write(encodeBulkPacket(p.negotiated, { low: 1, high: 0 }, 0x01, 0, 8, 8).subarray(0, 6));
    expect(await p.closedWithin(10_000), `still open; the log:\n${s.log.lines.join("\n")}`).toBe(true);
    await nextConnectionMovesData(s);
  });

  it("a bulk OUT whose data never all arrives (its guest memory held): dropped after requestTimeoutMs", async () => {
    const s = await server({ requestTimeoutMs: 300 });
    const p = await RawPeer.open(s.port);
    peers.push(p);
    await p.hello();
    const pkt = encodeBulkPacket(p.negotiated, { low: 2, high: 0 }, 0x01, 0, 65536, 65536);
    p.write(pkt.subarray(0, pkt.length / 2));
    await eventually(() => s.server.stats().memoryBytes >= 65536, 5000, "the bulk OUT admitted");
    expect(await p.closedWithin(10_000), `still open; the log:\n${s.log.lines.join("\n")}`).toBe(true);
    await nextConnectionMovesData(s);
    expect(s.server.stats().memoryBytes).toBe(0);
  });
});

describe("usbredir: a crowd of connections while the device is held", () => {
  it("each is closed at once, logged once per interval rather than once each; the holder keeps moving data", async () => {
    const s = await server({ maxConnections: 2 });
    const holder = await s.connect();
    await echo(holder, 2);
    const before = s.log.lines.length;
    const crowd = await Promise.all(Array.from({ length: 30 }, () => RawConnection.open(s.port)));
    for (const c of crowd) peers.push(c);
    for (const c of crowd) await c.closedBy(5000, "a connection beyond the holder to be closed");
    const lines = s.log.lines.slice(before);
    expect(lines.length, lines.slice(0, 6).join("\n")).toBeGreaterThanOrEqual(1);
    expect(lines.length, lines.slice(0, 6).join("\n")).toBeLessThanOrEqual(2);
    await echo(holder, 3);
    holder.close();
    await nextConnectionMovesData(s);
  });
});
