/**
 * `usbvirt ctl` steering a running serve with a real (umockdev) host device, real libusb and Linux's own
 * `usbip` tool: bind at run time (usbip list -r sees it, a client imports it and moves data), unbind (the
 * importer sees the disconnect, usbip list -r no longer lists it), and the binding restored when serve
 * starts again on the same --state-dir. The child is test/host/children/ctl-steer.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { allOf, command, need, skipWithout } from "../support/tools.js";
import { fakeDevice } from "./fixture.js";
import { childFailure, runChild } from "./run-child.js";
import { testbedPython, umockdevDescription } from "./umockdev.js";

const tools = allOf(testbedPython(), command(["usbip"], "apt-get install usbip"));

describe.skipIf(skipWithout("usbvirt ctl under the umockdev testbed with Linux's usbip", tools))(
  "usbvirt ctl steers serve with a real host device",
  () => {
    it("bind: usbip list -r sees it and a client moves data; unbind: the importer sees it go; restart: the binding is back", async () => {
      const dir = mkdtempSync(join(tmpdir(), "usbvirt-ctl-testbed-"));
      try {
        const description = join(dir, "device.umockdev");
        writeFileSync(description, umockdevDescription(fakeDevice));
        const out = await runChild(
          need(tools)[0],
          [
            "test/host/children/testbed.py",
            description,
            `/sys${fakeDevice.sysfsPath}`,
            "--",
            process.execPath,
            "--import",
            "tsx",
            "test/host/children/ctl-steer.ts",
          ],
          110_000,
          { USBVIRT_TESTBED_SECONDS: "105" },
        );
        const v = out.verdict;
        if (v === null || v.ok !== true) {
          throw new Error(childFailure("ctl-steer child", out));
        }
        expect(v.listBefore).toMatch(/host\s+1-1\s+1209:7301\s+available/);
        expect(v.usbipBefore).not.toContain("1209:7301");
        expect(v.bind).toEqual({ code: 0, out: "1209:7301: bound as 1-1\n", err: "" });
        expect(v.usbipBound).toMatch(/1-1: .*\(1209:7301\)/);
        expect(v.echoed).toBe(true);
        expect(v.listImported).toMatchObject({
          device: "1-1",
          state: "imported",
          busid: "1-1",
          client: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
        });
        expect(v.unbind).toEqual({ code: 0, out: "1-1: unbound\n", err: "" });
        expect(v.gone).toMatch(/closed the connection/);
        expect(v.usbipUnbound).not.toContain("1209:7301");
        expect(v.bindAgain).toEqual({ code: 0, out: "1-1: bound as 1-1\n", err: "" });
        expect(v.firstExit).toBe(0);
        expect(v.usbipRestored).toMatch(/1-1: .*\(1209:7301\)/);
        expect(v.echoedRestored).toBe(true);
        expect(v.listRestored).toMatch(/host\s+1-1\s+1209:7301\s+imported as 1-1 by 127\.0\.0\.1:\d+ since /);
        expect(v.secondExit).toBe(0);
        const log = v.log as string[];
        expect(log.filter((l) => l.includes("control: restored bind 1-1 as 1-1"))).toHaveLength(1);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 120_000);
  },
);
