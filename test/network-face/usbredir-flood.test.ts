/**
 * usbredir peers that send their hello, then flood requests the server performs or answers without ever
 * reading a byte back: device resets and get_configuration (each a request to the device), the stream
 * start/stop requests and bulk-stream allocations (each answered at once), get_alt_setting. Whatever the
 * flood is made of, what the server holds for the peer stays within the documented bound (the unsent
 * bytes it allows, maxUnsentBytes, plus the peer's guest memory and one read buffer); it writes no log
 * line per packet; it drops the peer once it has not read for stalledPeerMs; and the next connection
 * gets the device at once.
 *
 * The server runs in a process of its own (measured-server.ts) and its resident memory is what is
 * measured, so whatever holds the bytes counts: unsent replies, queued requests, a promise per packet.
 * The attacker (slow-reader.py) keeps the kernel's buffers small, so the server's bounds are what holds.
 */
import { afterEach, describe, expect, it } from "vitest";
import { UsbredirClient } from "../../src/usbredir/client.js";
import {
  capsOf,
  encodeBytes,
  encodeEmpty,
  encodeHello,
  type Negotiated,
  negotiate,
  RedirCap,
  RedirStatus,
  RedirType,
} from "../../src/usbredir/protocol.js";
import { HOST_CAPS } from "../../src/usbredir/server.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import {
  expectBounded,
  type FloodBounds,
  type FloodResult,
  measureFlood,
  repeated,
  SlowReader,
} from "./flood.js";
import { type MeasuredServer, startMeasuredServer } from "./measured-server.js";

const KiB = 1024;
const MiB = 1024 * KiB;
/** What the test allows the server: small, so that a flood shows long before the kernel could hide it. */
const BOUNDS = { maxUnsentBytes: 64 * KiB, stalledPeerMs: 1500, guestMemoryMiB: 8 };
/** One read buffer per connection (the servers read into 128 KiB). */
const READ_BUFFER = 128 * KiB;
/** V8's own growth while the server works (code, old-space pages, its 1 MiB nursery): not the peer's doing. */
const SLACK = 24 * MiB;
/**
 * The documented bound, and the unsent counter's: the bound plus the replies to what one read brought (a
 * reply is at most a few bytes longer than its request here, twice the read buffer covers them).
 */
const LIMITS: FloodBounds = {
  rss: BOUNDS.maxUnsentBytes + BOUNDS.guestMemoryMiB * MiB + READ_BUFFER + SLACK,
  unsent: BOUNDS.maxUnsentBytes + 2 * READ_BUFFER,
  limitMs: BOUNDS.stalledPeerMs + 30_000,
};

/** A QEMU-like guest without 64-bit ids: every header is 12 bytes, as in the report. */
const CAPS_32BIT_IDS = capsOf(
  RedirCap.CONNECT_DEVICE_VERSION,
  RedirCap.FILTER,
  RedirCap.EP_INFO_MAX_PACKET_SIZE,
  RedirCap.BULK_LENGTH_32BIT,
);
const N: Negotiated = negotiate(HOST_CAPS, CAPS_32BIT_IDS);

let server: MeasuredServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

/**
 * The same for floods of device-state requests (reset, get_configuration, get_alt_setting), each of which
 * crosses the engine (port reset, SET_ADDRESS, SET_CONFIGURATION, GET_* through the rings and the emulated
 * device): V8 promotes their short-lived objects and lets its old generation grow to a multiple of the
 * live heap before it collects. Measured in the server alone: the heap peaks near 50 MiB under such a
 * flood and a full GC brings it back to its live ~15 MiB: garbage, not held. Twice the slack covers that
 * and still catches the unbounded queue this test was written for (+200 MiB in 8 s).
 */
const ENGINE_LIMITS: FloodBounds = { ...LIMITS, rss: LIMITS.rss + SLACK };

/** Hello, the device announced, then `unit` over and over, never reading. */
async function floodAfterHello(
  s: MeasuredServer,
  unit: Uint8Array,
  limits: FloodBounds = LIMITS,
): Promise<FloodResult> {
  return await measureFlood(
    s,
    () =>
      new SlowReader({
        port: s.port,
        prelude: encodeHello("usbvirt hostile test guest", CAPS_32BIT_IDS),
        wait: "usbredir-connect",
        unit: repeated(unit, Math.ceil((16 * KiB) / unit.length)),
      }),
    limits,
  );
}

/** The device is free again: a QEMU-like client gets it announced and echoes verified data. */
async function nextClientServed(s: MeasuredServer): Promise<void> {
  const c = await UsbredirClient.connect(s.port, { timeoutMs: 10_000 });
  try {
    const data = pattern(5000, 3);
    expect((await c.bulk(0x01, data).reply).status).toBe(RedirStatus.SUCCESS);
    const back = await c.bulk(0x81, data.length).reply;
    expect(back.status).toBe(RedirStatus.SUCCESS);
    expect(Buffer.compare(back.data, data)).toBe(0);
  } finally {
    c.close();
  }
}

