/**
 * `usbvirt serve`'s retries of a host device that failed while it stays plugged in, for real: the real
 * serve (libusb, engine, port workers) under the interactive umockdev testbed, the device's port worker
 * crashed with Connection.crashPort and its claims refused by the testbed for a while
 * (test/host/children/serve-retries.ts). The schedule itself, on a fake clock: test/cli/serve-retries.test.ts.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { need, skipWithout } from "../support/tools.js";
import { fakeDevice } from "./fixture.js";
import { childFailure, runChild } from "./run-child.js";
import { testbedPython, umockdevDescription } from "./umockdev.js";

const testbed = testbedPython();

describe.skipIf(skipWithout("serve's retries under the umockdev testbed", testbed))(
  "serve re-exports a host device that failed while plugged in",
  () => {
    it("tries again after 1, 2 and 4 s (one line each) until it works, gives up on a device that keeps failing, and an unplug ends the retries", async () => {
      const dir = mkdtempSync(join(tmpdir(), "usbvirt-testbed-"));
      try {
        const description = join(dir, "device.umockdev");
        const ioctlLog = join(dir, "ioctls.log");
        writeFileSync(description, umockdevDescription(fakeDevice));
        writeFileSync(ioctlLog, "");
        const out = await runChild(
          need(testbed),
          [
            "test/host/children/testbed.py",
            description,
            `/sys${fakeDevice.sysfsPath}`,
            "--",
            process.execPath,
            "--import",
            "tsx",
            "test/host/children/serve-retries.ts",
          ],
          50_000,
          { USBVIRT_TESTBED_LOG: ioctlLog, USBVIRT_TESTBED_SECONDS: "45" },
        );
        const v = out.verdict;
        if (v === null || v.ok !== true) {
          throw new Error(childFailure("serve-retries child", out));
        }
        const log = v.log as string[];
        const device = "host device 1209:7301 at 1-1";
        expect(v.atStart).toEqual(["1-1"]);
        // Three real crashes, each reported by the engine and withdrawn by serve.
        expect(log.filter((l) => /^error: device 1-1 \(.*\) failed: /.test(l))).toHaveLength(3);
        // 1. One line per try: two refused claims, then back on the third, 1 + 2 + 4 s after the crash at least.
        expect(log.filter((l) => / retry \d of 3 after a failure: /.test(l)).slice(0, 3)).toEqual([
          expect.stringMatching(
            new RegExp(`^warn: ${device} retry 1 of 3 after a failure: could not export it as 1-1: .*claim`),
          ),
          expect.stringMatching(
            new RegExp(`^warn: ${device} retry 2 of 3 after a failure: could not export it as 1-1: .*claim`),
          ),
          `info: ${device} retry 3 of 3 after a failure: exported as 1-1`,
        ]);
        expect(v.recoveredMs as number).toBeGreaterThanOrEqual(7000);
        expect(v.recovered).toEqual(["1-1"]);
        expect(v.echoed).toBe(true); // bulk OUT → IN through USB/IP, the server's engine, libusb, the testbed
        const ioctls = readFileSync(ioctlLog, "utf8").split("\n");
        expect(ioctls.filter((l) => l === "claim 0 -> 16").length).toBeGreaterThanOrEqual(2);
        // 2. Failed again at once: given up, nothing listed, no fourth try.
        expect(log).toContain(
          `warn: ${device} failed again within 60 s of retry 3 bringing it back; no more tries until it is plugged in again`,
        );
        expect(v.gaveUp).toEqual([]);
        // 3. Unplugged during the backoff: the retries ended (by the detach event, or by the try that found
        // the device gone if it came first); plugged in again, exported as any plugged-in device.
        expect(
          log.filter((l) =>
            /unplugged: retry \d of 3 after a failure cancelled|not plugged in any more; no more tries/.test(
              l,
            ),
          ),
        ).toHaveLength(1);
        expect(log.filter((l) => l.includes("plugged in: exported as 1-1"))).toHaveLength(2);
        expect(v.after).toEqual(["1-1"]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 60_000);
  },
);
