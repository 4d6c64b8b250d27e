/**
 * The USB/IP server over real TCP on 127.0.0.1: device list, import, enumeration of every emulated device,
 * data on each, unlink, concurrency, busy imports, and re-import after a client vanished.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UsbipImportError } from "../../src/usbip/client.js";
import { OpStatus, TransferFlag, UsbipSpeed } from "../../src/usbip/protocol.js";
import { pattern } from "../support/data.js";
import { eventually, holdFor } from "../support/eventually.js";
import {
  bulkIn,
  bulkOut,
  checkedControl,
  control,
  enumerate,
  startServer,
  type TestServer,
} from "./helpers.js";

let t: TestServer;
/** URBs the engine holds for the client that imported `busid`. */
const urbsOf = (busid: string) => t.server.stats().perDevice.find((d) => d.busid === busid)?.urbs ?? 0;

beforeAll(async () => {
  t = await startServer();
});

afterAll(async () => {
  await t?.close();
});

describe("device list and import", () => {
  it("lists the three devices with records and interfaces", async () => {
    const c = await t.connect();
    const devices = await c.devlist();
    c.close();
    expect(devices.map((d) => d.busid)).toEqual(["1-1", "1-2", "1-3"]);
    const [loop, kbd, disk] = devices;
    expect(loop).toMatchObject({
      busnum: 1,
      devnum: 1,
      idVendor: 0x1209,
      idProduct: 0x0001,
      bNumConfigurations: 2,
    });
    expect(loop!.interfaces).toEqual([{ cls: 0xff, subclass: 0, protocol: 0 }]);
    expect(kbd).toMatchObject({ idProduct: 0x0002, speed: UsbSpeed.FULL });
    expect(kbd!.interfaces).toEqual([{ cls: 3, subclass: 1, protocol: 1 }]);
    expect(disk).toMatchObject({ idProduct: 0x0003, speed: UsbSpeed.HIGH });
    expect(disk!.interfaces).toEqual([{ cls: 8, subclass: 6, protocol: 0x50 }]);
    expect(t.log.matching("device list").length).toBeGreaterThan(0);
  });

  it("knows each device's own serial (its iSerialNumber string, read when it was exported)", () => {
    expect(t.server.devices.map((d) => d.serial)).toEqual([
      "USBVIRT-LOOP-0001",
      "USBVIRT-KBD-0001",
      "5553425649520001",
    ]);
  });

  it("an unknown busid is refused with ST_NODEV", async () => {
    const c = await t.connect();
    await expect(c.import("9-9")).rejects.toMatchObject({ status: OpStatus.NODEV });
  });
});

const UsbSpeed = UsbipSpeed;

describe("a SuperSpeed device over USB/IP", () => {
  it("has record speed 5 (USB_SPEED_SUPER, so vhci-hcd puts it on a SuperSpeed port) and 1024-byte bulk", async () => {
    const ss = await startServer({
      devices: [{ kind: "emulated", name: "storage", options: { sizeBytes: 1024 * 1024, speed: 4 } }],
    });
    try {
      const c = await ss.connect();
      const [disk] = await c.devlist();
      c.close();
      expect(disk).toMatchObject({ idProduct: 0x0003, speed: UsbSpeed.SUPER });
      const imported = await ss.imported(disk!.busid);
      const d = await enumerate(imported);
      expect(d.interfaces[0]!.endpoints.map((e) => e.maxPacketSize)).toEqual([1024, 1024]);
    } finally {
      await ss.close();
    }
  });
});

