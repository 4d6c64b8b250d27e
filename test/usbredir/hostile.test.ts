/**
 * Hostile and broken usbredir usb-guests (issue #13 item 4): garbage, a first packet that is not hello,
 * truncated headers, lengths over the limits, unknown and wrong-direction types, data that disagrees
 * with its header, a filter without its NUL, ids reused in flight, a disconnect mid-transfer, a peer
 * that never says hello, one that stops reading, one that floods bulk OUT. Each gets a clear log line
 * naming it and is cut off alone (or answered with an error status where the protocol has one), the
 * device is released, and the next connection gets it and moves verified data. Meanwhile a bystander
 * server (its own device and engine) keeps echoing verified data to its honest client.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { UsbredirClient } from "../../src/usbredir/client.js";
import {
  dataOf,
  encodeBulkPacket,
  encodeBytes,
  encodeControlPacket,
  encodeDeviceConnect,
  encodeEmpty,
  encodeFilter,
  encodeHello,
  MAX_REDIR_DATA,
  RedirStatus,
  RedirType,
} from "../../src/usbredir/protocol.js";
import type { UsbredirServerOptions } from "../../src/usbredir/server.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { HonestLoop } from "../support/honest-loop.js";
import { echoRound, LOOPBACK, startRedirServer, type TestRedirServer } from "./helpers.js";
import { RawPeer } from "./raw-peer.js";

// ------------------------------------------------------------------ the bystander

let bystander: TestRedirServer;
let honest: UsbredirClient;
let honestLoop: HonestLoop;

beforeAll(async () => {
  bystander = await startRedirServer(LOOPBACK);
  honest = await bystander.connect();
  honestLoop = new HonestLoop(echoRound(honest));
});

afterAll(async () => {
  await honestLoop?.stop();
  await bystander?.close();
});

/** The bystander has kept (or keeps) moving verified data since `since` rounds. */
async function bystanderMoved(since: number): Promise<void> {
  await eventually(
    () => honestLoop.rounds > since + 2 || honestLoop.error !== null,
    5000,
    "bystander rounds",
  );
  expect(honestLoop.error).toBeNull();
}

// ------------------------------------------------------------------ the server under attack

let t: TestRedirServer | null = null;
afterEach(async () => {
  await t?.close();
  t = null;
});

async function target(options: Partial<UsbredirServerOptions> = {}): Promise<TestRedirServer> {
  t = await startRedirServer(LOOPBACK, options);
  return t;
}

/** A raw peer that has exchanged hellos and seen the device announced. */
async function announced(s: TestRedirServer): Promise<RawPeer> {
  const p = await RawPeer.open(s.port);
  await p.hello();
  return p;
}

/** The server closed the peer's connection with one error line naming it and saying why. */
async function expectDropped(s: TestRedirServer, p: RawPeer | UsbredirClient, why: string): Promise<void> {
  if (p instanceof RawPeer) {
    if (!(await p.closedWithin(5000)))
      throw new Error(`the connection stayed open; the log:\n${s.log.lines.join("\n")}`);
  } else await p.closedPromise();
  await eventually(() => s.log.matching(why).length > 0, 2000, `log line "${why}"`);
  const line = s.log.matching(why)[0]!;
  expect(line).toMatch(/^error: 127\.0\.0\.1:\d+: protocol error: /);
  expect(line).toContain("closing the connection");
  if (p instanceof RawPeer) expect(p.refused).toBeNull();
}

/** The device is free again: the next connection gets it announced and echoes verified data through it. */
async function nextConnectionMovesData(s: TestRedirServer): Promise<void> {
  await eventually(() => s.server.stats().peer === null, 5000, "the device released");
  const c = await s.connect({ timeoutMs: 5000 });
  expect(c.device?.productId).toBe(1);
  const data = pattern(5000, 77);
  expect((await c.bulk(0x01, data).reply).status).toBe(RedirStatus.SUCCESS);
  const back = await c.bulk(0x81, data.length).reply;
  expect(back.status).toBe(RedirStatus.SUCCESS);
  expect(Buffer.compare(back.data, data)).toBe(0);
  c.close();
  await eventually(
    () => s.server.stats().peer === null && s.server.stats().memoryBytes === 0,
    5000,
    "released",
  );
}

