/**
 * Linux's own `usbip` tool (Debian package usbip) lists what the server exports: the management phase
 * as the real client speaks it. Importing needs the vhci-hcd kernel module, which this machine has not;
 * the tool is skipped with a message where it is not installed (CI installs it).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type TestServer } from "./helpers.js";

const TOOL = ["/usr/sbin/usbip", "/usr/bin/usbip"].find((p) => existsSync(p));
if (TOOL === undefined)
  console.warn("skipping the Linux usbip tool test: usbip is not installed (apt-get install usbip)");

describe.skipIf(TOOL === undefined)("Linux's usbip tool", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startServer();
  });
  afterAll(async () => {
    await t?.close();
  });

  it("lists the three exported devices with their bus ids, ids and interface classes", async () => {
    const { stdout } = await promisify(execFile)(
      TOOL!,
      ["--tcp-port", String(t.port), "list", "-r", "127.0.0.1"],
      { timeout: 10_000 },
    );
    expect(stdout).toContain("1-1:");
    expect(stdout).toMatch(/1-1:.*\(1209:0001\)/);
    expect(stdout).toMatch(/1-2:.*\(1209:0002\)/);
    expect(stdout).toMatch(/1-3:.*\(1209:0003\)/);
    expect(stdout).toContain("(08/06/50)"); // mass storage, SCSI, Bulk-Only
    expect(stdout).toContain("(03/01/01)"); // HID boot keyboard
    expect(t.log.matching("device list (3 devices)").length).toBe(1);
  });
});
