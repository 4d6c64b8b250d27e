/**
 * HostHotplug decides on error codes, not message text: a busy port (another
 * attach got there first) moves it to the next port, an already-empty port on
 * unplug is not an error, and any other failure is reported, whatever its
 * message says. libusb's watcher is replaced by a fake that this test drives;
 * the attaches and detaches go to a real Connection (emulated loopback devices
 * stand in for the host devices), so the busy / empty errors come from the
 * backend worker, across its thread boundary. It also judges devices with serve's
 * filter rules, and still takes the older allow / deny selector lists.
 */
import { once } from "node:events";
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { judge, parseRules } from "../../src/devices/host/filter.js";
import {
  type HostDeviceInfo,
  type HostFilter,
  type HostSelector,
  type HotplugEvent,
  passesFilter,
} from "../../src/devices/host/index.js";
import { Connection } from "../../src/engine/connection.js";
import { HostHotplug, rulesOf } from "../../src/engine/host-hotplug.js";
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

describe("HostHotplug's filter", () => {
  const hid = { ...device("1-3"), interfaceClasses: [0x03] };
  const vendor = { ...device("1-4"), interfaceClasses: [0xff] };
  const hub = { ...device("1-5"), deviceClass: 9 };

  /** Feed `denied` then `allowed`; events apply in order, so once `allowed` is attached `denied` was judged. */
  async function judged(
    filter: ConstructorParameters<typeof HostHotplug>[1]["filter"],
    denied: HostDeviceInfo,
    allowed: HostDeviceInfo,
  ) {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    const hotplug = new HostHotplug(facade(conn), { filter });
    const logs: string[] = [];
    const ports: string[] = [];
    hotplug.on("log", (m: string) => logs.push(m));
    hotplug.on("attached", (port: number, info: HostDeviceInfo) => ports.push(`${port} ${info.portPath}`));
    await hotplug.start();
    const attached = once(hotplug, "attached");
    fake.listener!({ type: "attach", device: denied });
    fake.listener!({ type: "attach", device: allowed });
    await attached;
    await hotplug.stop();
    return { logs, ports, devices: [...hotplug.devices.keys()] };
  }

  it("takes filter rules: a device with a HID interface is refused (logged with the rule), a vendor one attached", async () => {
    const r = await judged({ rules: parseRules("deny class=hid|allow 1234:*") }, hid, vendor);
    expect(r.ports).toEqual(["1 1-4"]);
    expect(r.devices).toEqual(["1-4"]);
    expect(r.logs).toEqual(["host device 1-3 is denied by the filter: rule 1: deny class=0x03 (class 0x03)"]);
  });

  it("denies hubs unless a rule names class 9", async () => {
    const refused = await judged({ rules: parseRules("allow *") }, hub, vendor);
    expect(refused.ports).toEqual(["1 1-4"]);
    expect(refused.logs).toEqual([
      "host device 1-5 is denied by the filter: the built-in rule: deny hubs (class 0x09)",
    ]);
    await conn?.close();
    conn = null;
    const allowed = await judged({ rules: parseRules("allow class=hub") }, vendor, hub);
    expect(allowed.ports).toEqual(["1 1-5"]); // and the vendor device, named by no allow rule, quietly not
    expect(allowed.logs).toEqual([]);
  });

  it("still takes allow / deny selector lists (deny wins)", async () => {
    const r = await judged({ allow: [{ vendorId: 0x1234 }], deny: [{ busPort: "1-3" }] }, hid, vendor);
    expect(r.ports).toEqual(["1 1-4"]);
    expect(r.logs).toEqual(["host device 1-3 is denied by the filter: rule 1: deny path=1-3 (class 0x03)"]);
  });

  it("rulesOf(selector lists) decides as passesFilter did, for every device that is not a hub", () => {
    const selector = fc.record(
      {
        vendorId: fc.constantFrom(0x1234, 0x1209),
        productId: fc.constantFrom(0x5678, 0x0001),
        busPort: fc.constantFrom("1-1", "1-2"),
        serial: fc.constantFrom("A", "B"),
      },
      { requiredKeys: [] },
    ) as fc.Arbitrary<HostSelector>;
    const filter = fc.record(
      { allow: fc.array(selector, { maxLength: 3 }), deny: fc.array(selector, { maxLength: 3 }) },
      { requiredKeys: [] },
    ) as fc.Arbitrary<HostFilter>;
    const dev = fc.record({
      vendorId: fc.constantFrom(0x1234, 0x1209),
      productId: fc.constantFrom(0x5678, 0x0001),
      portPath: fc.constantFrom("1-1", "1-2"),
      serial: fc.constantFrom("A", "B", undefined),
      deviceClass: fc.constantFrom(0, 3, 0xff),
      interfaceClasses: fc.array(fc.constantFrom(3, 8, 0xff), { maxLength: 2 }),
    });
    fc.assert(
      fc.property(filter, dev, (f, d) => {
        expect(judge(rulesOf(f), d).allowed).toBe(passesFilter(d, f));
      }),
      { numRuns: 2000 },
    );
  });
});