/** A 16-byte header (both sides have 64-bit ids) with the given type, length and id. */
function header(type: number, length: number, idLow = 1, idHigh = 0): Uint8Array {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeUInt32LE(length >>> 0, 4);
  h.writeUInt32LE(idLow, 8);
  h.writeUInt32LE(idHigh, 12);
  return h;
}

// ------------------------------------------------------------------ the attacks

describe("usbredir hostile peers: framing", () => {
  it("garbage instead of a hello", async () => {
    const s = await target();
    const r0 = honestLoop.rounds;
    const p = await RawPeer.open(s.port);
    p.write(Buffer.from("GET / HTTP/1.1\r\nHost: usbvirt\r\n\r\n"));
    await expectDropped(s, p, "not hello");
    await nextConnectionMovesData(s);
    await bystanderMoved(r0);
  });

  it("a first packet that is a well-formed control packet, not a hello", async () => {
    const s = await target();
    const p = await RawPeer.open(s.port);
    const n = { caps: 0, headerSize: 12 };
    p.write(
      encodeControlPacket(
        n,
        { low: 1, high: 0 },
        { endpoint: 0x80, request: 6, requestType: 0x80, status: 0, value: 0x100, index: 0, length: 18 },
        0,
      ),
    );
    await expectDropped(s, p, "first packet is control_packet, not hello");
    await nextConnectionMovesData(s);
  });

  it("a second hello", async () => {
    const s = await target();
    const p = await announced(s);
    p.write(encodeHello("again", 0));
    await expectDropped(s, p, "a second hello");
    await nextConnectionMovesData(s);
  });

  it("truncated headers, then close (before and after the hello): a warning, and the device is released", async () => {
    const s = await target();
    const before = await RawPeer.open(s.port);
    before.write(encodeHello("cut", 0).subarray(0, 20));
    await eventually(
      () => s.server.stats().connections === 1 && before.packets.length > 0,
      2000,
      "server hello",
    );
    before.destroy();
    await eventually(() => s.log.matching("with 20 bytes of an incomplete packet").length > 0, 2000, "log");
    expect(s.log.matching("with 20 bytes of an incomplete packet")[0]).toMatch(
      /^warn: 127\.0\.0\.1:\d+: peer closed the connection/,
    );
    const after = await announced(s);
    after.write(header(RedirType.BULK_PACKET, 10).subarray(0, 11)); // TCP delivers it before the close
    after.destroy();
    await eventually(() => s.log.matching("with 11 bytes of an incomplete packet").length > 0, 2000, "log");
    expect(s.log.matching("with 11 bytes of an incomplete packet")[0]).toMatch(
      /^warn: 127\.0\.0\.1:\d+: peer closed the connection.*; usbvirt loopback 1209:0001 released/,
    );
    await nextConnectionMovesData(s);
  });

  it("lengths over the limits: packet data, hello capabilities, a bulk length", async () => {
    const s = await target();
    const r0 = honestLoop.rounds;
    const big = await announced(s);
    big.write(header(RedirType.BULK_PACKET, 10 + MAX_REDIR_DATA + 1));
    await expectDropped(
      s,
      big,
      `bulk_packet of ${10 + MAX_REDIR_DATA + 1} bytes (at most ${MAX_REDIR_DATA} of data)`,
    );
    await nextConnectionMovesData(s);

    const caps = await RawPeer.open(s.port);
    const hello = Buffer.concat([encodeHello("many caps", 0xff), Buffer.alloc(64)]);
    hello.writeUInt32LE(64 + 68, 4);
    caps.write(hello);
    await expectDropped(s, caps, "hello capability list of 68 bytes");
    await nextConnectionMovesData(s);

    const bulk = await announced(s);
    bulk.write(encodeBulkPacket(bulk.negotiated, { low: 5, high: 0 }, 0x81, 0, MAX_REDIR_DATA + 512, 0));
    await expectDropped(s, bulk, `bulk_packet of ${MAX_REDIR_DATA + 512} bytes (at most ${MAX_REDIR_DATA})`);
    await nextConnectionMovesData(s);
    await bystanderMoved(r0);
  });

  it("an unknown packet type, and one only the host sends (device_connect from the guest)", async () => {
    const s = await target();
    const unknown = await announced(s);
    unknown.write(header(77, 0));
    await expectDropped(s, unknown, "type 77 is not a packet the guest side sends");
    await nextConnectionMovesData(s);
    const wrong = await announced(s);
    wrong.write(
      encodeDeviceConnect(wrong.negotiated, {
        speed: 2,
        deviceClass: 0,
        deviceSubClass: 0,
        deviceProtocol: 0,
        vendorId: 1,
        productId: 2,
        bcdDevice: 3,
      }),
    );
    await expectDropped(s, wrong, "device_connect is not a packet the guest side sends");
    await nextConnectionMovesData(s);
  });

  it("a data packet whose data disagrees with its header (OUT short of its length; IN with data)", async () => {
    const s = await target();
    const out = await announced(s);
    const pkt = encodeBulkPacket(out.negotiated, { low: 9, high: 0 }, 0x01, 0, 100, 100);
    pkt.writeUInt32LE(10 + 50, 4);
    out.write(pkt.subarray(0, 16 + 10 + 50));
    await expectDropped(s, out, "bulk_packet carries 50 data bytes, its header calls for 100");
    await nextConnectionMovesData(s);
    const inWithData = await announced(s);
    inWithData.write(encodeBulkPacket(inWithData.negotiated, { low: 9, high: 0 }, 0x81, 0, 8, 8));
    await expectDropped(s, inWithData, "bulk_packet carries 8 data bytes, its header calls for 0");
    await nextConnectionMovesData(s);
  });

  it("a filter string without its NUL", async () => {
    const s = await target();
    const p = await announced(s);
    const f = encodeFilter(p.negotiated, "-1,-1,-1,-1,1");
    f[f.length - 1] = 0x7c;
    p.write(f);
    await expectDropped(s, p, "filter_filter string is not NUL-terminated");
    await nextConnectionMovesData(s);
  });
});

