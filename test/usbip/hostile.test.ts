/**
 * Hostile and broken clients: each gets a clear log line and a closed connection; a bystander client on
 * another device keeps working throughout, and the device the hostile client held can be imported again.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { UsbipClient } from "../../src/usbip/client.js";
import { encodeDevlistRequest, encodeImportRequest } from "../../src/usbip/management-pdus.js";
import { MAX_TRANSFER_LENGTH } from "../../src/usbip/protocol.js";
import { encodeCmdSubmit } from "../../src/usbip/urb-pdus.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { bulkIn, bulkOut, checkedControl, enumerate, startServer, type TestServer } from "./helpers.js";

let t: TestServer;
let bystander: UsbipClient;

beforeAll(async () => {
  t = await startServer({ maxUnsentBytes: 64 * 1024, stalledPeerMs: 400 });
  bystander = await t.imported("1-3");
  await enumerate(bystander);
});

afterAll(async () => {
  await t?.close();
});

/** The bystander still moves data, and 1-1 can be imported and used again. */
async function othersUnaffected(): Promise<void> {
  const d = await checkedControl(bystander, {
    bmRequestType: 0x80,
    bRequest: 6,
    wValue: 0x100,
    wIndex: 0,
    wLength: 18,
  });
  expect(d.length).toBe(18);
  await eventually(() => !t.server.stats().imported.includes("1-1"), 5000, "1-1 released");
  const again = await t.imported("1-1");
  await enumerate(again);
  const payload = pattern(3000, 77);
  expect((await bulkOut(again, 1, payload)).status).toBe(0);
  expect(Buffer.compare((await bulkIn(again, 1, 3000)).data, payload)).toBe(0);
  again.close();
  await eventually(() => !t.server.stats().imported.includes("1-1"), 5000, "1-1 released");
}

const submitHeader = {
  seqnum: 1000,
  devid: 0x10001,
  directionIn: false,
  ep: 1,
  transferFlags: 0,
  transferBufferLength: 4,
  startFrame: 0,
  numberOfPackets: -1,
  interval: 0,
  setup: new Uint8Array(8),
  data: new Uint8Array(4),
  iso: [],
};

async function expectDropped(c: UsbipClient, logText: string): Promise<void> {
  await c.whenClosed();
  await eventually(() => t.log.matching(logText).length > 0, 2000, `log line "${logText}"`);
  const line = t.log.matching(logText)[0]!;
  expect(line).toMatch(/^error: 127\.0\.0\.1:\d+: /);
  expect(line).toContain("closing the connection");
}

