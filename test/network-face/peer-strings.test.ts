/**
 * Strings a peer or a device chooses, on their way into the text log and the terminal: a usbredir
 * peer's version string and its VMM filter, a host device's serial and product strings, a remote USB/IP
 * server's bus ids, a remote status page's fields, a remote device's product string (attach), a host
 * device's product string in `usbvirt ctl list`'s table, an announcing host's instance name and its
 * devices' serials (list --discover). Each may
 * hold a line break (a forged log line that looks like the server's own), ANSI/OSC escapes (a terminal's
 * title, colours, a cleared screen) or C1 controls. What reaches the log or the terminal holds them escaped: no control character but the line
 * ends the program writes, every line of a log starts as the logger starts it, and the peer's printable
 * text is still there to read.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { discoveryTable } from "../../src/cli/discover.js";
import { run } from "../../src/cli/run.js";
import { decodeTxt, encodeTxt } from "../../src/discovery/txt-record.js";
import { streamLogger } from "../../src/network-face/log.js";
import { encodeDevlistReply } from "../../src/usbip/management-pdus.js";
import type { HotplugSource } from "../../src/usbip-server/host-exports.js";
import type { UsbipServer } from "../../src/usbip-server/server.js";
import { QEMU_GUEST_CAPS } from "../../src/usbredir/client.js";
import { encodeFilter, encodeHello } from "../../src/usbredir/protocol.js";
import { capture } from "../cli/helpers.js";
import { eventually } from "../support/eventually.js";
import { RawPeer } from "../usbredir/raw-peer.js";
import { HostileUsbipServer } from "./hostile-usbip-server.js";
import { type MeasuredServer, startMeasuredServer } from "./measured-server.js";

/** A line of the server's own, as the attacker would forge it. */
const FORGED = "2030-01-01T00:00:00.000Z usbvirt error: forged";
/** Control characters a terminal acts on: C0 but tab and line feed, DEL, C1 (CSI is 0x9b). */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f-\x9f]/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL_BUT_LF = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/;
/** How the text logger starts every line. */
const LOG_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z usbvirt (info|warn|error): /;

/** `text` holds no control character but its line ends; no line is the forged one. */
function expectNoRawControls(text: string, what: string): void {
  const bad = CONTROL_BUT_LF.exec(text);
  expect(
    bad,
    `${what} holds a raw 0x${bad?.[0].charCodeAt(0).toString(16)}: ${JSON.stringify(text)}`,
  ).toBeNull();
  for (const line of text.split("\n"))
    expect(line.startsWith("2030-01-01"), `${what}: a forged line: ${JSON.stringify(line)}`).toBe(false);
}

/** Every line of a text log is the logger's; each line with `marker` in it holds no control character. */
function expectCleanLog(log: string, marker: string): void {
  expectNoRawControls(log, "the log");
  for (const line of log.split("\n").filter((l) => l !== ""))
    expect(line, `a line the logger did not start: ${JSON.stringify(line)}`).toMatch(LOG_LINE);
  const lines = log.split("\n").filter((l) => l.includes(marker));
  expect(lines.length, `no line shows the peer's text "${marker}"`).toBeGreaterThan(0);
  for (const l of lines) expect(CONTROL.test(l), JSON.stringify(l)).toBe(false);
}

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

describe("peer strings in the usbredir server's text log", () => {
  let server: MeasuredServer;

  it("a hello whose version string holds a line break, OSC and CSI sequences", async () => {
    server = await startMeasuredServer("usbredir", {});
    closers.push(() => server.close());
    // The version field is 64 bytes with its NUL.
    const version = `v\r\n${FORGED}\x1b]0;owned\x07\x9b1m`;
    expect(Buffer.byteLength(version, "utf8")).toBeLessThan(64);
    const p = await RawPeer.open(server.port);
    closers.push(async () => p.destroy());
    p.write(encodeHello(version, QEMU_GUEST_CAPS));
    await eventually(() => server.lines().some((l) => l.includes("usbredir peer")), 5000, "the hello logged");
    expectCleanLog(server.stderr(), "owned");
  });

  it("a VMM filter whose text holds escapes and a line break", async () => {
    server = await startMeasuredServer("usbredir", {});
    closers.push(() => server.close());
    const p = await RawPeer.open(server.port);
    closers.push(async () => p.destroy());
    await p.hello();
    const before = server.lines().length;
    p.write(encodeFilter(p.negotiated, `-1,-1,-1,-1,1\x1b]0;owned\x07\n${FORGED}\x1b[2J`));
    await eventually(() => server.lines().length > before, 5000, "the filter logged");
    expectCleanLog(server.stderr(), "owned");
  });
});

