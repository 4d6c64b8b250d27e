/**
 * Who holds a host device, and what is given back when its holder dies, under the interactive umockdev
 * testbed (test/host/children/testbed.py): a second connection or a second process asking for a device
 * another holds is refused with "in use by …" before anything reaches the device; once the holder lets
 * go — by detaching, or by its port worker crashing — the device can be taken again. A device gives back
 * part by part, and its held record follows, so what a holder killed part way leaves is what it still held.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { need, skipWithout } from "../support/tools.js";
import { fakeDevice } from "./fixture.js";
import { childFailure, runChild } from "./run-child.js";
import { statesDevice } from "./states-fixture.js";
import { type FakeUsbDevice, testbedPython, umockdevDescription } from "./umockdev.js";

const testbed = testbedPython();

/**
 * Run `child` under the testbed with `device` (by default the fixture's echo device) plugged in; its verdict
 * and the ioctl log.
 */
async function underTestbed(
  child: string,
  childArgs: readonly string[],
  testbedArgs: readonly string[] = [],
  device: FakeUsbDevice = fakeDevice,
): Promise<{ verdict: Record<string, unknown>; ioctls: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), "usbvirt-testbed-"));
  try {
    const description = join(dir, "device.umockdev");
    const log = join(dir, "ioctls.log");
    writeFileSync(description, umockdevDescription(device));
    writeFileSync(log, "");
    const out = await runChild(
      need(testbed),
      [
        "test/host/children/testbed.py",
        ...testbedArgs,
        description,
        `/sys${device.sysfsPath}`,
        "--",
        process.execPath,
        "--import",
        "tsx",
        child,
        ...childArgs,
      ],
      40_000,
      { USBVIRT_TESTBED_LOG: log },
    );
    const v = out.verdict;
    if (v === null || v.ok !== true) {
      throw new Error(childFailure(child, out));
    }
    return { verdict: v, ioctls: readFileSync(log, "utf8").split("\n").filter(Boolean) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(skipWithout("the tests of host device arbitration under the umockdev testbed", testbed))(
  "host device arbitration under the umockdev testbed",
  () => {
    it("refuses a device held by another connection or another process with 'in use by …', and hands it over on detach", async () => {
      const { verdict: v } = await underTestbed("test/host/children/arbitration.ts", []);
      const pid = v.pid as number;
      for (const refused of [v.inProcess, v.otherProcess]) {
        expect(refused).toMatchObject({ code: "ERR_USBVIRT_HOST_IN_USE" });
        expect((refused as { message: string }).message).toMatch(
          new RegExp(
            `host device 1209:7301 at 1-1 is in use by arbitration\\.ts \\(pid ${pid}, thread \\d+\\)$`,
          ),
        );
      }
      expect(v.after).toBeNull(); // attached once A let go
    });
  },
);

describe.skipIf(skipWithout("the tests of a port worker that dies holding a host device", testbed))(
  "a port worker that dies holding a host device",
  () => {
    it.each([
      ["killed (terminate(): no exit hook runs)", "kill"],
      ["crashed (process.exit on it: its exit hook runs)", "crash"],
    ])(
      "%s: the backend asks for the kernel driver back, lets go of the lock, and the device can be taken again",
      async (_what, how) => {
        const { verdict: v, ioctls } = await underTestbed(
          "test/host/children/arbitration.ts",
          [how],
          ["--driver", "usbhid"],
        );
        expect(v.inProcess).toMatchObject({ code: "ERR_USBVIRT_HOST_IN_USE" });
        // The first holder detached usbhid and claimed the interface ...
        expect(ioctls.slice(0, 4)).toEqual([
          "getdriver 0 usbhid",
          "getdriver 0 usbhid",
          "disconnect 0",
          "claim 0",
        ]);
        // ... and once its worker was gone, the backend asked for usbhid to be bound again (USBDEVFS_CONNECT
        // through a new fd on the device node) before the second holder took the device. What this cannot show:
        // that the bind succeeds. The testbed does not see an fd close (umockdev reports no vanished client), so
        // it still counts the dead worker's claim and answers EBUSY, where Linux dropped that fd's claims when
        // node-usb closed it on the worker's teardown (or the exit hook did).
        expect(ioctls[4]).toMatch(/^connect 0( -> 16)?$/);
        expect(v.after).toBeNull();
        expect((v.fdsHeld as string[]).some((f) => f.includes("bus/usb/001/002"))).toBe(true);
        expect((v.fdsLeft as string[]).filter((f) => f.includes("bus/usb/"))).toEqual([]);
      },
    );
  },
);

describe.skipIf(skipWithout("the tests of a backend worker that dies with its port workers", testbed))(
  "a backend worker that dies with its port workers",
  () => {
    it("has the control plane give the host device back, so the new backend can attach it again", async () => {
      const { verdict: v, ioctls } = await underTestbed(
        "test/host/children/arbitration.ts",
        ["backend"],
        ["--driver", "usbhid"],
      );
      expect(ioctls.slice(0, 4)).toEqual([
        "getdriver 0 usbhid",
        "getdriver 0 usbhid",
        "disconnect 0",
        "claim 0",
      ]);
      expect(ioctls[4]).toMatch(/^connect 0( -> 16)?$/); // see above for the EBUSY
      expect(v.logs as string[]).toContainEqual(
        expect.stringMatching(/^port 1: host device given back by the control plane/),
      );
      // The new backend holds it again (B is refused), and no fd of the dead backend's port worker is left.
      expect(v.after).toMatchObject({ code: "ERR_USBVIRT_HOST_IN_USE" });
      expect((v.fdsLeft as string[]).filter((f) => f.includes("bus/usb/"))).toHaveLength(1);
    });
  },
);

describe.skipIf(skipWithout("the tests of a host device giving back what it holds", testbed))(
  "a host device giving back what it holds",
  () => {
    it("takes each re-attached kernel driver off its held record as it goes, so a worker killed inside close() leaves the control plane only what is still held", async () => {
      const { verdict: v } = await underTestbed(
        "test/host/children/device-release.ts",
        ["close"],
        ["--driver", "usbhid"],
        statesDevice,
      );
      expect(v.ioctls as string[]).toEqual(
        expect.arrayContaining(["release 0", "release 1", "connect 0", "connect 1"]),
      );
      const open = v.open as { detachedDrivers: number[]; token: string };
      expect(open.detachedDrivers).toEqual([0, 1]);
      // Stopped inside close(), in interface 1's CONNECT: interface 0's driver is back and off the record (the
      // control plane would otherwise ask for it a second time); interface 1's and the lock are still on it.
      expect(v.closing).toMatchObject({ detachedDrivers: [1], token: open.token });
      expect(v.closed).toBeNull();
    });

    it("re-attaches the kernel drivers it detached when the open fails on a claim", async () => {
      const { verdict: v, ioctls } = await underTestbed(
        "test/host/children/device-release.ts",
        ["failed-open"],
        ["--driver", "usbhid"],
        statesDevice,
      );
      expect(v.refused).toMatchObject({ code: "ERR_USBVIRT_HOST_CLAIM" });
      expect(ioctls.slice(0, 4)).toEqual([
        "refuse claims",
        "getdriver 0 usbhid",
        "getdriver 0 usbhid",
        "disconnect 0",
      ]);
      // The claim refused (libusb may try it more than once), then usbhid asked back.
      expect(new Set(ioctls.slice(4, -1))).toEqual(new Set(["claim 0 -> 16"]));
      expect(ioctls.at(-1)).toBe("connect 0");
    });
  },
);
