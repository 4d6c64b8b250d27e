/**
 * Real libusb code (npm usb@2) against a fake device under umockdev: one
 * child process per test under `umockdev-run`, replaying a usbmon capture the
 * test synthesises (see ./umockdev.ts and /work/shared/USB-TESTING.md). The
 * replay scenarios run the whole engine: frontend → backend worker → port
 * worker → HostUsbDevice → libusb. Sequential and bounded: libusb polls a
 * umockdev device busily (about 0.6 of a core while it is open).
 *
 * Skips when umockdev is not installed (CI installs umockdev, gir1.2-umockdev-1.0 and python3-gi, and
 * sets USBVIRT_REQUIRE_TOOLS=1: there a missing one fails).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ECONNRESET, ENODEV, EPIPE, ESHUTDOWN } from "../../src/urb/status.js";
import { need, skipWithout } from "../support/tools.js";
import {
  BUS_PORT,
  DEVICE_DESCRIPTOR,
  fakeDevice,
  MANUFACTURER,
  PID,
  PRODUCT,
  SERIAL,
  stringDescriptor,
  VID,
} from "./fixture.js";
import { type ChildOutcome, childFailure, runChild, underReplay } from "./run-child.js";
import { payload, SCENARIOS } from "./scenarios.js";
import { DFU_PID, dfuDevice, STATES_PID, statesDevice } from "./states-fixture.js";
import {
  type FakeUsbDevice,
  Recording,
  testbedPython,
  umockdevDescription,
  umockdevRun,
  XFER_BULK,
} from "./umockdev.js";

const replayTool = umockdevRun();
const testbed = testbedPython();

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe
  .skipIf(skipWithout("the libusb replay tests under umockdev", replayTool))
  .sequential("host devices through libusb under umockdev (replay)", () => {
    let dir = "";
    let description = "";
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), "usbvirt-umockdev-"));
      description = join(dir, "device.umockdev");
      writeFileSync(description, umockdevDescription(fakeDevice));
    });
    afterAll(() => {
      rmSync(dir, { recursive: true, force: true });
    });

    async function replay(
      name: string,
      record: (r: Recording) => void,
      child: string,
      args: string[] = [],
    ): Promise<Record<string, unknown>> {
      const r = new Recording(fakeDevice.busnum, fakeDevice.devnum);
      record(r);
      const pcap = join(dir, `${name}.pcap`);
      writeFileSync(pcap, r.pcap());
      const out: ChildOutcome = await underReplay(
        need(replayTool),
        description,
        fakeDevice.sysfsPath,
        pcap,
        child,
        args,
      );
      if (out.verdict === null || out.verdict.ok !== true) {
        throw new Error(childFailure(`child '${name}'`, out));
      }
      return out.verdict;
    }

    const scenario = (name: string) =>
      replay(name, (r) => SCENARIOS[name]!.record(r), "test/host/children/replay.ts", [name]);

    it("lists the described device with its strings, selects it, and libusb writes land in the SharedArrayBuffer", async () => {
      const v = await replay(
        "enumerate",
        (r) => {
          const get = (index: number) => ({
            bmRequestType: 0x80,
            bRequest: 6,
            wValue: 0x0300 | index,
            wIndex: 0x0409,
            wLength: 255,
          });
          r.control(get(1), stringDescriptor(MANUFACTURER));
          r.control(get(2), stringDescriptor(PRODUCT));
          r.control(get(3), stringDescriptor(SERIAL));
          r.transferIn(XFER_BULK, 0x01, 64, payload(64, 42));
        },
        "test/host/children/enumerate.ts",
      );
      expect(v.list).toEqual([
        {
          vendorId: VID,
          productId: PID,
          busNumber: 1,
          deviceAddress: 2,
          portPath: BUS_PORT,
          speed: "high",
          deviceClass: 0xff,
          // Read without opening the device (the filter's class rules need them).
          bcdDevice: 0x0100,
          interfaceClasses: [0xff],
          manufacturer: MANUFACTURER,
          product: PRODUCT,
          serial: SERIAL,
        },
      ]);
      expect(v.selected).toEqual([BUS_PORT]);
      expect(v.info).toEqual({ name: `host 1209:7301 at ${BUS_PORT}`, speed: 3, configBytes: 39 });
      expect(v.result).toEqual({ status: 0, actualLength: 64 });
      // Zero copy: libusb wrote into the guest's SharedArrayBuffer in place, and only inside the view.
      expect(v.inPlace).toBe(hex(payload(64, 42)));
      expect([v.canaryBefore, v.canaryAfter]).toEqual([0xee, 0xee]);
      expect(v.iso).toBe(-22); // isochronous URBs to a real device: -EINVAL
      expect(v.stats).toMatchObject({ zeroCopyTransfers: 1, controlCopies: 0, isoRejected: 1 });
    });

    it("enumerates through the engine and moves control, bulk and interrupt data, four bulk INs in flight", async () => {
      const v = await scenario("data");
      expect(v).toMatchObject({
        vendorId: VID,
        productId: PID,
        product: PRODUCT,
        endpoints: [0x81, 0x02, 0x83],
      });
      expect(v.controlIn).toBe(hex(payload(40, 1)));
      expect(v.bulkOut).toBe(1024);
      expect(v.bulkIn).toBe(hex(payload(1024, 3)));
      expect(v.interruptIn).toBe(hex(payload(8, 4)));
      expect(v.many).toEqual(
        [0, 1, 2, 3].map((i) => ({ status: 0, length: 512 - i, hex: hex(payload(512 - i, 10 + i)) })),
      );
    });

    it("builds the setup packet from the guest's wLength, not its buffer: 18 of a 4096-byte buffer, no data stage for wLength 0", async () => {
      const v = await scenario("padded-control");
      expect(v.descriptor).toEqual({
        status: 0,
        actualLength: 18,
        hex: hex(DEVICE_DESCRIPTOR),
        untouchedAfter: true,
      });
      expect(v.noData).toEqual({ status: 0, actualLength: 0, hex: "", untouchedAfter: true });
    });

    it("reports a stall as -EPIPE and recovers after CLEAR_FEATURE(HALT) through libusb_clear_halt", async () => {
      const v = await scenario("stall");
      expect(v).toMatchObject({ stalledStatus: EPIPE, retried: 64 });
    });

    it("cancels an unanswered bulk IN on unlink: one completion with -ECONNRESET", async () => {
      const v = await scenario("unlink");
      expect(v).toMatchObject({ unlinkStatus: 0, status: ECONNRESET });
    });

    it("fails in-flight URBs when the device goes away, disconnects the port and ends the port worker", async () => {
      const v = await scenario("unplug");
      for (const s of v.statuses as number[]) expect([ENODEV, ESHUTDOWN]).toContain(s);
      expect(v.reason).toMatch(/^device gone: /);
      expect(v.connected).toBe(false);
      expect([ENODEV, ESHUTDOWN]).toContain(v.afterStatus);
    });
  });

describe.skipIf(skipWithout("the hotplug test under the umockdev testbed", testbed))(
  "host hotplug under an interactive umockdev testbed",
  () => {
    it("detaches the port cleanly when the device is unplugged (the frontend sees it) and attaches it again on re-plug", async () => {
      const dir = mkdtempSync(join(tmpdir(), "usbvirt-testbed-"));
      try {
        const description = join(dir, "device.umockdev");
        writeFileSync(description, umockdevDescription(fakeDevice));
        const out = await runChild(need(testbed), [
          "test/host/children/testbed.py",
          description,
          `/sys${fakeDevice.sysfsPath}`,
          "--",
          process.execPath,
          "--import",
          "tsx",
          "test/host/children/hotplug.ts",
        ]);
        const v = out.verdict;
        if (v === null || v.ok !== true) {
          throw new Error(childFailure("hotplug child", out));
        }
        // Log and port-failed lines are there for diagnosis; the hotplug events themselves must be exactly these.
        expect((v.events as string[]).filter((e) => /^(attached|detached) /.test(e))).toEqual([
          `attached 1 ${BUS_PORT}`,
          `detached 1 ${BUS_PORT}`,
          `attached 1 ${BUS_PORT}`,
        ]);
        expect([ENODEV, ESHUTDOWN]).toContain(v.inFlightStatus);
        const changes = v.portChanges as boolean[];
        expect(changes[0]).toBe(true);
        expect(changes.at(-1)).toBe(true); // connected again after the re-plug
        expect(changes).toContain(false); // the frontend saw the disconnect in between
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  },
);

/** Run test/host/children/serve-hotplug.ts under the testbed, the device unplugged at first. */
async function serveUnderTestbed(
  args: string[],
  timeoutMs: number,
  alt: FakeUsbDevice | null = null,
): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), "usbvirt-testbed-"));
  try {
    const description = join(dir, "device.umockdev");
    writeFileSync(description, umockdevDescription(fakeDevice));
    const altOption: string[] = [];
    if (alt !== null) {
      altOption.push("--alt", join(dir, "alt.umockdev"));
      writeFileSync(altOption[1]!, umockdevDescription(alt));
    }
    const out = await runChild(
      need(testbed),
      [
        "test/host/children/testbed.py",
        "--start-unplugged",
        ...altOption,
        description,
        `/sys${fakeDevice.sysfsPath}`,
        "--",
        process.execPath,
        "--import",
        "tsx",
        "test/host/children/serve-hotplug.ts",
        ...args,
      ],
      timeoutMs,
      { USBVIRT_TESTBED_SECONDS: String(Math.floor(timeoutMs / 1000) - 5) },
    );
    const v = out.verdict;
    if (v === null || v.ok !== true) {
      throw new Error(childFailure("serve-hotplug child", out));
    }
    return v;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(skipWithout("serve's hotplug tests under the umockdev testbed", testbed))(
  "usbvirt serve and host hotplug under an interactive umockdev testbed",
  () => {
    it("waits for a device not plugged in yet, withdraws it when unplugged (its importer sees it go), exports it again on re-plug under the same bus id; attach follows and moves data", async () => {
      const v = await serveUnderTestbed([], 45_000);
      expect(v.before).toEqual([]); // serve started without the device; nothing is listed
      expect(v.first).toEqual([VID, PID]);
      expect(v.echoed).toBe(true); // bulk OUT → IN through client engine, USB/IP, server engine, libusb
      expect(v.gone).toMatch(/^the USB\/IP server 127\.0\.0\.1:\d+ closed the connection$/);
      expect(v.after).toEqual(["1-1"]);
      expect(v.again).toEqual([VID, PID]);
      expect(v.echoedAgain).toBe(true);
      const log = v.log as string[];
      expect(log.filter((l) => /waiting for host device 1209:7301 \(bus id 1-1\)/.test(l))).toHaveLength(1);
      expect(log.filter((l) => l.includes("plugged in: exported as 1-1"))).toHaveLength(2);
      expect(log.filter((l) => l.includes("withdrew 1-1"))).toHaveLength(1);
      expect(log.filter((l) => l.includes("to come back as 1-1"))).toHaveLength(1);
      const events = v.events as string[];
      expect(events.some((e) => e.includes("is attached again"))).toBe(true);
    }, 60_000);

    const hex4 = (n: number) => n.toString(16).padStart(4, "0");
    const original = `1-1 ${hex4(VID)}:${hex4(PID)}`;
    const dfu = `1-1 ${hex4(VID)}:${hex4(DFU_PID)}`;

    it("follows a device that re-enumerates with another id at the same path when selected by path (--device 1-1)", async () => {
      const v = await serveUnderTestbed(["reenumerate", BUS_PORT], 45_000, dfuDevice);
      expect(v.before).toEqual([]);
      expect(v.first).toEqual([original]);
      expect(v.dfu).toEqual([dfu]); // the devlist names the new id under the same bus id
      expect(v.dfuImported).toBe(DFU_PID);
      expect(v.dfuEchoed).toBe(true);
      expect(v.back).toEqual([original]);
      const log = v.log as string[];
      expect(log.filter((l) => l.includes("plugged in: exported as 1-1"))).toHaveLength(3);
      expect(
        log.filter((l) => l.includes(`${hex4(VID)}:${hex4(DFU_PID)} at 1-1 plugged in: exported as 1-1`)),
      ).toHaveLength(1);
    }, 60_000);

    it("does not follow it when selected by vid:pid: nothing is listed while the other id is plugged, and says why", async () => {
      const v = await serveUnderTestbed(["reenumerate", `${hex4(VID)}:${hex4(PID)}`], 45_000, dfuDevice);
      expect(v.first).toEqual([original]);
      expect(v.dfu).toEqual([]);
      expect(v.dfuImported).toBeNull();
      expect(v.back).toEqual([original]); // the device itself, back from its DFU mode, is exported again
      const log = v.log as string[];
      expect(log.filter((l) => l.includes("exported as"))).toHaveLength(2);
      expect(log.filter((l) => l.includes(`${hex4(VID)}:${hex4(DFU_PID)}`))).toEqual([
        `info: host device ${hex4(VID)}:${hex4(DFU_PID)} at 1-1 plugged in where ${hex4(VID)}:${hex4(PID)} (1-1) was: not exported, ${hex4(VID)}:${hex4(PID)} does not match it (select by port path, --device 1-1, to follow a device that re-enumerates with another id)`,
      ]);
    }, 60_000);

    it("a hotplug storm (100 plug/unplug) under --match-new: one export left, no leaked port worker or grant", async () => {
      const v = await serveUnderTestbed(["storm", "100"], 180_000);
      expect(v.listed).toEqual(["1-1"]);
      expect(v.exported).toEqual(["1-1"]);
      expect(v.workersBefore).toBe(0);
      expect(v.workersAfter).toBe(1);
      expect(v.grantsLeaked).toBe(0);
      // Every export but the last was withdrawn; every one of the 101 plugs was exported, or skipped because
      // its unplug was already queued behind it, or failed because the device went during the export (each
      // logged); and nothing else was warned about.
      expect(v.exports).toBe((v.withdrawn as number) + 1);
      expect((v.exports as number) + (v.coalesced as number) + (v.failedExports as number)).toBe(101);
      expect(v.matchNewWarnings).toBe(1); // said once at start: no allow rule, every new device is exported
      expect(v.warnings).toEqual([]);
    }, 190_000);
  },
);

/** Run test/host/children/device-states.ts under the testbed (extra testbed options first); its verdict. */
async function statesUnderTestbed(testbedOptions: string[]): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), "usbvirt-testbed-"));
  try {
    const description = join(dir, "device.umockdev");
    const log = join(dir, "ioctls.log");
    writeFileSync(description, umockdevDescription(statesDevice));
    writeFileSync(log, "");
    const out = await runChild(
      need(testbed),
      [
        "test/host/children/testbed.py",
        ...testbedOptions,
        description,
        `/sys${statesDevice.sysfsPath}`,
        "--",
        process.execPath,
        "--import",
        "tsx",
        "test/host/children/device-states.ts",
      ],
      40_000,
      { USBVIRT_TESTBED_LOG: log },
    );
    const v = out.verdict;
    if (v === null || v.ok !== true) {
      throw new Error(childFailure("device-states child", out));
    }
    return { ...v, stderr: out.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(skipWithout("the device state tests under the umockdev testbed", testbed))(
  "device state requests reach the device (interactive testbed, the ioctls it receives)",
  () => {
    // libusb_set_configuration releases nothing itself: usbvirt releases, sets, then claims every interface
    // of the new configuration; libusb_reset_device releases, resets and claims again.
    const claimCycle = ["release 0", "reset", "claim 0"];

    it("with a kernel driver bound: detached on open, the first reset performed, detached again after SET_CONFIGURATION, re-attached on detach", async () => {
      const v = await statesUnderTestbed(["--driver", "testdrv"]);
      const steps = v.steps as Record<string, string[]>;
      expect(v.productId).toBe(STATES_PID);
      // kernelDriverActive, then libusb's detach (which asks again), then the claim.
      expect(steps.open).toEqual(["getdriver 0 testdrv", "getdriver 0 testdrv", "disconnect 0", "claim 0"]);
      // The driver may have changed the device: the guest's first reset reaches it (it was skipped before).
      expect(steps.enumerate).toEqual(claimCycle);
      expect(steps.reset).toEqual(claimCycle);
      expect(steps.config2).toEqual([
        "release 0",
        "setconfiguration 2",
        ...[0, 1].flatMap((n) => [
          `getdriver ${n} testdrv`,
          `getdriver ${n} testdrv`,
          `disconnect ${n}`,
          `claim ${n}`,
        ]),
      ]);
      expect(steps.config1).toEqual([
        "release 0",
        "release 1",
        "setconfiguration 1",
        ...["getdriver 0 testdrv", "getdriver 0 testdrv", "disconnect 0", "claim 0"],
      ]);
      expect(steps.altsetting).toEqual(["setinterface 0 1", "setinterface 0 0"]);
      // Only configuration 1's interface gets its driver back (interface 1 left with configuration 2).
      expect(steps.detach).toEqual(["release 0", "connect 0"]);
      expect([v.echoAfterReset, v.echoConfig2, v.echoAlt1]).toEqual([true, true, true]);
      expect(v.stderr).not.toMatch(/kernel driver failed/);
    }, 60_000);

    it("without a kernel driver: the untouched first reset is skipped, a reset after traffic and real SET_CONFIGURATION / SET_INTERFACE reach the device", async () => {
      const v = await statesUnderTestbed([]);
      const steps = v.steps as Record<string, string[]>;
      expect(steps.open).toEqual(["getdriver 0 None -> 61", "claim 0"]); // ENODATA: no driver
      // enumerate = reset (skipped: nothing reached the device since open), descriptors, address,
      // SET_CONFIGURATION(1) (already active: no request).
      expect(steps.enumerate).toEqual([]);
      expect(steps.reset).toEqual(claimCycle);
      expect(steps.config2).toEqual([
        "release 0",
        "setconfiguration 2",
        ...["getdriver 0 None -> 61", "claim 0", "getdriver 1 None -> 61", "claim 1"],
      ]);
      expect(steps.config1).toEqual([
        "release 0",
        "release 1",
        "setconfiguration 1",
        "getdriver 0 None -> 61",
        "claim 0",
      ]);
      expect(steps.altsetting).toEqual(["setinterface 0 1", "setinterface 0 0"]);
      expect(steps.detach).toEqual(["release 0"]);
      expect([v.echoAfterReset, v.echoConfig2, v.echoAlt1]).toEqual([true, true, true]);
    }, 60_000);
  },
);
