/**
 * Linux's own `usbip` tool (Debian package usbip) lists what the server exports: the management phase
 * as the real client speaks it. Importing needs the vhci-hcd kernel module, which this machine has not;
 * the test is skipped with a message where it is not installed (CI installs it and sets
 * USBVIRT_REQUIRE_TOOLS=1, which makes that a failure).
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { command, need, skipWithout } from "../support/tools.js";
import { startServer, type TestServer } from "./helpers.js";

// /usr/sbin is not on every user's PATH.
const usbip = command(["usbip", "/usr/sbin/usbip", "/usr/bin/usbip"], "apt-get install usbip");

describe.skipIf(skipWithout("the Linux usbip tool test", usbip))("Linux's usbip tool", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startServer();
  });
  afterAll(async () => {
    await t?.close();
  });

  it("lists the three exported devices with their bus ids, ids and interface classes", async () => {
    const { stdout } = await promisify(execFile)(
      need(usbip),
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
