/**
 * Isochronous transfers to a real (emulated) device through the usbfs path
 * (src/devices/host/usbfs-iso.ts): one child process per test under the
 * interactive umockdev testbed bench/python/iso-testbed.py (shared with the
 * iso bench), which
 * answers usbdevfs ioctls with per-packet descriptors (USB-TESTING.md, last
 * section). The child runs the whole engine: frontend → backend worker →
 * port worker → HostUsbDevice → usbfs through koffi; libusb (npm usb) keeps
 * its own fd on the same device, and the testbed refuses a claim across fds
 * (EBUSY), as the kernel does.
 *
 * Skips where python3 with gir1.2-umockdev-1.0 or the optional koffi is
 * missing (CI installs both, and sets USBVIRT_REQUIRE_TOOLS=1: there a missing one fails).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { USBFS_STATUS_TABLE, usbfsStatus } from "../../src/devices/host/status.js";
import { probeUsbfs } from "../../src/devices/host/usbfs-iso.js";
import {
  ECONNRESET,
  ENODEV,
  ENOMEM,
  EOVERFLOW,
  EPROTO,
  ESHUTDOWN,
  EXDEV,
  isKnownStatus,
  OK,
} from "../../src/urb/status.js";
import { allOf, found, missing, need, skipWithout } from "../support/tools.js";
import { ISO_IN_BATCH, ISO_PACKET, isoFakeDevice, isoInByte, isoInPacket } from "./iso-fixture.js";
import { childFailure, runChild } from "./run-child.js";
import { testbedPython, umockdevDescription } from "./umockdev.js";

const usbfs = probeUsbfs();
const tools = allOf(
  testbedPython(),
  usbfs.ok ? found(usbfs) : missing(`the usbfs path cannot load here: ${usbfs.reason}`),
);

interface Outcome {
  verdict: Record<string, unknown>;
  testbed: Record<string, unknown>;
}

describe
  .skipIf(skipWithout("the usbfs isochronous tests under the umockdev testbed", tools))
  .sequential("isochronous URBs to a host device through usbfs", () => {
    let dir = "";
    let description = "";
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), "usbvirt-iso-"));
      description = join(dir, "iso.umockdev");
      writeFileSync(description, umockdevDescription(isoFakeDevice));
    });
    afterAll(() => {
      rmSync(dir, { recursive: true, force: true });
    });

    async function run(scenario: string): Promise<Outcome> {
      const out = await runChild(
        need(tools)[0],
        [
          "bench/python/iso-testbed.py",
          description,
          "--",
          process.execPath,
          "--import",
          "tsx",
          "test/host/children/iso.ts",
          scenario,
        ],
        45_000,
      );
      const line = out.stdout.split("\n").find((l) => l.startsWith("TESTBED "));
      const testbed =
        line === undefined ? null : (JSON.parse(line.slice("TESTBED ".length)) as Record<string, unknown>);
      if (out.verdict === null || out.verdict.ok !== true || testbed === null) {
        throw new Error(
          `${childFailure(`iso child '${scenario}'`, out)}\ntestbed: ${JSON.stringify(testbed)}`,
        );
      }
      return { verdict: out.verdict, testbed };
    }

    it("streams iso IN (per-packet lengths, -EXDEV packets, 4 URBs in flight) and iso OUT (one URB of 200 packets) after SET_INTERFACE to the iso alternate", async () => {
      const { verdict, testbed } = await run("stream");
      // SET_INTERFACE(1, 1) reached the device on the fd that claimed interface 1; libusb's fd never
      // collided with it (no EBUSY), and only one fd (usbfs's) submitted iso URBs.
      expect(testbed).toMatchObject({
        clients: 2,
        busy: 0,
        setInterface: [[1, 1, true]],
        isoIn: 8,
        isoOut: 5,
        maxInFlight: ISO_IN_BATCH,
        other: [],
      });
      expect((testbed.isoSubmitters as number[]).length).toBe(1);

      const ins = verdict.ins as {
        status: number;
        actualLength: number;
        errorCount: number;
        packets: { status: number; actualLength: number; hex: string; after: number | null }[];
      }[];
      expect(ins).toHaveLength(8);
      let lost = 0;
      for (const [seq, urb] of ins.entries()) {
        const want = Array.from({ length: 8 }, (_, i) => {
          const p = isoInPacket(seq, i, 8, ISO_PACKET);
          const bytes = Uint8Array.from({ length: p.actualLength }, (_, j) => isoInByte(seq, i, j));
          return { status: p.status, actualLength: p.actualLength, hex: Buffer.from(bytes).toString("hex") };
        });
        expect(urb.packets.map(({ status, actualLength, hex }) => ({ status, actualLength, hex }))).toEqual(
          want,
        );
        expect(urb.status).toBe(0);
        expect(urb.actualLength).toBe(want.reduce((n, p) => n + p.actualLength, 0));
        expect(urb.errorCount).toBe(want.filter((p) => p.status !== 0).length);
        lost += urb.errorCount;
        if (seq >= 4) {
          // Packets with gaps between them went through a bounce buffer: nothing beyond a packet's data
          // was written (the guest's 0xee canary is intact after every packet).
          for (const p of urb.packets) expect([0xee, null]).toContain(p.after);
        }
      }
      expect(lost).toBeGreaterThan(0); // -EXDEV (-18) reached the guest per packet

      // The testbed checked every OUT packet's bytes against the pattern the guest wrote.
      expect(testbed.outBad).toEqual([]);
      expect(testbed.outPackets).toBe(18 + 200);
      expect((testbed.outLengths as number[]).slice(0, 18)).toEqual(
        [0, 1, 2].flatMap(() => [ISO_PACKET, 100, 1, ISO_PACKET, 0, 64]),
      );
      // 200 packets in one URB went out as two usbfs URBs (128 + 72), every byte where the device expected it.
      expect(verdict.split).toEqual({ status: 0, actualLength: 1600, packets: 200 });
      const outs = verdict.outs as { status: number; actualLength: number; packets: number[][] }[];
      for (const o of outs) {
        expect(o.status).toBe(0);
        expect(o.actualLength).toBe(ISO_PACKET * 2 + 100 + 1 + 64);
        expect(o.packets).toEqual([ISO_PACKET, 100, 1, ISO_PACKET, 0, 64].map((n) => [0, n]));
      }
    });

    it("unlinks an iso IN in flight with DISCARDURB: one completion with -ECONNRESET, the stream goes on, CLEAR_HALT goes through usbfs", async () => {
      const { verdict, testbed } = await run("unlink");
      expect(verdict).toMatchObject({ unlinkStatus: 0, status: ECONNRESET, packets: 4, after: [0, 0, 0, 0] });
      expect(testbed).toMatchObject({ discards: 1, busy: 0, isoIn: ISO_IN_BATCH, clearHalt: [0x82] });
    });

    it("fails the iso URBs in flight with -ENODEV when the device is unplugged mid-stream, and disconnects the port", async () => {
      const { verdict } = await run("unplug");
      const statuses = verdict.statuses as number[];
      expect(statuses).toHaveLength(4);
      for (const s of statuses) expect([ENODEV, ESHUTDOWN]).toContain(s);
      expect(verdict.reason).toMatch(/^device gone: /);
      expect(verdict.connected).toBe(false);
    });
  });

describe("the usbfs path where it cannot load", () => {
  it("says why in one sentence when koffi is missing", () => {
    const missing = probeUsbfs(() => {
      throw new Error("Cannot find module 'koffi'\nRequire stack: …");
    });
    expect(missing).toEqual({
      ok: false,
      reason: "they need the optional package 'koffi' (npm install koffi): Cannot find module 'koffi'",
    });
  });
});

describe("usbfs statuses", () => {
  it("translate the kernel's per-packet and URB errnos through one table into URB statuses", () => {
    for (const target of USBFS_STATUS_TABLE.values()) expect(isKnownStatus(target)).toBe(true);
    expect(usbfsStatus(0)).toBe(OK);
    expect(usbfsStatus(-18)).toBe(EXDEV); // iso packet not transferred in its frame
    expect(usbfsStatus(-75)).toBe(EOVERFLOW); // babble
    expect(usbfsStatus(-2)).toBe(ECONNRESET); // discarded (-ENOENT from usb_kill_urb)
    expect(usbfsStatus(-108)).toBe(ENODEV); // -ESHUTDOWN: the device left
    expect(usbfsStatus(-28)).toBe(ENOMEM); // -ENOSPC: no bandwidth for the iso endpoint
    expect(usbfsStatus(-1234)).toBe(EPROTO); // anything else
  });
});
