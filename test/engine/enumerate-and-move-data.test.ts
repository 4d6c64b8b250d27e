/**
 * End to end through real worker threads: frontend (this thread) → URB ring →
 * backend worker → port ring → port worker → emulated device, and back.
 * Each emulated device is enumerated as a guest driver would, then moves data.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BulkOnlyClient } from "../../src/guest/bulk-only-client.js";
import { EPIPE, OK } from "../../src/urb/status.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { addr, port } from "../support/brands.js";
import { pattern } from "../support/data.js";
import { eventually, holdFor } from "../support/eventually.js";
import { type Rig, rig } from "./helpers.js";

let r: Rig;
beforeEach(async () => {
  r = await rig();
});
afterEach(async () => {
  await r.close();
});

describe("loopback device end to end", () => {
  it("enumerates with its descriptors and echoes bulk data of many sizes", async () => {
    await r.conn.attach(1, { kind: "emulated", name: "loopback" });
    const dev = await r.guest.enumerate(port(1), addr(5));
    expect(dev.vendorId).toBe(0x1209);
    expect(dev.productId).toBe(0x0001);
    expect(dev.interfaces[0]!.endpoints.map((e) => e.address)).toContain(0x81);
    for (const [i, size] of [1, 63, 64, 512, 4096, 65536, 300_000].entries()) {
      const data = pattern(size, i + 1);
      expect(await r.guest.transferOut(port(1), addr(5), 1, data)).toBe(size);
      const back = await r.guest.transferIn(port(1), addr(5), 1, size);
      expect(Buffer.compare(back, data)).toBe(0);
    }
    // The backend's wait strategy gives its account: how it waited, and (on Linux) its thread's CPU time.
    const wait = (await r.conn.stats()).wait;
    expect(wait.hits + wait.misses + wait.sleeps).toBeGreaterThan(0);
    if (process.platform === "linux") expect(wait.cpuNs).toBeGreaterThan(0);
  });

  it("stalls an endpoint on request, reports -EPIPE, and recovers after CLEAR_FEATURE(HALT)", async () => {
    await r.conn.attach(1, { kind: "emulated", name: "loopback" });
    await r.guest.enumerate(port(1), addr(7));
    await r.guest.control(port(1), addr(7), {
      bmRequestType: 0x40,
      bRequest: 0x03,
      wValue: 0,
      wIndex: 0x01,
      wLength: 0,
    });
    const range = r.guest.buffers.allocate(16);
    const stalled = await r.hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(7),
      endpoint: 1 as EndpointNum,
      directionIn: false,
      buffer: [range],
    });
    expect(stalled.status).toBe(EPIPE);
    await r.guest.control(port(1), addr(7), {
      bmRequestType: 0x02,
      bRequest: 1,
      wValue: 0,
      wIndex: 0x01,
      wLength: 0,
    });
    expect(await r.guest.transferOut(port(1), addr(7), 1, pattern(16, 9))).toBe(16);
  });

  it("answers vendor control requests with data in both directions", async () => {
    await r.conn.attach(2, { kind: "emulated", name: "loopback" });
    await r.guest.enumerate(port(2), addr(3));
    const data = pattern(200, 4);
    await r.guest.control(
      port(2),
      addr(3),
      { bmRequestType: 0x40, bRequest: 0x01, wValue: 0, wIndex: 0, wLength: 200 },
      data,
    );
    const back = await r.guest.control(port(2), addr(3), {
      bmRequestType: 0xc0,
      bRequest: 0x02,
      wValue: 0,
      wIndex: 0,
      wLength: 200,
    });
    expect(Buffer.compare(back, data)).toBe(0);
  });

  it("delivers interrupt IN reports in sequence", async () => {
    await r.conn.attach(1, { kind: "emulated", name: "loopback" });
    await r.guest.enumerate(port(1), addr(2));
    const first = await r.guest.transferIn(port(1), addr(2), 2, 8, "interrupt");
    const second = await r.guest.transferIn(port(1), addr(2), 2, 8, "interrupt");
    const seq = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, 8).getUint32(0, true);
    expect(second.length).toBe(8);
    expect(seq(second)).toBe(seq(first) + 1);
  });

  it("moves isochronous packets with per-packet results on alternate setting 1", async () => {
    await r.conn.attach(1, { kind: "emulated", name: "loopback" });
    await r.guest.enumerate(port(1), addr(4));
    await r.guest.control(port(1), addr(4), {
      bmRequestType: 0x01,
      bRequest: 11,
      wValue: 1,
      wIndex: 0,
      wLength: 0,
    });
    const packets = 8;
    const size = 256;
    const range = r.guest.buffers.allocate(packets * size);
    const c = await r.hcd.submit({
      type: "isochronous",
      port: port(1),
      device: addr(4),
      endpoint: 3 as EndpointNum,
      directionIn: true,
      buffer: [range],
      interval: 1,
      iso: {
        asap: true,
        packets: Array.from({ length: packets }, (_, i) => ({ offset: i * size, length: size })),
      },
    });
    expect(c.status).toBe(OK);
    expect(c.isoPackets).toHaveLength(packets);
    for (const p of c.isoPackets!) expect(p).toEqual({ status: OK, actualLength: size });
    const bytes = r.guest.bytes(range);
    for (let i = 0; i < size; i++) expect(bytes[size + i]).toBe(i % 63); // pattern restarts per packet
  });
});

describe("keyboard end to end", () => {
  it("keeps an interrupt IN pending while idle and delivers a key press fed through the API", async () => {
    await r.conn.attach(1, { kind: "emulated", name: "keyboard" });
    const dev = await r.guest.enumerate(port(1), addr(9));
    expect(dev.interfaces[0]).toMatchObject({ cls: 3, subclass: 1, protocol: 1 });
    const report = r.guest.transferIn(port(1), addr(9), 1, 8, "interrupt");
    let settled = false;
    void report.then(() => {
      settled = true;
    });
    await eventually(
      async () => (await r.conn.stats()).portWorkers[1]?.inFlight === 1,
      5000,
      "the interrupt IN in the keyboard's port",
    );
    await holdFor(50); // five polling intervals
    expect(settled).toBe(false); // an idle keyboard does not answer
    await r.conn.deviceCommand(1, "pressKeys", 0x02, [0x04]); // shift + 'a'
    const bytes = await report;
    expect([...bytes]).toEqual([0x02, 0, 0x04, 0, 0, 0, 0, 0]);
  });
});

describe("mass storage end to end", () => {
  it("answers the attach sequence and reads back the sectors it wrote", async () => {
    await r.conn.attach(3, { kind: "emulated", name: "storage", options: { sizeBytes: 8 * 1024 * 1024 } });
    const dev = await r.guest.enumerate(port(3), addr(11));
    expect(dev.interfaces[0]).toMatchObject({ cls: 8, subclass: 6, protocol: 0x50 });
    const eps = dev.interfaces[0]!.endpoints;
    const bulkIn = eps.find((e) => e.address & 0x80)!.address & 0x0f;
    const bulkOut = eps.find((e) => !(e.address & 0x80))!.address;
    const maxLun = await r.guest.control(port(3), addr(11), {
      bmRequestType: 0xa1,
      bRequest: 0xfe,
      wValue: 0,
      wIndex: 0,
      wLength: 1,
    });
    expect([...maxLun]).toEqual([0]);
    const bot = new BulkOnlyClient(r.guest, port(3), addr(11), bulkIn, bulkOut);
    expect(await bot.testUnitReady()).toBe(0);
    expect((await bot.inquiry()).vendor.length).toBeGreaterThan(0);
    expect(await bot.readCapacity()).toEqual({ blocks: (8 * 1024 * 1024) / 512, blockSize: 512 });
    const data = pattern(64 * 512, 77);
    expect((await bot.write10(1000, data)).status).toBe(0);
    const back = await bot.read10(1000, 64);
    expect(back.status).toBe(0);
    expect(Buffer.compare(back.data, data)).toBe(0);
  });
});
