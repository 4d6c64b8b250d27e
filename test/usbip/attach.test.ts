/**
 * `usbvirt attach` against `usbvirt serve`, both in-process: a local engine whose port 1 holds the remote
 * device (the usbip-remote backend in a port worker) enumerates it and moves verified data end to end.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BulkOnlyClient } from "../../src/guest/bulk-only-client.js";
import { attachRemote, loopbackCheck, parseHostPort } from "../../src/usbip-attach/attach.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { startServer, type TestServer } from "./helpers.js";

let t: TestServer;

beforeAll(async () => {
  t = await startServer();
});

afterAll(async () => {
  await t?.close();
});

describe("attach", () => {
  it("parses HOST, HOST:PORT and [v6]:PORT", () => {
    expect(parseHostPort("example")).toEqual({ host: "example", port: 3240 });
    expect(parseHostPort("10.0.0.2:4000")).toEqual({ host: "10.0.0.2", port: 4000 });
    expect(parseHostPort("[::1]:5")).toEqual({ host: "::1", port: 5 });
    expect(parseHostPort("::1")).toEqual({ host: "::1", port: 3240 });
    expect(() => parseHostPort("h:99999")).toThrow(/HOST:PORT/);
  });

  it("imports the loopback, enumerates it, and the --check round trip passes", async () => {
    const att = await attachRemote({ host: "127.0.0.1", port: t.port, busid: "1-1" });
    try {
      expect([att.device.vendorId, att.device.productId]).toEqual([0x1209, 0x0001]);
      expect(att.device.interfaces[0]!.endpoints.map((e) => e.address)).toEqual([0x01, 0x81, 0x82]);
      expect(t.server.stats().imported).toEqual(["1-1"]);
      const check = await loopbackCheck(att, 256 * 1024);
      expect(check).toMatchObject({ ok: true });
    } finally {
      await att.close();
    }
    await eventually(() => t.server.stats().imported.length === 0, 5000, "server saw the detach");
    expect(t.log.matching("detached 1-1").length).toBeGreaterThan(0);
  });

  it("imports the storage device and writes and reads sectors through two engines", async () => {
    const att = await attachRemote({ host: "127.0.0.1", port: t.port, busid: "1-3" });
    try {
      const eps = att.device.interfaces[0]!.endpoints;
      const bot = new BulkOnlyClient(
        att.guest,
        att.port,
        att.address,
        eps.find((e) => (e.address & 0x80) !== 0)!.address & 0x0f,
        eps.find((e) => (e.address & 0x80) === 0)!.address,
      );
      const cap = await bot.readCapacity();
      expect(cap.blockSize).toBe(512);
      const sectors = pattern(32 * 512, 21);
      expect((await bot.write10(64, sectors)).status).toBe(0);
      const read = await bot.read10(64, 32);
      expect(read.status).toBe(0);
      expect(Buffer.compare(read.data, sectors)).toBe(0);
      const check = await loopbackCheck(att);
      expect(check.ok).toBe(false);
      expect(check.detail).toContain("not usbvirt's loopback");
    } finally {
      await att.close();
    }
  });

  it("iso IN through both engines: packets re-expanded at their offsets", async () => {
    const att = await attachRemote({ host: "127.0.0.1", port: t.port, busid: "1-1" });
    try {
      await att.guest.control(att.port, att.address, {
        bmRequestType: 0x01,
        bRequest: 11,
        wValue: 1,
        wIndex: 0,
        wLength: 0,
      });
      const range = att.guest.buffers.allocate(1200);
      att.guest.bytes(range).fill(0xee);
      const c = await att.conn.frontend!.submit({
        type: "isochronous",
        port: att.port,
        device: att.address,
        endpoint: 3 as never,
        directionIn: true,
        buffer: [range],
        interval: 1,
        iso: { asap: true, packets: [0, 300, 600, 900].map((offset) => ({ offset, length: 300 })) },
      });
      expect(c.status).toBe(0);
      expect(c.isoPackets!.map((p) => p.actualLength)).toEqual([256, 256, 256, 256]);
      const bytes = att.guest.bytes(range);
      for (const base of [0, 300, 600, 900]) {
        expect(bytes[base + 62]).toBe(62);
        expect(bytes[base + 63]).toBe(0);
        expect(bytes[base + 256]).toBe(0xee); // the gap after each packet is untouched
      }
      att.guest.buffers.release(range);
    } finally {
      await att.close();
    }
  });

  it("a busy or unknown device fails the attach with the server's reason", async () => {
    const holder = await t.imported("1-2");
    await expect(attachRemote({ host: "127.0.0.1", port: t.port, busid: "1-2" })).rejects.toThrow(/DEV_BUSY/);
    holder.close();
    await expect(attachRemote({ host: "127.0.0.1", port: t.port, busid: "7-7" })).rejects.toThrow(/NODEV/);
  });
});