describe("device strings in serve's log", () => {
  it("a host device whose serial holds escapes and a line break (--match-new, denied by the filter)", async () => {
    let log = "";
    let listener: Parameters<HotplugSource["watch"]>[0] | null = null;
    const source: HotplugSource = {
      watch(l) {
        listener = l;
        return () => {
          listener = null;
        };
      },
      list: async () => [],
    };
    let stop!: (s: string) => void;
    const stopped = new Promise<string>((r) => {
      stop = r;
    });
    let up!: (s: UsbipServer) => void;
    const listening = new Promise<UsbipServer>((r) => {
      up = r;
    });
    const c = capture({
      listHostDevices: async () => [],
      hotplugSource: source,
      stopSignal: () => stopped,
      onListening: (s) => up(s),
      logger: streamLogger("text", (line) => {
        log += line;
      }),
    });
    const exit = run(["serve", "--port", "0", "--match-new", "--deny", "class=hid"], c.io);
    await Promise.race([
      listening,
      exit.then((code) => Promise.reject(new Error(`serve exited ${code}: ${c.err}`))),
    ]);
    try {
      listener!("attach", {
        vendorId: 0x046d,
        productId: 0xc31c,
        deviceClass: 0,
        interfaceClasses: [3],
        portPath: "1-2",
        serial: `SN1\x1b]0;owned\x07\n${FORGED}\x1b[2J`,
      });
      await eventually(() => log.includes("filter denies it"), 5000, "the device judged");
      expectCleanLog(log, "owned");
    } finally {
      stop("SIGINT");
      expect(await exit).toBe(0);
    }
  });
});

describe("peer and device strings printed by the CLI", () => {
  it("usbvirt list --remote: a hostile server's bus ids", async () => {
    const evil = encodeDevlistReply([
      {
        path: "/sys/devices/evil",
        busid: `1-1\x1b]0;owned\x07\n${FORGED.slice(0, 12)}`.slice(0, 31),
        busnum: 1,
        devnum: 1,
        speed: 2,
        idVendor: 0x1209,
        idProduct: 1,
        bcdDevice: 0x100,
        bDeviceClass: 0,
        bDeviceSubClass: 0,
        bDeviceProtocol: 0,
        bConfigurationValue: 1,
        bNumConfigurations: 1,
        interfaces: [{ cls: 0xff, subclass: 0, protocol: 0 }],
      },
    ]);
    const fake: Server = createServer((socket) => {
      socket.once("data", () => socket.end(evil));
      socket.on("error", () => undefined);
    });
    await new Promise<void>((r) => fake.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise((r) => fake.close(() => r())));
    const port = (fake.address() as { port: number }).port;
    const c = capture();
    expect(await run(["list", "--remote", `127.0.0.1:${port}`], c.io), c.err).toBe(0);
    expect(c.out).toContain("owned");
    expectNoRawControls(c.out, "list --remote's output");
  });

  it("usbvirt status: a hostile status endpoint's fields", async () => {
    const evil = (s: string) => `${s}\x1b]0;owned\x07\r\n${FORGED}\x1b[2J\x9b1m`;
    const status = {
      version: evil("1.0"),
      time: new Date().toISOString(),
      up: true,
      clients: 1,
      backendLosses: 0,
      grantFaults: 0,
      rejected: 0,
      devices: [
        {
          busid: evil("1-1"),
          port: 1,
          name: evil("name"),
          identity: evil("1209:0001"),
          state: evil("imported"),
          holder: evil("10.0.0.1:1"),
          since: null,
          failure: evil("why"),
          urbs: 1,
          bytes: 1,
          errors: 0,
          inFlight: 0,
          urbsPerSec: 0,
          bytesPerSec: 0,
          history: { urbsPerSec: [], bytesPerSec: [] },
          log: [],
        },
      ],
    };
    const fake: HttpServer = createHttpServer((_req, res) => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(status));
    });
    await new Promise<void>((r) => fake.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise((r) => fake.close(() => r())));
    const port = (fake.address() as { port: number }).port;
    const c = capture();
    expect(await run(["status", "--metrics", `127.0.0.1:${port}`], c.io), c.err).toBe(0);
    expect(c.out).toContain("owned");
    expectNoRawControls(c.out, "status's output");
  });

  it("usbvirt list: host devices whose manufacturer, product and serial hold escapes", async () => {
    const evil = (s: string) => `${s}\x1b]0;owned\x07\n${FORGED}\x1b[2J\x9b1m`;
    const c = capture({
      listHostDevices: async () => [
        {
          vendorId: 0x1209,
          productId: 1,
          portPath: "1-4",
          speed: "high",
          manufacturer: evil("ACME"),
          product: evil("Stick"),
          serial: evil("SN"),
        },
      ],
    });
    expect(await run(["list"], c.io), c.err).toBe(0);
    expect(c.out).toContain("owned");
    expectNoRawControls(c.out, "list's output");
  });
});

