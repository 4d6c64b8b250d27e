/**
 * usbvirt redirect's usb-host side, driven by a usb-guest client over real TCP: the connect sequence
 * QEMU expects, then every kind of packet through the engine to the emulated devices.
 */
import { afterEach, describe, expect, it } from "vitest";
import { walkDescriptors } from "../../src/devices/emulated/descriptors.js";
import { decodeCsw, encodeCbw } from "../../src/devices/emulated/mass-storage/index.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { QEMU_GUEST_CAPS } from "../../src/usbredir/client.js";
import {
  decodeEpInfo,
  encodeEpInfo,
  encodeFilter,
  negotiate,
  RedirCap,
  RedirEpType,
  RedirSpeed,
  RedirStatus,
  RedirType,
} from "../../src/usbredir/protocol.js";
import { HOST_CAPS } from "../../src/usbredir/server.js";
import { eventually } from "../support/eventually.js";
import { KEYBOARD, LOOPBACK, startRedirServer, type TestRedirServer } from "./helpers.js";

let t: TestRedirServer | null = null;
afterEach(async () => {
  await t?.close();
  t = null;
});

describe("usbredir server: connect sequence", () => {
  it("answers the hello with its own, then ep_info, interface_info and device_connect for the configured device", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    expect(c.hostVersion).toMatch(/^usbvirt/);
    expect(c.negotiated?.headerSize).toBe(16);
    expect(c.device).toMatchObject({ vendorId: 0x1209, productId: 0x0001, speed: RedirSpeed.HIGH });
    expect(c.interfaces).toEqual([{ number: 0, cls: 0xff, subclass: 0, protocol: 0 }]);
    expect(c.endpoints.get(0x01)).toMatchObject({ type: RedirEpType.BULK, maxPacketSize: 512 });
    expect(c.endpoints.get(0x81)).toMatchObject({ type: RedirEpType.BULK, maxPacketSize: 512 });
    expect(c.endpoints.get(0x82)).toMatchObject({ type: RedirEpType.INTERRUPT, maxPacketSize: 8 });
    // alt 0 has no iso endpoints
    expect(c.endpoints.has(0x83)).toBe(false);
    const order = c.events.map((e) => e.type);
    expect(order.indexOf(RedirType.EP_INFO)).toBeLessThan(order.indexOf(RedirType.DEVICE_CONNECT));
    expect(order.indexOf(RedirType.INTERFACE_INFO)).toBeLessThan(order.indexOf(RedirType.DEVICE_CONNECT));
  });

  it("reads the device descriptor with a control packet", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    const r = await c.control({ requestType: 0x80, request: 6, value: 0x0100, index: 0, length: 18 });
    expect(r.status).toBe(RedirStatus.SUCCESS);
    expect(r.length).toBe(18);
    expect(r.data[0]).toBe(18);
    expect(r.data[8]! | (r.data[9]! << 8)).toBe(0x1209);
  });
});

