/**
 * The usbvirt CLI: help and usage errors (exit 2), list (table, JSON, host listing failure), serve + attach
 * --check in-process through run(), a config file, a host selector refused with a clear error, and the real
 * process: `usbvirt serve` answers SIGINT by releasing everything and exiting 0.
 */
import { spawn } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseArgs, parseSize } from "../../src/cli/args.js";
import { deviceFromSelector, run } from "../../src/cli/run.js";
import { listRemote } from "../../src/usbip/client.js";
import { capture, serveInProcess } from "../cli/helpers.js";

describe("argument parsing", () => {
  it("options, repeats, = form, positionals, sizes", () => {
    const spec = {
      name: "x",
      summary: "",
      positionals: ["A", "B?"],
      options: [
        { name: "flag", kind: "boolean" as const, help: "" },
        { name: "v", kind: "string" as const, help: "" },
        { name: "m", kind: "string" as const, multiple: true, help: "" },
      ],
    };
    const p = parseArgs(spec, ["a", "--flag", "--v=1", "--m", "x", "--m", "y"]);
    expect(p.options).toEqual({ flag: true, v: "1", m: ["x", "y"] });
    expect(p.positionals).toEqual(["a"]);
    expect(() => parseArgs(spec, [])).toThrow(/missing A/);
    expect(() => parseArgs(spec, ["a", "b", "c"])).toThrow(/unexpected/);
    expect(() => parseArgs(spec, ["a", "--v"])).toThrow(/needs a value/);
    expect(() => parseArgs(spec, ["a", "--nope"])).toThrow(/unknown option/);
    expect(parseSize("64M")).toBe(64 * 1024 * 1024);
    expect(parseSize("512KiB")).toBe(512 * 1024);
    expect(parseSize("12x")).toBeNull();
  });

  it("device selectors: emulated names and host selectors", () => {
    expect(deviceFromSelector("keyboard", {})).toEqual({ kind: "emulated", name: "keyboard" });
    expect(deviceFromSelector("storage", { sizeBytes: 1 })).toEqual({
      kind: "emulated",
      name: "storage",
      options: { sizeBytes: 1 },
    });
    expect(deviceFromSelector("1209:0001", {})).toEqual({ kind: "host", vendorId: 0x1209, productId: 1 });
    expect(deviceFromSelector("1-1.2", {})).toEqual({ kind: "host", busPort: "1-1.2" });
    expect(deviceFromSelector("serial=ABC", {})).toEqual({ kind: "host", serial: "ABC" });
    expect(() => deviceFromSelector("emulated:mouse", {})).toThrow(/unknown emulated device "mouse"/);
    expect(() => deviceFromSelector("what", {})).toThrow(/cannot read device "what"/);
  });
});