const u32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];

describe("usbredir: a peer that floods requests and never reads", () => {
  it.each([
    [
      "stop_interrupt_receiving (IN: a status each)",
      encodeBytes(N, RedirType.STOP_INTERRUPT_RECEIVING, { low: 1, high: 0 }, [0x82]),
    ],
    [
      "start_interrupt_receiving on a bulk IN endpoint (refused, a status each)",
      encodeBytes(N, RedirType.START_INTERRUPT_RECEIVING, { low: 3, high: 0 }, [0x81]),
    ],
    [
      "stop_iso_stream (a status each)",
      encodeBytes(N, RedirType.STOP_ISO_STREAM, { low: 4, high: 0 }, [0x83]),
    ],
    [
      "start_iso_stream out of range (refused, a status each)",
      encodeBytes(N, RedirType.START_ISO_STREAM, { low: 5, high: 0 }, [0x83, 0, 0]),
    ],
    [
      "alloc_bulk_streams (refused, a status each)",
      encodeBytes(N, RedirType.ALLOC_BULK_STREAMS, { low: 6, high: 0 }, [...u32(0x81), ...u32(4)]),
    ],
  ])(
    "%s: within the bound, no line per packet, dropped, the next client served",
    async (_what, packet) => {
      server = await startMeasuredServer("usbredir", BOUNDS);
      await expectBounded(server, await floodAfterHello(server, packet));
      await nextClientServed(server);
    },
    60_000,
  );

  it.each([
    [
      "get_alt_setting (asked of the device)",
      encodeBytes(N, RedirType.GET_ALT_SETTING, { low: 7, high: 0 }, [0]),
    ],
    ["get_configuration (asked of the device)", encodeEmpty(N, RedirType.GET_CONFIGURATION, 8)],
  ])(
    "%s: within the bound, no line per packet, dropped, the next client served",
    async (_what, packet) => {
      server = await startMeasuredServer("usbredir", BOUNDS);
      await expectBounded(server, await floodAfterHello(server, packet, ENGINE_LIMITS));
      await nextClientServed(server);
    },
    60_000,
  );

  // Requests that get no answer: a reset (performed on the device, one at a time, at most four queued) and,
  // as QEMU's parser refuses an interrupt_receiving_status for an OUT endpoint, start_interrupt_receiving
  // on one. The peer is owed nothing and holds nothing, so it is not dropped for not reading (there is
  // nothing to read). What must hold: the server takes the flood without growing or logging per packet.
  // (A flood of resets mixed with get_configuration is the get_configuration case above with resets in
  // between: it is dropped once the kernel's send buffer and maxUnsentBytes are full of answers, which at
  // a reset's pace takes longer than this test waits.)
  it.each([
    ["12-byte resets", encodeEmpty(N, RedirType.RESET), 3000, ENGINE_LIMITS],
    [
      "start_interrupt_receiving on an OUT endpoint (refused, no answer)",
      encodeBytes(N, RedirType.START_INTERRUPT_RECEIVING, { low: 2, high: 0 }, [0x02]),
      100_000,
      LIMITS,
    ],
  ] as const)(
    "%s: taken within the bound, no line per packet, the next client served",
    async (_what, packet, count, limits) => {
      server = await startMeasuredServer("usbredir", BOUNDS);
      const s = server;
      const linesBefore = s.lines().length;
      const before = s.rss();
      const peer = new SlowReader({
        port: s.port,
        prelude: encodeHello("usbvirt hostile test guest", CAPS_32BIT_IDS),
        wait: "usbredir-connect",
        unit: repeated(packet, Math.ceil((16 * KiB) / packet.length)),
      });
      let growth = 0;
      try {
        await peer.ready;
        await eventually(
          async () => {
            growth = Math.max(growth, s.rss() - before);
            const packets = Number((await s.stats()).packets ?? 0);
            return packets >= count || growth > limits.rss || peer.closed;
          },
          30_000,
          `the server to take ${count} of them`,
        );
      } finally {
        await peer.stop();
      }
      expect(growth).toBeLessThanOrEqual(limits.rss);
      const lines = s.lines().slice(linesBefore);
      expect(lines.length, lines.slice(0, 8).join("\n")).toBeLessThan(12);
      // The peer went away by itself: once the server saw it go, the device is free.
      await eventually(async () => (await s.stats()).peer === null, 10_000, "the server to see the peer go");
      await nextClientServed(s);
    },
    60_000,
  );
});