describe("usbredir server: a SuperSpeed device", () => {
  it("connects at speed super with 1024-byte bulk endpoints, serves its BOS and companions, and moves BOT data", async () => {
    t = await startRedirServer({
      kind: "emulated",
      name: "storage",
      options: { sizeBytes: 1024 * 1024, speed: UsbSpeed.SUPER },
    });
    const c = await t.connect();
    // QEMU attaches a device_connect speed super to the xHCI's USB 3 port.
    expect(c.device).toMatchObject({ vendorId: 0x1209, productId: 0x0003, speed: RedirSpeed.SUPER });
    expect(c.endpoints.get(0x81)).toMatchObject({ type: RedirEpType.BULK, maxPacketSize: 1024 });
    expect(c.endpoints.get(0x02)).toMatchObject({ type: RedirEpType.BULK, maxPacketSize: 1024 });
    const dev = await c.control({ requestType: 0x80, request: 6, value: 0x0100, index: 0, length: 18 });
    expect([dev.data[2]! | (dev.data[3]! << 8), dev.data[7]]).toEqual([0x0300, 9]);
    const bos = await c.control({ requestType: 0x80, request: 6, value: 0x0f00, index: 0, length: 255 });
    expect(bos.status).toBe(RedirStatus.SUCCESS);
    expect([bos.data[0], bos.data[1], bos.data[2], bos.data[4]]).toEqual([5, 0x0f, bos.length, 2]);
    const config = await c.control({ requestType: 0x80, request: 6, value: 0x0200, index: 0, length: 255 });
    const companions = walkDescriptors(config.data).entries.filter((e) => e.type === 0x30);
    expect(companions.length).toBe(2);
    const set = await c.request(RedirType.SET_CONFIGURATION, [1], RedirType.CONFIGURATION_STATUS);
    expect(set.status).toBe(RedirStatus.SUCCESS);
    // INQUIRY over Bulk-Only at SuperSpeed: CBW out, 36 bytes in, CSW in.
    const cbw = encodeCbw({ tag: 7, dataTransferLength: 36, directionIn: true, cb: [0x12, 0, 0, 0, 36, 0] });
    expect((await c.bulk(0x02, cbw).reply).status).toBe(RedirStatus.SUCCESS);
    const inquiry = await c.bulk(0x81, 36).reply;
    expect(inquiry.status).toBe(RedirStatus.SUCCESS);
    expect(Buffer.from(inquiry.data.subarray(8, 15)).toString()).toBe("USBVIRT");
    const csw = decodeCsw((await c.bulk(0x81, 13).reply).data);
    expect(csw).toMatchObject({ tag: 7, residue: 0, status: 0 });
  });
});

describe("usbredir server: bulk streams", () => {
  const superDisk = () =>
    startRedirServer({ kind: "emulated", name: "storage", options: { sizeBytes: 1024 * 1024, speed: 4 } });
  /** alloc_bulk_streams' header: eps (bit n: ep_info index n; 0x81 is 17, 0x02 is 2), no_streams. */
  const allocHeader = (eps: number, streams: number) => [
    ...new Uint8Array(Uint32Array.of(eps, streams).buffer),
  ];

  it("advertises bulk_streams: ep_info carries max_streams (0 for a Bulk-Only disk's pipes)", async () => {
    t = await superDisk();
    const c = await t.connect();
    expect(c.negotiated!.caps & (1 << RedirCap.BULK_STREAMS)).not.toBe(0);
    expect(c.endpoints.get(0x81)).toMatchObject({ maxPacketSize: 1024, maxStreams: 0 });
    // The 288-octet ep_info of bulk_streams: max_streams u32[32] after max_packet_size, by ep_info index.
    const n = negotiate(HOST_CAPS, QEMU_GUEST_CAPS);
    const entry = { type: RedirEpType.BULK, interval: 0, interface: 0, maxPacketSize: 1024, maxStreams: 256 };
    const packet = encodeEpInfo(n, new Map([[0x81, entry]]), 512);
    const header = packet.subarray(n.headerSize);
    expect(header.length).toBe(288);
    expect(header.readUInt16LE(96)).toBe(512); // endpoint 0 at SuperSpeed
    expect(header.readUInt32LE(160 + 4 * 17)).toBe(256);
    const decoded = decodeEpInfo(new DataView(header.buffer, header.byteOffset, header.length));
    expect(decoded.get(0x81)).toEqual(entry);
  });

  it("alloc_bulk_streams on endpoints without streams answers bulk_streams_status inval and says why", async () => {
    t = await superDisk();
    const c = await t.connect();
    await c.request(RedirType.SET_CONFIGURATION, [1], RedirType.CONFIGURATION_STATUS);
    const eps = (1 << 17) | (1 << 2);
    const st = await c.request(
      RedirType.ALLOC_BULK_STREAMS,
      allocHeader(eps, 16),
      RedirType.BULK_STREAMS_STATUS,
    );
    expect(st.status).toBe(RedirStatus.INVAL);
    expect(t.log.lines.some((l) => /0x81 has no streams/.test(l))).toBe(true);
    // An endpoint the active settings do not have.
    const none = await c.request(
      RedirType.ALLOC_BULK_STREAMS,
      allocHeader(1 << 20, 2),
      RedirType.BULK_STREAMS_STATUS,
    );
    expect(none.status).toBe(RedirStatus.INVAL);
    const free = await c.request(
      RedirType.FREE_BULK_STREAMS,
      allocHeader(eps, 0).slice(0, 4),
      RedirType.BULK_STREAMS_STATUS,
    );
    expect(free.status).toBe(RedirStatus.INVAL);
  });

  it("a bulk packet on a stream of an endpoint without streams is inval, and the connection goes on", async () => {
    t = await superDisk();
    const c = await t.connect();
    await c.request(RedirType.SET_CONFIGURATION, [1], RedirType.CONFIGURATION_STATUS);
    const r = await c.bulk(0x81, 512, 3).reply;
    expect(r.status).toBe(RedirStatus.INVAL);
    expect(t.log.lines.some((l) => /0x81 has no streams/.test(l))).toBe(true);
    const cbw = encodeCbw({ tag: 1, dataTransferLength: 0, directionIn: false, cb: [0, 0, 0, 0, 0, 0] });
    expect((await c.bulk(0x02, cbw).reply).status).toBe(RedirStatus.SUCCESS);
    expect(decodeCsw((await c.bulk(0x81, 13).reply).data)).toMatchObject({ tag: 1, status: 0 });
  });
});