describe("usbvirt commands", () => {
  it("help, per-command help, unknown command, usage errors", async () => {
    const a = capture();
    expect(await run(["help"], a.io)).toBe(0);
    expect(a.out).toContain("serve");
    const b = capture();
    expect(await run(["serve", "--help"], b.io)).toBe(0);
    expect(b.out).toContain("--allow-client");
    expect(b.out).toContain("usbip list -r HOST");
    const c = capture();
    expect(await run(["help", "attach"], c.io)).toBe(0);
    expect(c.out).toContain("--check");
    const d = capture();
    expect(await run(["frobnicate"], d.io)).toBe(2);
    expect(d.err).toContain("unknown command 'frobnicate'");
    for (const argv of [
      ["serve", "--port", "99999"],
      ["serve", "--device", "nonsense"],
      ["serve", "--storage-size", "12x"],
      ["attach", "host-only"],
      ["attach", "h:0", "1-1"],
      ["list", "--bogus"],
    ]) {
      const e = capture();
      expect(await run(argv, e.io), argv.join(" ")).toBe(2);
      expect(e.err).toMatch(/^usbvirt \w+: .+\nRun 'usbvirt \w+ --help' for usage\.\n$/);
    }
  });

  it("list: emulated devices and the host devices, as a table and as JSON; a failed host listing says why", async () => {
    const rows = [
      { vendorId: 0x1d6b, productId: 2, portPath: "1-1", speed: "high", product: "Hub", serial: "S1" },
    ];
    const a = capture({ listHostDevices: async () => rows });
    expect(await run(["list"], a.io)).toBe(0);
    expect(a.out).toMatch(/loopback\s+1209:0001/);
    expect(a.out).toMatch(/1-1\s+1d6b:0002\s+high\s+Hub\s+serial=S1/);
    const b = capture({
      listHostDevices: async () => {
        throw new Error("libusb could not be loaded");
      },
    });
    expect(await run(["list"], b.io)).toBe(0);
    expect(b.out).toContain("host devices cannot be listed: libusb could not be loaded");
    const c = capture({ listHostDevices: async () => rows });
    expect(await run(["list", "--json"], c.io)).toBe(0);
    const json = JSON.parse(c.out);
    expect(json.emulated.map((d: { name: string }) => d.name)).toEqual(["loopback", "keyboard", "storage"]);
    expect(json.host).toEqual(rows);
  });

  it("serve (defaults) + list --remote + attach --check, all through run(); SIGINT stand-in exits 0", async () => {
    const { server, c, stop } = await serveInProcess(["--quiet"]);
    const port = server.address.port;
    expect(c.out).toContain(`on 127.0.0.1:${port}`);
    expect(server.devices.map((d) => d.busid)).toEqual(["1-1", "1-2", "1-3"]);
    expect(server.devices[2]!.spec).toMatchObject({ options: { sizeBytes: 64 * 1024 * 1024 } });
    const l = capture();
    expect(await run(["list", "--remote", `127.0.0.1:${port}`], l.io)).toBe(0);
    expect(l.out).toMatch(/1-3\s+1209:0003/);
    const a = capture();
    expect(await run(["attach", `127.0.0.1:${port}`, "1-1", "--check"], a.io)).toBe(0);
    expect(a.out).toContain("check passed");
    const k = capture();
    expect(await run(["attach", `127.0.0.1:${port}`, "1-2", "--check"], k.io)).toBe(1);
    expect(k.out).toContain("not usbvirt's loopback");
    expect(await stop()).toBe(0);
  });

  it("serve reads a config file; flags win over it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-cli-"));
    const file = join(dir, "serve.json");
    await writeFile(file, JSON.stringify({ port: 1, devices: ["keyboard", "storage"], storageSize: "1M" }));
    const { server, stop } = await serveInProcess(["--config", file]);
    const devices = await listRemote({ host: "127.0.0.1", port: server.address.port });
    expect(devices.map((d) => d.idProduct)).toEqual([2, 3]);
    expect(server.devices[1]!.spec).toMatchObject({ options: { sizeBytes: 1024 * 1024 } });
    expect(await stop()).toBe(0);
    const bad = capture();
    await writeFile(file, JSON.stringify({ devcies: [] }));
    expect(await run(["serve", "--config", file], bad.io)).toBe(2);
    expect(bad.err).toContain('unknown key "devcies"');
  });

  it("a host device that cannot be exported fails serve with a clear message (exit 1)", async () => {
    // Without a host listing (no libusb) serve cannot wait for the device: it tries to export it at once.
    const c = capture({
      listHostDevices: async () => {
        throw new Error("libusb could not be loaded");
      },
    });
    expect(await run(["serve", "--port", "0", "--device", "dead:beef"], c.io)).toBe(1);
    expect(c.err).toMatch(/^usbvirt serve: cannot export host device vid 0xdead pid 0xbeef: .+/);
    // The device's own words: the engine's port numbering means nothing to a user of serve.
    expect(c.err).not.toMatch(/: port \d+:/);
  });
});

describe("the usbvirt process", () => {
  it("serve: SIGINT releases everything and exits 0", async () => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "src/cli/main.ts", "serve", "--port", "0", "--device", "loopback"],
      {
        cwd: join(import.meta.dirname, "../.."),
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    const deadline = Date.now() + 20_000;
    while (!/on 127\.0\.0\.1:(\d+)/.test(out)) {
      if (Date.now() > deadline) throw new Error(`serve did not start: ${out} ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const port = Number(/on 127\.0\.0\.1:(\d+)/.exec(out)![1]);
    const devices = await listRemote({ host: "127.0.0.1", port });
    expect(devices.map((d) => d.busid)).toEqual(["1-1"]);
    child.kill("SIGINT");
    expect(await exited).toBe(0);
    expect(err).toContain("SIGINT: shutting down");
    expect(err).toContain("devices released");
  }, 30_000);
});