describe("loopback over USB/IP", () => {
  it("enumerates, echoes bulk data, and answers vendor control requests", async () => {
    const c = await t.imported("1-1");
    expect(c.device!.busid).toBe("1-1");
    const d = await enumerate(c);
    expect([d.vendorId, d.productId, d.configuration]).toEqual([0x1209, 0x0001, 1]);
    expect(d.interfaces[0]!.endpoints.map((e) => e.address)).toEqual([0x01, 0x81, 0x82]);

    const payload = pattern(100_000, 3);
    const w = await bulkOut(c, 1, payload);
    expect([w.status, w.actualLength]).toEqual([0, payload.length]);
    const r = await bulkIn(c, 1, payload.length);
    expect(r.status).toBe(0);
    expect(Buffer.compare(r.data, payload)).toBe(0);

    const ctl = pattern(200, 9);
    await checkedControl(
      c,
      { bmRequestType: 0x40, bRequest: 0x01, wValue: 0, wIndex: 0, wLength: ctl.length },
      ctl,
    );
    const back = await checkedControl(c, {
      bmRequestType: 0xc0,
      bRequest: 0x02,
      wValue: 0,
      wIndex: 0,
      wLength: 200,
    });
    expect(Buffer.compare(back, ctl)).toBe(0);

    // A bad endpoint is a per-URB error; the connection stays usable.
    const bad = await bulkIn(c, 7, 64);
    expect(bad.status).toBe(-22);
    const again = await checkedControl(c, {
      bmRequestType: 0x80,
      bRequest: 6,
      wValue: 0x100,
      wIndex: 0,
      wLength: 18,
    });
    expect(again.length).toBe(18);
    c.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
    expect(t.log.matching("detached 1-1").length).toBeGreaterThan(0);
  });

  it("unlink of a pending IN: RET_UNLINK -ECONNRESET and no RET_SUBMIT; of a completed one: 0", async () => {
    const c = await t.imported("1-1");
    await enumerate(c);
    const pending = c.submit({ ep: 1, directionIn: true, length: 512 });
    await eventually(() => urbsOf("1-1") === 1, 5000, "the IN in the engine");
    const status = await c.unlink(pending.seqnum);
    expect(status).toBe(-104);
    const result = await pending.done;
    expect(result.unlinked).toBe(true);

    const w = await bulkOut(c, 1, pattern(64, 1));
    expect(w.status).toBe(0);
    const done = c.submit({ ep: 1, directionIn: true, length: 64 });
    const r = await done.done;
    expect(r.status).toBe(0);
    expect(await c.unlink(done.seqnum)).toBe(0);
    // The stream is still in sync: no stray RET_SUBMIT arrived (the client would have dropped the connection).
    const again = await checkedControl(c, {
      bmRequestType: 0x80,
      bRequest: 6,
      wValue: 0x100,
      wIndex: 0,
      wLength: 18,
    });
    expect(again.length).toBe(18);
    expect(c.closed).toBe(false);
    c.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });

  it("a second import of an imported device gets ST_DEV_BUSY; re-import works after a client vanished mid-URB", async () => {
    const first = await t.imported("1-1");
    await enumerate(first);
    const second = await t.connect();
    await expect(second.import("1-1")).rejects.toBeInstanceOf(UsbipImportError);
    expect(t.log.matching("refused (DEV_BUSY)").length).toBeGreaterThan(0);
    // Leave an IN pending and vanish (vhci detach: close, no unlinks).
    first.submit({ ep: 1, directionIn: true, length: 4096 });
    first.submit({ ep: 2, directionIn: true, length: 8, interval: 4 });
    // The bulk IN stays pending (nothing to read back); the interrupt IN completes every 4 ms, so only the
    // bulk one is sure to be seen in the engine.
    await eventually(() => urbsOf("1-1") >= 1, 5000, "the bulk IN in the engine");
    first.close();
    const third = await t.imported("1-1");
    const d = await enumerate(third);
    expect(d.productId).toBe(1);
    const payload = pattern(1000, 5);
    expect((await bulkOut(third, 1, payload)).status).toBe(0);
    const r = await bulkIn(third, 1, 1000);
    expect(Buffer.compare(r.data, payload)).toBe(0);
    third.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });

  it("a forwarded port reset keeps the device usable (the server sets the address again)", async () => {
    const c = await t.imported("1-1");
    await enumerate(c);
    const reset = await control(c, { bmRequestType: 0x23, bRequest: 3, wValue: 4, wIndex: 1, wLength: 0 });
    expect(reset.status).toBe(0);
    const d = await enumerate(c);
    expect(d.productId).toBe(1);
    expect((await bulkOut(c, 1, pattern(10, 1))).status).toBe(0);
    expect((await bulkIn(c, 1, 10)).actualLength).toBe(10);
    c.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });
});