describe("usbredir hostile peers: transfers and budgets", () => {
  it("an id reused while its bulk IN is in flight", async () => {
    const s = await target();
    const c = await s.connect();
    const pending = c.bulk(0x81, 512); // nothing queued: the loopback NAKs until data arrives
    pending.reply.catch(() => undefined);
    await eventually(() => s.server.stats().urbs === 1, 2000, "the bulk IN in flight");
    c.raw(encodeBulkPacket(c.negotiated!, pending.id, 0x81, 0, 512, 0));
    await expectDropped(s, c, `bulk_packet id ${pending.id.high}:${pending.id.low} is already in flight`);
    expect(s.log.matching("1 URBs in flight cancelled").length).toBe(1);
    await nextConnectionMovesData(s);
  });

  it("a disconnect in the middle of a bulk OUT's data", async () => {
    const s = await target();
    const r0 = honestLoop.rounds;
    const c = await s.connect();
    const n = c.negotiated!;
    const pkt = encodeBulkPacket(n, { low: 3, high: 1 }, 0x01, 0, 65536, 65536);
    dataOf(n, pkt, 10).set(pattern(65536, 3));
    c.raw(pkt.subarray(0, pkt.length / 2));
    // The server admitted it: its buffer in guest memory is taken and half filled.
    await eventually(() => s.server.stats().memoryBytes >= 65536, 2000, "the bulk OUT admitted");
    c.close();
    await nextConnectionMovesData(s);
    expect(s.log.matching("of an incomplete packet")[0]).toMatch(
      /^warn: 127\.0\.0\.1:\d+: peer closed the connection with 32\d\d\d bytes of an incomplete packet/,
    );
    await bystanderMoved(r0);
  });

  it("a peer that never sends its hello is dropped after handshakeTimeoutMs", async () => {
    const s = await target({ handshakeTimeoutMs: 200 });
    const r0 = honestLoop.rounds;
    const p = await RawPeer.open(s.port);
    await expectDropped(s, p, "no hello within 200 ms");
    await bystanderMoved(r0);
    await nextConnectionMovesData(s);
  });

  it("a peer that stops reading while bulk IN replies pile up is paused, then dropped", async () => {
    const s = await target({ maxUnsentBytes: 64 * 1024, stalledPeerMs: 300 });
    const r0 = honestLoop.rounds;
    const c = await s.connect();
    c.socket.pause(); // never read again
    const chunk = pattern(256 * 1024, 5);
    for (let i = 0; i < 48; i++) {
      c.bulk(0x01, chunk).reply.catch(() => undefined);
      c.bulk(0x81, chunk.length).reply.catch(() => undefined);
    }
    await eventually(() => s.log.matching("peer stopped reading").length > 0, 20_000, "stall log");
    expect(s.log.matching("peer stopped reading")[0]).toMatch(/^error: 127\.0\.0\.1:\d+: protocol error: /);
    await bystanderMoved(r0);
    c.close();
    await nextConnectionMovesData(s);
  });

  it("a peer that does not read IN stream data holds at most its bound plus the URBs in flight", async () => {
    const s = await target({ maxUnsentBytes: 16 * 1024, stalledPeerMs: 20_000 });
    const c = await s.connect();
    const alt = await c.request(RedirType.SET_ALT_SETTING, [0, 1], RedirType.ALT_SETTING_STATUS);
    expect(alt.status).toBe(RedirStatus.SUCCESS);
    const iso = await c.request(RedirType.START_ISO_STREAM, [0x83, 32, 16], RedirType.ISO_STREAM_STATUS);
    expect(iso.status).toBe(RedirStatus.SUCCESS);
    c.socket.pause();
    // The loopback streams about 4 MB/s; unsent data must stop growing at the bound plus what the
    // 16 URBs in flight bring back (16 × 32 packets of 256 bytes and their headers, about 140 KiB).
    let most = 0;
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 50));
      most = Math.max(most, s.server.stats().unsentBytes);
    }
    expect(most).toBeGreaterThan(16 * 1024);
    expect(most).toBeLessThan(384 * 1024);
    c.socket.resume();
    c.close();
    await nextConnectionMovesData(s);
  });

  it("a peer that stops reading while interrupt and iso IN data piles up is dropped", async () => {
    const s = await target({ maxUnsentBytes: 16 * 1024, stalledPeerMs: 300 });
    const r0 = honestLoop.rounds;
    const c = await s.connect();
    const alt = await c.request(RedirType.SET_ALT_SETTING, [0, 1], RedirType.ALT_SETTING_STATUS);
    expect(alt.status).toBe(RedirStatus.SUCCESS);
    const iso = await c.request(RedirType.START_ISO_STREAM, [0x83, 32, 16], RedirType.ISO_STREAM_STATUS);
    expect(iso.status).toBe(RedirStatus.SUCCESS);
    const intr = await c.request(
      RedirType.START_INTERRUPT_RECEIVING,
      [0x82],
      RedirType.INTERRUPT_RECEIVING_STATUS,
    );
    expect(intr.status).toBe(RedirStatus.SUCCESS);
    c.socket.pause(); // never read again; the streams keep producing
    await eventually(() => s.log.matching("peer stopped reading").length > 0, 20_000, "stall log").catch(
      (err: Error) => {
        throw new Error(`${err.message}; the server: ${JSON.stringify(s.server.stats())}`);
      },
    );
    expect(s.log.matching("peer stopped reading")[0]).toMatch(/^error: 127\.0\.0\.1:\d+: protocol error: /);
    await bystanderMoved(r0);
    c.close();
    await nextConnectionMovesData(s);
  }, 40_000);

  it("more bulk INs than maxUrbsPerPeer: the excess waits, then is answered inval; the connection lives", async () => {
    const s = await target({ maxUrbsPerPeer: 2, blockedRequestMs: 200 });
    const c = await s.connect();
    const held = [c.bulk(0x81, 512), c.bulk(0x81, 512)];
    const excess = await c.bulk(0x81, 512).reply;
    expect(excess).toMatchObject({ status: RedirStatus.INVAL, length: 0 });
    expect(s.log.matching("waited 200 ms for its share of the engine (2 URBs").length).toBe(1);
    for (const h of held) c.cancel(h.id);
    for (const h of held) expect((await h.reply).status).toBe(RedirStatus.CANCELLED);
    const data = pattern(700, 1);
    expect((await c.bulk(0x01, data).reply).status).toBe(RedirStatus.SUCCESS);
    expect(Buffer.compare((await c.bulk(0x81, 700).reply).data, data)).toBe(0);
    c.close();
    await nextConnectionMovesData(s);
  });

  it("a bulk OUT flood beyond its guest memory: blocked, the excess answered inval, the rest delivered in order", async () => {
    // 8 MiB of guest memory: the loopback's 4 MiB FIFO takes 4 OUTs of 1 MiB, 7 more wait in guest
    // memory for room, the 12th finds none and is answered inval once nothing has moved for 400 ms.
    const s = await target({ guestMemoryMiB: 8, blockedRequestMs: 400 });
    const r0 = honestLoop.rounds;
    const c = await s.connect();
    const MiB = 1024 * 1024;
    const outs = Array.from({ length: 12 }, (_, i) => {
      const data = pattern(MiB, 100 + i);
      return { data, reply: c.bulk(0x01, data).reply };
    });
    const last = await outs[11]!.reply;
    expect(last).toMatchObject({ status: RedirStatus.INVAL, length: 0 });
    expect(s.log.matching("waited 400 ms for its share of the engine")).toHaveLength(1);
    await bystanderMoved(r0);
    // Read everything back: the 11 accepted OUTs, in order; each answered once, with its full length.
    const want = Buffer.concat(outs.slice(0, 11).map((o) => o.data));
    const got: Uint8Array[] = [];
    let total = 0;
    for (let i = 0; i < 100 && total < want.length; i++) {
      const r = await c.bulk(0x81, 256 * 1024).reply;
      expect(r.status).toBe(RedirStatus.SUCCESS);
      got.push(r.data);
      total += r.data.length;
    }
    expect(Buffer.compare(Buffer.concat(got), want)).toBe(0);
    for (const o of outs.slice(0, 11))
      expect(await o.reply).toMatchObject({ status: RedirStatus.SUCCESS, length: MiB });
    expect(c.closed).toBeNull();
    c.close();
    await nextConnectionMovesData(s);
  });

  it("start/stop_interrupt_receiving for an OUT endpoint get no status QEMU's parser would refuse", async () => {
    const s = await target();
    const p = await announced(s);
    const n = p.negotiated;
    p.write(encodeBytes(n, RedirType.STOP_INTERRUPT_RECEIVING, { low: 7, high: 1 }, [0x02]));
    p.write(encodeBytes(n, RedirType.START_INTERRUPT_RECEIVING, { low: 8, high: 1 }, [0x02]));
    p.write(encodeBytes(n, RedirType.GET_CONFIGURATION, { low: 9, high: 1 }, []));
    await p.waitFor(
      (x) => x.type === RedirType.CONFIGURATION_STATUS && x.idLow === 9,
      2000,
      "configuration_status",
    );
    expect(p.refused).toBeNull();
    expect(p.packets.filter((x) => x.type === RedirType.INTERRUPT_RECEIVING_STATUS)).toEqual([]);
    expect(s.log.matching("start_interrupt_receiving on 0x02: not an interrupt IN endpoint")).toHaveLength(1);
    p.destroy();
    await nextConnectionMovesData(s);
  });

  it("a reset and set_configuration mid-stream are answered, and in-flight transfers each get one reply", async () => {
    const s = await target();
    const c = await s.connect();
    const pending = c.bulk(0x81, 512);
    await eventually(() => s.server.stats().urbs === 1, 2000, "the bulk IN in flight");
    c.raw(encodeEmpty(c.negotiated!, RedirType.RESET));
    expect((await pending.reply).status).toBe(RedirStatus.CANCELLED);
    const st = await c.request(RedirType.SET_CONFIGURATION, [1], RedirType.CONFIGURATION_STATUS);
    expect(st.status).toBe(RedirStatus.SUCCESS);
    c.raw(encodeBytes(c.negotiated!, RedirType.SET_CONFIGURATION, { low: 0, high: 0 }, [9]));
    const bad = await c.waitFor((p) => p.type === RedirType.CONFIGURATION_STATUS && p.id.low === 0);
    expect(bad.status).toBe(RedirStatus.INVAL);
    c.close();
    await nextConnectionMovesData(s);
  });
});
