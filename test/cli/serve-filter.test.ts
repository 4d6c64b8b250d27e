/**
 * `usbvirt serve`'s host device filter through run(), with a fake host listing (issue #14, item 2):
 * `--deny` works on its own and judges explicit `--device` entries (before, it did nothing without
 * `--allow` and never looked at `--device`), class rules cover the device and its interfaces, hubs are
 * denied by default, usbredir's filter string is accepted, and the config file takes the same rules.
 * A denied device stops serve before anything listens (exit 1, the rule named).
 */
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { capture } from "./helpers.js";

const rows = [
  { vendorId: 0x046d, productId: 0xc31c, portPath: "1-2", deviceClass: 0, interfaceClasses: [3, 3] },
  {
    vendorId: 0x0781,
    productId: 0x5567,
    portPath: "1-4.1",
    deviceClass: 0,
    interfaceClasses: [8],
    serial: "SD42",
  },
  { vendorId: 0x05e3, productId: 0x0608, portPath: "1-4", deviceClass: 9, interfaceClasses: [9] },
];

async function serve(args: readonly string[]) {
  const c = capture({
    listHostDevices: async () => rows,
    stopSignal: () => Promise.resolve("SIGINT"),
  });
  const code = await run(["serve", "--port", "0", ...args], c.io);
  return { code, out: c.out, err: c.err };
}

describe("serve: the host device filter", () => {
  it("--deny alone refuses an explicit --device it matches, naming the rule", async () => {
    const r = await serve(["--device", "046d:c31c", "--deny", "046d:*"]);
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      "usbvirt serve: host device 046d:c31c (1-2, 046d:c31c) is denied by the filter: rule 1: deny 046d:* (class 0x03)\n",
    );
    expect(r.out).not.toContain("serving");
  });

  it("--deny class=hid refuses a device whose interfaces are HID, by path too", async () => {
    const r = await serve(["--device", "1-2", "--deny", "class=hid"]);
    expect(r.code).toBe(1);
    expect(r.err).toContain("is denied by the filter: rule 1: deny class=0x03 (class 0x03)");
  });

  it("a hub is refused by default, even when named", async () => {
    const r = await serve(["--device", "1-4"]);
    expect(r.code).toBe(1);
    expect(r.err).toContain("is denied by the filter: the built-in rule: deny hubs (class 0x09)");
  });

  it("usbredir's filter string is accepted (--filter), and checked", async () => {
    const r = await serve(["--device", "1-2", "--filter", "0x03,-1,-1,-1,0|-1,-1,-1,-1,1"]);
    expect(r.code).toBe(1);
    expect(r.err).toContain("rule 1: deny class=0x03 (class 0x03)");
    const bad = await serve(["--filter", "0x03,-1,-1,-1,7"]);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain(
      '--filter: filter rule "0x03,-1,-1,-1,7": the last field is 1 (allow) or 0 (deny), not 7',
    );
  });

  it("a config file takes the same rules", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-filter-"));
    const file = join(dir, "serve.json");
    await writeFile(file, JSON.stringify({ devices: ["1-2"], filter: ["deny class=hid", "allow *"] }));
    const r = await serve(["--config", file]);
    expect(r.code).toBe(1);
    expect(r.err).toContain("rule 1: deny class=0x03");
    await writeFile(file, JSON.stringify({ filter: "deny class=keyboards" }));
    const bad = await serve(["--config", file]);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/filter: .*class must be 0\.\.0xff or one of/);
  });

  it("emulated devices are not host devices: a filter does not touch them", async () => {
    const r = await serve(["--device", "keyboard", "--deny", "class=hid", "--quiet"]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("serving 1 device(s)");
  });
});
