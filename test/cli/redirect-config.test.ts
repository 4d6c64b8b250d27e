/**
 * `usbvirt redirect --config FILE`: the file says what the flags say (the device, listen or connect, the
 * allowlist, the storage file, metrics), flags win key by key and a mode flag replaces the file's mode, and
 * a bad file or flag stops redirect with exit 2 and an error naming the file and the key, before anything
 * starts. In-process through run(); peers on loopback, one bound to 127.0.0.2 for the allowlist.
 */
import { mkdtemp, stat, writeFile } from "node:fs/promises";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { RedirStatus } from "../../src/usbredir/protocol.js";
import { eventually } from "../support/eventually.js";
import { capture, redirectInProcess } from "./helpers.js";

async function configFile(content: unknown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "usbvirt-redirect-config-"));
  const file = join(dir, "redirect.json");
  await writeFile(file, JSON.stringify(content));
  return file;
}

/** A TCP connection to 127.0.0.1:port from the local address `from` (any of 127.0.0.0/8). */
async function connectFrom(from: string, port: number): Promise<Socket> {
  const socket = netConnect({ host: "127.0.0.1", port, localAddress: from });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return socket;
}

describe("usbvirt redirect --config", () => {
  it("redirects the file's device where the file says, with the file's allowlist", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-redirect-disk-"));
    const file = await configFile({
      device: "storage",
      storageFile: join(dir, "disk.img"),
      storageSize: "1M",
      listen: "127.0.0.1:0",
      allowClients: ["127.0.0.2"],
      metrics: "127.0.0.1:0",
    });
    const r = redirectInProcess(["--config", file]);
    const server = await r.ready;
    expect(r.c.out).toMatch(/redirecting usbvirt mass storage 1209:0003 \(emulated storage\)/);
    expect((await stat(join(dir, "disk.img"))).size).toBe(1024 * 1024);
    expect(r.c.out).toMatch(/^status page: http:\/\/127\.0\.0\.1:\d+\/$/m);
    const port = server.address!.port;
    // 127.0.0.1 is not in the file's list: refused before anything is read.
    const outsider = await connectFrom("127.0.0.1", port);
    await new Promise<void>((resolve) => outsider.once("close", () => resolve()));
    await eventually(
      () => r.c.logger.matching("refused, not in the allowlist").length === 1,
      5000,
      "the refusal logged",
    );
    const g = await UsbredirClient.over(await connectFrom("127.0.0.2", port));
    expect(g.device?.vendorId).toBe(0x1209);
    const descriptor = await g.control({
      requestType: 0x80,
      request: 6,
      value: 0x0100,
      index: 0,
      length: 18,
    });
    expect(descriptor.status).toBe(RedirStatus.SUCCESS);
    g.close();
    expect(await r.stop()).toBe(0);
  });

  it("a --listen flag replaces the file's connect; other flags win key by key", async () => {
    const file = await configFile({ device: "loopback", connect: "127.0.0.1:1", quiet: false });
    const r = redirectInProcess(["--config", file, "--listen", "0", "--device", "keyboard"]);
    const server = await r.ready;
    expect(server.address).not.toBeNull();
    const g = await UsbredirClient.connect(server.address!.port);
    expect(g.device?.productId).toBe(2);
    g.close();
    expect(await r.stop()).toBe(0);
  });

  it.each([
    ["an unknown key", { device: "keyboard", listen: "0", bind: "0.0.0.0" }, 'unknown key "bind"'],
    ["a listen port out of range", { device: "keyboard", listen: "70000" }, "listen: must be [HOST:]PORT"],
    ["a connect without a port", { device: "keyboard", connect: "10.0.0.2" }, "connect: must be HOST:PORT"],
    ["a device list (serve's key)", { devices: ["keyboard"], listen: "0" }, 'unknown key "devices"'],
    ["a device of another type", { device: 7, listen: "0" }, "device: must be a selector string"],
    ["a bad usbip URL", { device: "usbip://h/x", listen: "0" }, 'device: "usbip://h/x" is not usbip://'],
    [
      "a bad allowlist entry",
      { device: "keyboard", listen: "0", allowClients: ["10.0.0.7/"] },
      "allowClients[0]: ",
    ],
    [
      "a bad storage size",
      { device: "storage", listen: "0", storageSize: "1x" },
      'storageSize: must be a size like "64M"',
    ],
  ])("refuses %s with exit 2, naming the file and the key", async (_, content, message) => {
    const file = await configFile(content);
    const c = capture();
    expect(await run(["redirect", "--config", file], c.io)).toBe(2);
    expect(c.err).toContain(`usbvirt redirect: config file ${file}: ${message}`);
  });

  it("says which key is missing or clashes, naming the file's key beside the flag", async () => {
    for (const [content, message] of [
      [{ listen: "0" }, "--device (device) SPEC is required"],
      [{ device: "keyboard" }, "give one of --listen [HOST:]PORT and --connect HOST:PORT"],
      [
        { device: "keyboard", listen: "0", connect: "127.0.0.1:1" },
        "--listen (listen) and --connect exclude each other",
      ],
      [
        { device: "keyboard", connect: "127.0.0.1:1", allowClients: ["127.0.0.1"] },
        "--allow-client (allowClients) applies to --listen only",
      ],
    ] as const) {
      const file = await configFile(content);
      const c = capture();
      expect(await run(["redirect", "--config", file], c.io)).toBe(2);
      expect(c.err).toContain(`usbvirt redirect: ${message}`);
    }
  });
});
