/**
 * `usbvirt serve` with host devices that come later (issue #14, item 1), through run() with a fake host
 * listing and a fake hotplug source: a selector that matches nothing yet no longer fails serve (it exited
 * 1 before); its bus id is kept, not listed until the device appears, and the log says it waits. A device
 * the filter denies is not exported when it appears. The real path (libusb, a device that comes and goes)
 * is tested under umockdev in test/host.
 */
import { describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { listRemote } from "../../src/usbip/client.js";
import type { HotplugSource, PluggedDevice } from "../../src/usbip-server/host-exports.js";
import type { UsbipServer } from "../../src/usbip-server/server.js";
import { capture } from "./helpers.js";

function fakeSource(
  present: readonly PluggedDevice[] = [],
): HotplugSource & { emit(type: "attach" | "detach", d: PluggedDevice): void } {
  let listener: ((type: "attach" | "detach", d: PluggedDevice) => void) | null = null;
  return {
    watch(l) {
      listener = l;
      return () => {
        listener = null;
      };
    },
    list: async () => present,
    emit: (type, d) => listener?.(type, d),
  };
}

async function serve(args: readonly string[], source: HotplugSource) {
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
  });
  const exit = run(["serve", "--port", "0", ...args], c.io);
  const server = await Promise.race([
    listening,
    exit.then((code) => {
      throw new Error(`serve exited ${code}: ${c.err}`);
    }),
  ]);
  return {
    server,
    c,
    stop: async () => {
      stop("SIGINT");
      return await exit;
    },
  };
}

describe("serve: host devices that are not plugged in yet", () => {
  it("a selector that matches nothing waits: serve runs, the bus id is kept and not listed", async () => {
    const { server, c, stop } = await serve(["--device", "1209:7301", "--device", "loopback"], fakeSource());
    try {
      const listed = await listRemote({ host: "127.0.0.1", port: server.address.port });
      // The loopback keeps bus id 1-2: the waiting device owns 1-1.
      expect(listed.map((d) => d.busid)).toEqual(["1-2"]);
      expect(c.logger.matching("waiting for host device 1209:7301 (bus id 1-1)")).toHaveLength(1);
    } finally {
      expect(await stop()).toBe(0);
    }
  });

  it("--match-new alone serves nothing until a device comes; a denied device that comes is not exported", async () => {
    const source = fakeSource();
    const { server, c, stop } = await serve(["--match-new", "--deny", "class=hid"], source);
    try {
      expect(await listRemote({ host: "127.0.0.1", port: server.address.port })).toEqual([]);
      source.emit("attach", {
        vendorId: 0x046d,
        productId: 0xc31c,
        deviceClass: 0,
        interfaceClasses: [3],
        portPath: "1-2",
      });
      // A hub is never exported either (the built-in rule).
      source.emit("attach", { vendorId: 0x05e3, productId: 0x0608, deviceClass: 9, portPath: "1-4" });
      // The events are applied in order, each logged: wait for both verdicts (the test timeout catches a hang).
      while (c.logger.matching("but the filter denies it").length < 2)
        await new Promise((r) => setImmediate(r));
      expect(await listRemote({ host: "127.0.0.1", port: server.address.port })).toEqual([]);
      expect(
        c.logger.matching("but the filter denies it: rule 1: deny class=0x03 (class 0x03)"),
      ).toHaveLength(1);
      expect(c.logger.matching("but the filter denies it: the built-in rule: deny hubs")).toHaveLength(1);
    } finally {
      expect(await stop()).toBe(0);
    }
  });

  it("--match-new is for devices plugged in from now on: one already there at start is left alone", async () => {
    const stick = {
      vendorId: 0x0781,
      productId: 0x5567,
      deviceClass: 0,
      interfaceClasses: [8],
      portPath: "1-4.1",
    };
    const { server, c, stop } = await serve(["--match-new"], fakeSource([stick]));
    try {
      expect(await listRemote({ host: "127.0.0.1", port: server.address.port })).toEqual([]);
      expect(c.logger.matching("1-4.1")).toEqual([]);
    } finally {
      expect(await stop()).toBe(0);
    }
  });

  it("--match-new without an allow rule says at start that every device plugged in later will be exported", async () => {
    const warning =
      "warn: --match-new with no allow rule: every host device plugged in from now on will be exported, " +
      "except hubs and what a deny rule refuses (narrow it with --allow SEL, or an allow rule in --filter)";
    for (const args of [["--match-new"], ["--match-new", "--deny", "class=hid"]]) {
      const { c, stop } = await serve(args, fakeSource());
      expect(await stop()).toBe(0);
      expect(c.logger.matching("--match-new"), args.join(" ")).toEqual([warning]);
    }
    for (const args of [
      ["--match-new", "--filter", "deny class=hid|allow 1209:*"],
      ["--match-new", "--filter", "0x03,-1,-1,-1,0|-1,0x1209,-1,-1,1"],
    ]) {
      const { c, stop } = await serve(args, fakeSource());
      expect(await stop()).toBe(0);
      expect(c.logger.matching("--match-new"), args.join(" ")).toEqual([]);
    }
  });

  it("--match-new without a host listing (no libusb) says so and exits 1, instead of serving nothing", async () => {
    const c = capture({
      listHostDevices: async () => {
        throw new Error("libusb could not be loaded");
      },
    });
    expect(await run(["serve", "--port", "0", "--match-new"], c.io)).toBe(1);
    expect(c.err).toBe(
      "usbvirt serve: --match-new needs the host's device list, which failed: libusb could not be loaded\n",
    );
  });
});
