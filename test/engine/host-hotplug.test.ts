/**
 * HostHotplug decides on error codes, not message text: a busy port (another
 * attach got there first) moves it to the next port, an already-empty port on
 * unplug is not an error, and any other failure is reported, whatever its
 * message says. libusb's watcher is replaced by a fake that this test drives;
 * the attaches and detaches go to a real Connection (emulated loopback devices
 * stand in for the host devices), so the busy / empty errors come from the
 * backend worker, across its thread boundary.
 */
import { once } from "node:events";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { HostDeviceInfo, HotplugEvent } from "../../src/devices/host/index.js";
import { Connection } from "../../src/engine/connection.js";
import { HostHotplug } from "../../src/engine/host-hotplug.js";
import { InvalidOptionError } from "../../src/util/errors.js";

const fake = vi.hoisted(() => ({ listener: null as ((e: HotplugEvent) => void) | null }));

vi.mock("../../src/devices/host/index.js", async (importOriginal) => {
  const original = await importOriginal<typeof import("../../src/devices/host/index.js")>();
  class FakeWatcher {
    constructor(listener: (e: HotplugEvent) => void) {
      fake.listener = listener;
    }
    start(): void {}
    stop(): void {}
  }
  return { ...original, HostHotplugWatcher: FakeWatcher, listHostDevices: async () => [] };
});

const device = (portPath: string): HostDeviceInfo => ({
  vendorId: 0x1234,
  productId: 0x5678,
  busNumber: 1,
  deviceAddress: 5,
  portPath,
  speed: "high",
  deviceClass: 0,
});

let conn: Connection | null = null;
afterEach(async () => {
  await conn?.close();
  conn = null;
});

/** The Connection surface HostHotplug uses, over a real connection; `detach` can be overridden. */
function facade(real: Connection, detach?: (port: number) => Promise<void>): Connection {
  return {
    handles: real.handles,
    // No frontend view: HostHotplug cannot skip a taken port by looking, the backend must refuse it.
    frontend: null,
    on: real.on.bind(real),
    off: real.off.bind(real),
    attach: (port: number) => real.attach(port, { kind: "emulated", name: "loopback" }),
    detach: detach ?? ((port: number) => real.detach(port)),
  } as unknown as Connection;
}

describe("HostHotplug", () => {
  it("moves to the next port when the backend says ERR_USBVIRT_PORT_BUSY, and takes ERR_USBVIRT_PORT_EMPTY on unplug as done", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    await conn.attach(1, { kind: "emulated", name: "loopback" }); // port 1 is taken behind HostHotplug's back
    const hotplug = new HostHotplug(facade(conn), { filter: {} });
    const logs: string[] = [];
    hotplug.on("log", (m: string) => logs.push(m));
    await hotplug.start();

    const attached = once(hotplug, "attached");
    fake.listener!({ type: "attach", device: device("1-1") });
    expect(await attached).toEqual([2, device("1-1")]);

    // The port worker saw the unplug first: the port is already empty when libusb's event comes.
    await conn.detach(2);
    const detached = once(hotplug, "detached");
    fake.listener!({ type: "detach", device: device("1-1") });
    expect(await detached).toEqual([2, device("1-1")]);
    expect(logs).toEqual([]);
    await hotplug.stop();
  });

  it("reports a detach failure with another code even when its message reads like an empty port", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    const hotplug = new HostHotplug(
      facade(conn, async () => {
        throw new InvalidOptionError("port 1 has no device driver that can be unbound");
      }),
      { filter: {} },
    );
    await hotplug.start();
    const attached = once(hotplug, "attached");
    fake.listener!({ type: "attach", device: device("1-2") });
    expect(await attached).toEqual([1, device("1-2")]);

    // Whichever comes first: the failure logged (right), or a detach reported (the old message match).
    const outcome = Promise.race([
      once(hotplug, "log").then(([m]) => `log: ${String(m)}`),
      once(hotplug, "detached").then(() => "detached"),
    ]);
    fake.listener!({ type: "detach", device: device("1-2") });
    expect(await outcome).toBe(
      "log: hotplug detach of 1-2: InvalidOptionError: port 1 has no device driver that can be unbound",
    );
    await hotplug.stop();
  });
});