describe("isochronous over USB/IP", () => {
  it("iso IN comes back compacted with per-packet descriptors; iso OUT is accepted", async () => {
    const c = await t.imported("1-1");
    await enumerate(c);
    // Alternate setting 1 has the iso endpoints (0x03 OUT, 0x83 IN, 256 bytes per 1 ms).
    await checkedControl(c, { bmRequestType: 0x01, bRequest: 11, wValue: 1, wIndex: 0, wLength: 0 });
    const packets = [0, 300, 600, 900].map((offset) => ({ offset, length: 300 }));
    const r = await c.submit({ ep: 3, directionIn: true, length: 1200, interval: 1, iso: packets }).done;
    expect(r.status).toBe(0);
    expect(r.iso.map((d) => [d.offset, d.length, d.actualLength, d.status])).toEqual(
      packets.map((p) => [p.offset, 300, 256, 0]),
    );
    expect(r.actualLength).toBe(1024);
    expect(r.data.length).toBe(1024);
    for (let i = 0; i < 1024; i++) expect(r.data[i]).toBe((i % 256) % 63);
    const out = await c.submit({
      ep: 3,
      directionIn: false,
      data: pattern(512, 1),
      interval: 1,
      iso: [
        { offset: 0, length: 256 },
        { offset: 256, length: 256 },
      ],
    }).done;
    expect(out.status).toBe(0);
    expect(out.iso.map((d) => d.actualLength)).toEqual([256, 256]);
    // Iso descriptors on a bulk endpoint: a per-URB error, the stream stays in sync.
    const wrong = await c.submit({ ep: 1, directionIn: true, length: 256, iso: [{ offset: 0, length: 256 }] })
      .done;
    expect(wrong.status).toBe(-22);
    c.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });
});

