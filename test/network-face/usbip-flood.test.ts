/**
 * A USB/IP client that imports a device, then floods requests the server answers itself (no engine URB:
 * an endpoint number over 15, SET_ADDRESS, an endpoint the device does not have, an iso request on a bulk
 * endpoint) or CMD_UNLINKs of seqnums not in flight, and never reads a byte back. Every such reply counts
 * against the client's unsent bound like any other: what the server holds for it stays within
 * maxUnsentBytes plus its guest memory and one read buffer, it writes no log line per request, and it
 * drops the client once it has not read for stalledPeerMs, while another client keeps being served.
 *
 * The server runs in a process of its own (measured-server.ts); its resident memory is what is measured.
 * The attacker (slow-reader.py) keeps the kernel's buffers small, so the server's bounds are what holds.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { UsbipClient } from "../../src/usbip/client.js";
import { encodeImportRequest } from "../../src/usbip/management-pdus.js";
import { encodeCmdSubmit, encodeCmdUnlink } from "../../src/usbip/urb-pdus.js";
import { pattern } from "../support/data.js";
import { makeTestPki, type TestPki } from "../support/tls-certs.js";
import { bulkIn, bulkOut, enumerate } from "../usbip/helpers.js";
import { expectBounded, type FloodBounds, measureFlood, repeated, SlowReader } from "./flood.js";
import { type MeasuredServer, startMeasuredServer } from "./measured-server.js";

const KiB = 1024;
const MiB = 1024 * KiB;
/** Two loopbacks: the attacker imports 1-1, a bystander 1-2. */
const DEVICES = [
  { kind: "emulated", name: "loopback" },
  { kind: "emulated", name: "loopback" },
];
/** What the test allows the server: small, so that a flood shows long before the kernel could hide it. */
const BOUNDS = { maxUnsentBytes: 64 * KiB, stalledPeerMs: 1500, guestMemoryMiB: 16 };
/** One read buffer per connection (the servers read into 128 KiB). */
const READ_BUFFER = 128 * KiB;
/** V8's own growth while the server works (code, old-space pages, its 1 MiB nursery): not the peer's doing. */
const SLACK = 24 * MiB;
/**
 * The documented bound (the attacker's device has half the guest memory), and the unsent counter's: the
 * bound plus the replies to what one read brought (a reply is no larger than its request here).
 */
const LIMITS: FloodBounds = {
  rss: BOUNDS.maxUnsentBytes + (BOUNDS.guestMemoryMiB / 2) * MiB + READ_BUFFER + SLACK,
  unsent: BOUNDS.maxUnsentBytes + 2 * READ_BUFFER,
  limitMs: BOUNDS.stalledPeerMs + 60_000,
};

const DEVID = 0x10001;
const base = {
  devid: DEVID,
  transferFlags: 0,
  transferBufferLength: 0,
  startFrame: 0,
  numberOfPackets: -1,
  interval: 0,
  setup: new Uint8Array(8),
  data: new Uint8Array(0),
  iso: [],
};

let server: MeasuredServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

/** Import 1-1, then `unit` over and over, never reading (over mutual TLS with alice's certificate when `pki`). */
function attacker(s: MeasuredServer, unit: Uint8Array, pki?: TestPki): () => SlowReader {
  return () =>
    new SlowReader({
      port: s.port,
      prelude: encodeImportRequest("1-1"),
      wait: "usbip-import",
      unit: repeated(unit, Math.ceil((16 * KiB) / unit.length)),
      ...(pki === undefined ? {} : { tls: { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key } }),
    });
}

/** An honest client of `s` (over mutual TLS with alice's certificate when `pki`). */
function honest(s: MeasuredServer, pki?: TestPki): Promise<UsbipClient> {
  return UsbipClient.connect({
    host: "127.0.0.1",
    port: s.port,
    ...(pki === undefined
      ? {}
      : {
          tls: { ca: { file: pki.ca.cert }, cert: { file: pki.client.cert }, key: { file: pki.client.key } },
        }),
  });
}

/** A client on the other device moves verified data, and 1-1 can be imported and used again. */
async function othersServed(s: MeasuredServer, bystander: UsbipClient, pki?: TestPki): Promise<void> {
  const data = pattern(3000, 9);
  expect((await bulkOut(bystander, 1, data)).status).toBe(0);
  expect(Buffer.compare((await bulkIn(bystander, 1, data.length)).data, data)).toBe(0);
  const again = await honest(s, pki);
  try {
    await again.import("1-1");
    await enumerate(again);
    expect((await bulkOut(again, 1, data)).status).toBe(0);
    expect(Buffer.compare((await bulkIn(again, 1, data.length)).data, data)).toBe(0);
  } finally {
    again.close();
  }
}

const SET_ADDRESS = Uint8Array.of(0x00, 0x05, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00);

describe("USB/IP: a client that floods locally answered requests and never reads", () => {
  it.each([
    ["CMD_SUBMIT on endpoint 16", encodeCmdSubmit({ ...base, seqnum: 1, directionIn: true, ep: 16 })],
    [
      "SET_ADDRESS (answered here, never forwarded)",
      encodeCmdSubmit({ ...base, seqnum: 2, directionIn: false, ep: 0, setup: SET_ADDRESS }),
    ],
    [
      "CMD_SUBMIT on an endpoint the device does not have",
      encodeCmdSubmit({ ...base, seqnum: 3, directionIn: true, ep: 5, transferBufferLength: 64 }),
    ],
    [
      "an iso CMD_SUBMIT on a bulk endpoint",
      encodeCmdSubmit({
        ...base,
        seqnum: 4,
        directionIn: true,
        ep: 1,
        transferBufferLength: 8,
        iso: [{ offset: 0, length: 8, actualLength: 0, status: 0 }],
      }),
    ],
    [
      "CMD_UNLINK of a seqnum not in flight",
      encodeCmdUnlink({ seqnum: 5, devid: DEVID, directionIn: false, ep: 0, unlinkSeqnum: 77 }),
    ],
  ])(
    "%s: within the bound, no line per request, dropped, the others served",
    async (_what, unit) => {
      server = await startMeasuredServer("usbip", { devices: DEVICES, ...BOUNDS });
      const bystander = await honest(server);
      try {
        await bystander.import("1-2");
        await enumerate(bystander);
        const r = await measureFlood(server, attacker(server, unit), LIMITS);
        await expectBounded(server, r);
        await othersServed(server, bystander);
      } finally {
        bystander.close();
      }
    },
    60_000,
  );
});

describe("USB/IP over mutual TLS: a client that floods and never reads", () => {
  let pki: TestPki;
  beforeAll(() => {
    pki = makeTestPki();
  });
  afterAll(() => pki.remove());

  it("CMD_SUBMIT on endpoint 16: its TLS socket is not read past the bound; within it, no line per request, dropped, the others served", async () => {
    const tls = {
      cert: { file: pki.server.cert },
      key: { file: pki.server.key },
      clientCa: { file: pki.ca.cert },
    };
    server = await startMeasuredServer("usbip", { devices: DEVICES, ...BOUNDS, tls });
    const bystander = await honest(server, pki);
    try {
      await bystander.import("1-2");
      await enumerate(bystander);
      const unit = encodeCmdSubmit({ ...base, seqnum: 1, directionIn: true, ep: 16 });
      const r = await measureFlood(server, attacker(server, unit, pki), LIMITS);
      await expectBounded(server, r);
      await othersServed(server, bystander, pki);
    } finally {
      bystander.close();
    }
  }, 60_000);
});