describe("hostile clients", () => {
  it("bad version in a management request", async () => {
    const c = await t.connect();
    const bad = encodeDevlistRequest();
    bad[0] = 0x01;
    bad[1] = 0x06;
    c.writeRaw(bad);
    await expectDropped(c, "unsupported USB/IP version 0x0106");
    await othersUnaffected();
  });

  it("unknown management code", async () => {
    const c = await t.connect();
    const bad = encodeDevlistRequest();
    bad[3] = 0x42;
    c.writeRaw(bad);
    await expectDropped(c, "unknown management code 0x8042");
  });

  it("unknown command after import", async () => {
    const c = await t.imported("1-1");
    const bad = encodeCmdSubmit(submitHeader);
    new DataView(bad.buffer).setUint32(0, 7);
    c.writeRaw(bad);
    await expectDropped(c, "unknown command 0x7");
    await othersUnaffected();
  });

  it("CMD_SUBMIT for a devid that was not imported", async () => {
    const c = await t.imported("1-1");
    c.writeRaw(encodeCmdSubmit({ ...submitHeader, devid: 0x10003 }));
    await expectDropped(c, "CMD_SUBMIT for devid 0x10003");
    await othersUnaffected();
  });

  it("transfer length over the 4 MiB limit, and too many iso packets", async () => {
    const c = await t.imported("1-1");
    const big = encodeCmdSubmit(submitHeader);
    new DataView(big.buffer).setInt32(24, MAX_TRANSFER_LENGTH + 1);
    c.writeRaw(big.subarray(0, 48));
    await expectDropped(c, `transfer_buffer_length ${MAX_TRANSFER_LENGTH + 1}`);
    await othersUnaffected();
    const d = await t.imported("1-1");
    const iso = encodeCmdSubmit(submitHeader);
    new DataView(iso.buffer).setInt32(32, 5000);
    d.writeRaw(iso.subarray(0, 48));
    await expectDropped(d, "number_of_packets 5000");
    await othersUnaffected();
  });

  it("duplicate seqnum in flight, and a management request after import", async () => {
    const c = await t.imported("1-1");
    await enumerate(c);
    c.writeRaw(
      encodeCmdSubmit({ ...submitHeader, directionIn: true, ep: 1, seqnum: 5, data: new Uint8Array(0) }),
    );
    c.writeRaw(
      encodeCmdSubmit({ ...submitHeader, directionIn: true, ep: 1, seqnum: 5, data: new Uint8Array(0) }),
    );
    await expectDropped(c, "seqnum 5 is already in flight");
    await othersUnaffected();
    const d = await t.imported("1-1");
    d.writeRaw(encodeImportRequest("1-1"));
    d.writeRaw(new Uint8Array(48 - 40));
    await expectDropped(d, "management request after import");
    await othersUnaffected();
  });

  it("a truncated frame, then close (in both phases)", async () => {
    const writtenThenClosed = async (client: UsbipClient, bytes: Uint8Array) => {
      await new Promise<void>((resolve, reject) =>
        client.socket.write(bytes, (err) => (err ? reject(err) : resolve())),
      );
      client.close();
    };
    const c = await t.imported("1-1");
    await enumerate(c);
    // The bytes are handed to the kernel before the close: the server reads them, then the end of stream.
    await writtenThenClosed(c, encodeCmdSubmit(submitHeader).subarray(0, 30));
    await eventually(() => t.log.matching("bytes of an incomplete PDU").length > 0, 2000, "truncation log");
    expect(t.log.matching("bytes of an incomplete PDU")[0]).toMatch(/^warn: 127\.0\.0\.1:\d+: detached 1-1/);
    await othersUnaffected();
    const d = await t.connect();
    await writtenThenClosed(d, encodeImportRequest("1-1").subarray(0, 20));
    await eventually(() => t.log.matching("with 20 bytes of an incomplete PDU").length > 0, 2000, "log");
    await othersUnaffected();
  });

  it("a client that stops reading while IN data piles up is paused, then dropped", async () => {
    const c = await t.imported("1-1");
    await enumerate(c);
    c.socket.pause(); // never read again
    const chunk = pattern(256 * 1024, 5);
    for (let i = 0; i < 64; i++) {
      c.submit({ ep: 1, directionIn: false, data: chunk });
      c.submit({ ep: 1, directionIn: true, length: chunk.length });
    }
    await eventually(() => t.log.matching("peer stopped reading").length > 0, 10_000, "stall log");
    expect(t.log.matching("peer stopped reading")[0]).toMatch(/^error: 127\.0\.0\.1:\d+: detached 1-1/);
    c.close();
    await othersUnaffected();
  });

  it("an unknown busid and a client outside the allowlist are refused with a log line", async () => {
    const c = await t.connect();
    await expect(c.import("1-99")).rejects.toMatchObject({ status: 4 });
    expect(t.log.matching('import of "1-99" refused (NODEV)').length).toBe(1);
    const locked = await startServer({
      allow: ["10.0.0.0/8"],
      devices: [{ kind: "emulated", name: "loopback" }],
    });
    try {
      const r = await locked.connect();
      await r.whenClosed();
      await eventually(() => locked.log.matching("not in the allowlist").length > 0, 2000, "allowlist log");
    } finally {
      await locked.close();
    }
  });
});