describe("usbredir server: transfers through the engine", () => {
  it("echoes bulk data through the loopback device", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    for (const size of [1, 512, 4096, 65536, 200_000]) {
      const out = new Uint8Array(size).map((_, i) => (i * 7 + size) & 0xff);
      const w = await c.bulk(0x01, out).reply;
      expect(w).toMatchObject({ status: RedirStatus.SUCCESS, length: size });
      const r = await c.bulk(0x81, size).reply;
      expect(r.status).toBe(RedirStatus.SUCCESS);
      expect(r.length).toBe(size);
      expect(Buffer.from(r.data).equals(Buffer.from(out))).toBe(true);
    }
  });

  it("answers a cancelled bulk IN exactly once, with cancelled", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    const pending = c.bulk(0x81, 512); // nothing queued: the loopback NAKs until data arrives
    await eventually(() => t!.server.stats().urbs === 1, 5000, "the bulk IN in the engine");
    c.cancel(pending.id);
    const r = await pending.reply;
    expect(r).toMatchObject({ status: RedirStatus.CANCELLED, length: 0 });
    // A cancel for an id that already completed is ignored: nothing more arrives for it.
    c.cancel(pending.id);
    const w = await c.bulk(0x01, new Uint8Array([1, 2, 3])).reply;
    expect(w.status).toBe(RedirStatus.SUCCESS);
  });

  it("refuses a bulk packet on an endpoint that is not bulk, with inval", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    const r = await c.bulk(0x82, 8).reply;
    expect(r.status).toBe(RedirStatus.INVAL);
    expect(t.log.lines.some((l) => /not a bulk endpoint/.test(l))).toBe(true);
  });

  it("set_configuration goes to the device and is reported back; get_configuration reads it", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    const set = await c.request(RedirType.SET_CONFIGURATION, [2], RedirType.CONFIGURATION_STATUS);
    expect(set).toMatchObject({ status: RedirStatus.SUCCESS, configuration: 2 });
    const get = await c.request(RedirType.GET_CONFIGURATION, [], RedirType.CONFIGURATION_STATUS);
    expect(get.configuration).toBe(2);
    // The device itself says 2 (GET_CONFIGURATION as a control packet reaches the device).
    const dev = await c.control({ requestType: 0x80, request: 8, value: 0, index: 0, length: 1 });
    expect(dev.data[0]).toBe(2);
    const bad = await c.request(RedirType.SET_CONFIGURATION, [7], RedirType.CONFIGURATION_STATUS);
    expect(bad.status).toBe(RedirStatus.INVAL);
  });

  it("set_alt_setting sends the new ep_info before its status, and iso IN streams packets", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    const before = c.events.length;
    const alt = await c.request(RedirType.SET_ALT_SETTING, [0, 1], RedirType.ALT_SETTING_STATUS);
    expect(alt).toMatchObject({ status: RedirStatus.SUCCESS, interface: 0, alt: 1 });
    const epInfo = c.events.slice(before).findIndex((e) => e.type === RedirType.EP_INFO);
    const status = c.events.slice(before).findIndex((e) => e.type === RedirType.ALT_SETTING_STATUS);
    expect(epInfo).toBeGreaterThanOrEqual(0);
    expect(epInfo).toBeLessThan(status);
    expect(c.endpoints.get(0x83)).toMatchObject({ type: RedirEpType.ISO, maxPacketSize: 256 });
    // get_alt_setting asks the device (GET_INTERFACE through the engine); an unknown interface is inval.
    const got = await c.request(RedirType.GET_ALT_SETTING, [0], RedirType.ALT_SETTING_STATUS);
    expect(got).toMatchObject({ status: RedirStatus.SUCCESS, interface: 0, alt: 1 });
    const none = await c.request(RedirType.GET_ALT_SETTING, [5], RedirType.ALT_SETTING_STATUS);
    expect(none).toMatchObject({ status: RedirStatus.INVAL, interface: 5, alt: 0xff });
    const started = await c.request(RedirType.START_ISO_STREAM, [0x83, 4, 2], RedirType.ISO_STREAM_STATUS);
    expect(started.status).toBe(RedirStatus.SUCCESS);
    const isoCount = () => c.events.filter((e) => e.type === RedirType.ISO_PACKET).length;
    await eventually(() => isoCount() >= 16, 5000, "16 iso packets");
    const first = c.events.find((e) => e.type === RedirType.ISO_PACKET)!;
    expect(first.status).toBe(RedirStatus.SUCCESS);
    expect(first.data.length).toBe(256);
    // The loopback's pattern: byte i of a packet is i % 63.
    expect(first.data[70]).toBe(70 % 63);
    await c.request(RedirType.STOP_ISO_STREAM, [0x83], RedirType.ISO_STREAM_STATUS);
  });

  it("interrupt receiving sends keyboard reports as the device produces them", async () => {
    t = await startRedirServer(KEYBOARD);
    const c = await t.connect();
    const ep = [...c.endpoints].find(([a, e]) => e.type === RedirEpType.INTERRUPT && a & 0x80)![0];
    const st = await c.request(
      RedirType.START_INTERRUPT_RECEIVING,
      [ep],
      RedirType.INTERRUPT_RECEIVING_STATUS,
    );
    expect(st.status).toBe(RedirStatus.SUCCESS);
    await t.server.deviceCommand("pressKeys", 0, [0x04]);
    const report = await c.waitFor((p) => p.type === RedirType.INTERRUPT_PACKET && p.data[2] === 0x04);
    expect(report.status).toBe(RedirStatus.SUCCESS);
    expect(report.data.length).toBe(8);
  });

  it("releases the device when the peer goes, and the next connection gets it", async () => {
    t = await startRedirServer(LOOPBACK);
    const a = await t.connect();
    a.bulk(0x81, 512).reply.catch(() => undefined); // left in flight
    await eventually(() => t!.server.stats().urbs === 1, 5000, "the bulk IN in the engine");
    const released = new Promise((r) => t!.server.once("disconnect", r));
    a.close();
    await released;
    const b = await t.connect();
    expect(b.device?.productId).toBe(1);
    const w = await b.bulk(0x01, new Uint8Array([9])).reply;
    expect(w.status).toBe(RedirStatus.SUCCESS);
    const r = await b.bulk(0x81, 512).reply;
    expect([...r.data]).toEqual([9]);
  });

  it("refuses a second peer while one holds the device, with a log line naming both", async () => {
    t = await startRedirServer(LOOPBACK);
    const a = await t.connect();
    const b = t.connect();
    await expect(b).rejects.toThrow(/connection closed/);
    expect(t.log.lines.some((l) => /refused, .* is redirected to 127\.0\.0\.1/.test(l))).toBe(true);
    const w = await a.bulk(0x01, new Uint8Array([1])).reply;
    expect(w.status).toBe(RedirStatus.SUCCESS);
  });
});