describe("a host device's strings printed by ctl", () => {
  it("usbvirt ctl list: a host device whose product string holds a line break and escapes", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-peer-strings-"));
    closers.push(() => rm(dir, { recursive: true, force: true }));
    const evil = {
      vendorId: 0x1209,
      productId: 1,
      deviceClass: 0,
      interfaceClasses: [0xff],
      portPath: "1-4",
      product: `Stick\x1b]0;owned\x07\n${FORGED}\x1b[2J\x9b1m`,
    };
    let stop!: (s: string) => void;
    const stopped = new Promise<string>((r) => {
      stop = r;
    });
    let up!: () => void;
    const listening = new Promise<void>((r) => {
      up = r;
    });
    const control = join(dir, "control.sock");
    const c = capture({
      listHostDevices: async () => [evil],
      hotplugSource: { watch: () => () => undefined, list: async () => [evil] },
      stopSignal: () => stopped,
      onListening: () => up(),
    });
    const exit = run(["serve", "--port", "0", "--control", control, "--state-dir", join(dir, "state")], c.io);
    await Promise.race([
      listening,
      exit.then((code) => Promise.reject(new Error(`serve exited ${code}: ${c.err}`))),
    ]);
    try {
      const ctl = capture();
      expect(await run(["ctl", "--control", control, "list"], ctl.io), ctl.err).toBe(0);
      expect(ctl.out).toContain("owned");
      expectNoRawControls(ctl.out, "ctl list's output");
      const row = ctl.out.split("\n").filter((l) => l.includes("Stick"));
      expect(row.length, ctl.out).toBe(1);
      expect(row[0], "the device's row holds all of its product string").toContain("forged");
    } finally {
      stop("SIGINT");
      expect(await exit).toBe(0);
    }
  });
});

describe("what an announcing host says, printed by list --discover", () => {
  it("a host's instance name and a device's serial (through the TXT record's own encoding) reach the table escaped", () => {
    const evil = (s: string) => `${s}\x1b]0;owned\x07\n${FORGED}\x1b[2J\x9b1m\u202e`;
    const txt = decodeTxt(
      encodeTxt({
        version: "1",
        tls: false,
        devices: [
          {
            busid: "1-1",
            vendorId: 0x1209,
            productId: 1,
            deviceClass: 0xff,
            serial: evil("SN"),
            held: false,
          },
        ],
      }).map((t) => Buffer.from(t)),
    );
    if (!txt.ok) throw new Error(txt.reason);
    expect(txt.txt.devices[0]!.serial).toBe(evil("SN"));
    const table = discoveryTable({
      servers: [
        {
          service: "_usbip._tcp",
          instance: "x._usbip._tcp.local",
          name: evil("host"),
          host: "10.0.0.1",
          port: 3240,
          txt: txt.txt,
        },
      ],
      ignored: { malformed: 0, badTxt: 0, overLimit: 0, badSrv: 0 },
    });
    expect(table).toContain("owned");
    expectNoRawControls(table, "list --discover's table");
    expect(table).not.toContain("\u202e");
  });
});

describe("a remote device's strings printed by attach", () => {
  it("usbvirt attach: the product string of a device a hostile server exports", async () => {
    const evil = (s: string) => `${s}\x1b]0;owned\x07\n${FORGED}\x1b[2J\x9b1m`;
    const hostile = await HostileUsbipServer.start({
      busid: "1-1",
      manufacturer: evil("ACME"),
      product: evil("Gadget"),
      serial: evil("SN"),
    });
    closers.push(() => hostile.close());
    let stop!: (s: string) => void;
    const stopped = new Promise<string>((r) => {
      stop = r;
    });
    const c = capture({ stopSignal: () => stopped });
    const exit = run(["attach", `127.0.0.1:${hostile.port}`, "1-1", "--no-reconnect"], c.io);
    try {
      await Promise.race([
        eventually(() => c.out.includes("attached 1-1"), 10_000, "the device attached"),
        exit.then((code) => Promise.reject(new Error(`attach exited ${code}: ${c.err}`))),
      ]);
    } finally {
      stop("SIGINT");
      await exit;
    }
    expect(c.out).toContain("owned");
    expectNoRawControls(c.out, "attach's output");
    expectNoRawControls(c.err, "attach's messages");
  });
});