describe("keyboard and storage over USB/IP", () => {
  it("keyboard: enumerates; an idle interrupt IN stays pending until a key is pressed", async () => {
    const c = await t.imported("1-2");
    const d = await enumerate(c);
    expect(d.productId).toBe(2);
    const report = c.submit({ ep: 1, directionIn: true, length: 8, interval: 10 });
    let settled = false;
    void report.done.then(() => {
      settled = true;
    });
    await eventually(() => urbsOf("1-2") === 1, 5000, "the interrupt IN in the engine");
    await holdFor(100); // ten polling intervals: an idle keyboard must not answer in them
    expect(settled).toBe(false);
    await t.server.connection.deviceCommand(2, "pressKeys", 0, [0x0b, 0x0c]);
    const r = await report.done;
    expect(r.status).toBe(0);
    expect([r.data[2], r.data[3]]).toEqual([0x0b, 0x0c]);
    c.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });

  it("storage: Bulk-Only INQUIRY, READ CAPACITY, sectors written and read back", async () => {
    const c = await t.imported("1-3");
    const d = await enumerate(c);
    expect(d.productId).toBe(3);
    const eps = d.interfaces[0]!.endpoints;
    const inEp = eps.find((e) => e.address & 0x80)!.address & 0x0f;
    const outEp = eps.find((e) => !(e.address & 0x80))!.address;
    const maxLun = await control(c, {
      bmRequestType: 0xa1,
      bRequest: 0xfe,
      wValue: 0,
      wIndex: 0,
      wLength: 1,
    });
    expect(maxLun.status).toBe(0);
    let tag = 1;
    const scsi = async (cdb: number[], dataIn: number, dataOut?: Uint8Array) => {
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
      if (dataOut) expect((await bulkOut(c, outEp, dataOut)).status).toBe(0);
      else if (dataIn > 0) data = (await bulkIn(c, inEp, dataIn)).data;
      const csw = await bulkIn(c, inEp, 13);
      const cv = new DataView(csw.data.buffer, csw.data.byteOffset, 13);
      expect(cv.getUint32(0, true)).toBe(0x53425355);
      expect(cv.getUint32(4, true)).toBe(tag++);
      return { status: csw.data[12]!, data };
    };
    const inquiry = await scsi([0x12, 0, 0, 0, 36, 0], 36);
    expect(inquiry.status).toBe(0);
    expect(Buffer.from(inquiry.data.subarray(8, 16)).toString("latin1").trim().length).toBeGreaterThan(0);
    const cap = await scsi([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    const cv = new DataView(cap.data.buffer, cap.data.byteOffset, 8);
    expect(cv.getUint32(0, false) + 1).toBe((4 * 1024 * 1024) / 512);
    const sectors = pattern(64 * 512, 11);
    const lba = 100;
    const write = await scsi([0x2a, 0, 0, 0, 0, lba, 0, 0, 64, 0], 0, sectors);
    expect(write.status).toBe(0);
    const read = await scsi([0x28, 0, 0, 0, 0, lba, 0, 0, 64, 0], 64 * 512);
    expect(read.status).toBe(0);
    expect(Buffer.compare(read.data, sectors)).toBe(0);
    c.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });

  it("two clients on two devices at once", async () => {
    const a = await t.imported("1-1");
    const b = await t.imported("1-3");
    await Promise.all([enumerate(a), enumerate(b)]);
    const work = async (i: number) => {
      const payload = pattern(8192, i);
      expect((await bulkOut(a, 1, payload)).status).toBe(0);
      const r = await bulkIn(a, 1, 8192);
      expect(Buffer.compare(r.data, payload)).toBe(0);
    };
    const storage = async () => {
      for (let i = 0; i < 10; i++) {
        const r = await control(b, {
          bmRequestType: 0x80,
          bRequest: 6,
          wValue: 0x100,
          wIndex: 0,
          wLength: 18,
        });
        expect(r.status).toBe(0);
      }
    };
    await Promise.all([
      (async () => {
        for (let i = 0; i < 10; i++) await work(i);
      })(),
      storage(),
    ]);
    expect(t.server.stats().imported.sort()).toEqual(["1-1", "1-3"]);
    a.close();
    b.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });

  it("SHORT_NOT_OK on a short bulk IN completes with -EREMOTEIO", async () => {
    const c = await t.imported("1-1");
    await enumerate(c);
    expect((await bulkOut(c, 1, pattern(10, 2))).status).toBe(0);
    const r = await c.submit({
      ep: 1,
      directionIn: true,
      length: 512,
      transferFlags: TransferFlag.SHORT_NOT_OK,
    }).done;
    expect(r.status).toBe(-121);
    c.close();
    await eventually(() => t.server.stats().imported.length === 0, 5000, "detach");
  });
});

describe("guest memory as the bound", () => {
  it("URBs that do not fit guest memory wait (reads paused) and all complete, in order, with the right data", async () => {
    const small = await startServer({ guestMemoryMiB: 8, devices: [{ kind: "emulated", name: "loopback" }] });
    try {
      const c = await small.imported("1-1");
      await enumerate(c);
      const size = 3 * 1024 * 1024;
      const payloads = [1, 2, 3, 4].map((seed) => pattern(size, seed));
      const results = payloads.map((p) => {
        const out = c.submit({ ep: 1, directionIn: false, data: p }).done;
        const back = c.submit({ ep: 1, directionIn: true, length: size }).done;
        return { out, back };
      });
      for (let i = 0; i < payloads.length; i++) {
        expect((await results[i]!.out).status).toBe(0);
        const back = await results[i]!.back;
        expect(back.status).toBe(0);
        expect(Buffer.compare(back.data, payloads[i]!)).toBe(0);
      }
      c.close();
    } finally {
      await small.close();
    }
  });
});

describe("the socket side", () => {
  it("reads a large OUT payload straight into its guest buffer and echoes it intact", async () => {
    const t = await startServer({ devices: [{ kind: "emulated", name: "loopback" }] });
    try {
      const c = await t.imported("1-1");
      await enumerate(c);
      const payload = pattern(1024 * 1024, 41);
      expect((await bulkOut(c, 1, payload)).status).toBe(0);
      const back = await bulkIn(c, 1, payload.length);
      expect(Buffer.compare(back.data, payload)).toBe(0);
      // Most of the megabyte went from the socket to guest memory with no copy (the rest: the part
      // that came in the same read as its header, through the staging buffer).
      const direct = t.server.stats().perDevice.find((d) => d.busid === "1-1")!.directBytes;
      expect(direct).toBeGreaterThan(payload.length / 2);
      expect(direct).toBeLessThanOrEqual(payload.length);
      c.close();
    } finally {
      await t.close();
    }
  });
});