describe("usbredir server: the device goes and comes back", () => {
  it("tells the guest with device_disconnect, and announces the device again once it returns", async () => {
    t = await startRedirServer(LOOPBACK);
    const c = await t.connect();
    await t.server.connection.detach(1);
    await c.waitFor((p) => p.type === RedirType.DEVICE_DISCONNECT);
    expect(c.device).toBeNull();
    const connects = () => c.events.filter((e) => e.type === RedirType.DEVICE_CONNECT).length;
    expect(connects()).toBe(1);
    // A bulk packet while the device is away is refused, not hung.
    expect((await c.bulk(0x01, new Uint8Array([1])).reply).status).toBe(RedirStatus.INVAL);
    await t.server.connection.attach(1, LOOPBACK);
    await eventually(() => connects() >= 2, 5000, "the device announced again");
    expect(c.device?.productId).toBe(1);
    expect((await c.bulk(0x01, new Uint8Array([4])).reply).status).toBe(RedirStatus.SUCCESS);
    expect([...(await c.bulk(0x81, 64).reply).data]).toEqual([4]);
    expect(t.log.lines.some((l) => /was disconnected/.test(l))).toBe(true);
    expect(t.log.lines.some((l) => /is back/.test(l))).toBe(true);
  });
});

describe("usbredir server: the VMM's device filter", () => {
  async function filtered(device: typeof LOOPBACK, rules: string) {
    t = await startRedirServer(device);
    const c = await t.connect({ waitForDevice: false });
    await eventually(() => c.negotiated !== null, 5000, "the hellos");
    c.raw(encodeFilter(c.negotiated!, rules));
    // get_configuration is answered after the announcement (device requests run in order).
    await c.request(RedirType.GET_CONFIGURATION, [], RedirType.CONFIGURATION_STATUS);
    return c;
  }

  it("does not offer a device the VMM's filter refuses (deny HID, allow the rest), and says why", async () => {
    const c = await filtered(KEYBOARD, "0x03,-1,-1,-1,0|-1,-1,-1,-1,1");
    expect(c.device).toBeNull();
    expect(
      t!.log.lines.some((l) =>
        /filter "0x03,-1,-1,-1,0\|-1,-1,-1,-1,1" refuses usbvirt keyboard .*rule 1/.test(l),
      ),
    ).toBe(true);
  });

  it("offers a device the filter allows", async () => {
    const c = await filtered(LOOPBACK, "0x03,-1,-1,-1,0|-1,-1,-1,-1,1");
    await c.waitFor((p) => p.type === RedirType.DEVICE_CONNECT);
    expect(c.device?.productId).toBe(1);
    expect(t!.log.lines.some((l) => /filter .* allows usbvirt loopback/.test(l))).toBe(true);
  });

  it("refuses a device no rule allows, as QEMU judges it", async () => {
    const c = await filtered(LOOPBACK, "-1,0x1234,-1,-1,1");
    expect(c.device).toBeNull();
    expect(t!.log.lines.some((l) => /refuses usbvirt loopback/.test(l))).toBe(true);
  });
});
