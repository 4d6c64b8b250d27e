/**
 * `serve`'s retries of a host device that failed while it stays plugged in (HostExports), on a fake clock:
 * the schedule (1, 2, 4 s), one log line per try, giving up after the third failed try or when the device
 * keeps failing as soon as a try brings it back, and an unplug ending the retries. The server and the
 * hotplug source are stand-ins that record what HostExports asks of them; the same behaviour with the real
 * server, libusb and a device under umockdev is in test/host/serve-retries.test.ts.
 */
import { EventEmitter } from "node:events";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { HostSelector } from "../../src/devices/host/select.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import { HostExports, type PluggedDevice } from "../../src/usbip-server/host-exports.js";
import type { UsbipServer } from "../../src/usbip-server/server.js";

const DEVICE: PluggedDevice = { vendorId: 0x1209, productId: 0x7301, deviceClass: 0xff, portPath: "1-1" };

/** Records each export (the time on the fake clock) and fails it while `refuse` is set. */
class Server extends EventEmitter {
  refuse = false;
  readonly exports: number[] = [];
  readonly exported = new Set<string>();
  async exportDevice(_spec: unknown, port: number) {
    this.exports.push(Date.now());
    if (this.refuse) throw new Error("interface 0: claim failed (libusb error -6)");
    this.exported.add(`1-${port}`);
    return { busid: `1-${port}` };
  }
  async withdraw(busid: string) {
    return this.exported.delete(busid);
  }
  /** What the engine's port-failed becomes: the device on `busid` failed (gone: it went away). */
  fail(busid: string, gone = false) {
    this.emit("device-failed", busid, "port worker crashed", gone);
  }
}

function rig(wants: { selector: HostSelector; port: number; exportedPath?: string }[], matchNew = false) {
  const server = new Server();
  const log = new CollectingLogger();
  let plugged: PluggedDevice[] = [DEVICE];
  let listener: ((type: "attach" | "detach", d: PluggedDevice) => void) | null = null;
  const exports = new HostExports({
    server: server as unknown as UsbipServer,
    wants,
    filter: { rules: [] },
    matchNew,
    freePorts: [2, 3],
    log,
    source: {
      watch(l) {
        listener = l;
        return () => {
          listener = null;
        };
      },
      list: async () => plugged,
    },
  });
  return {
    server,
    log,
    exports,
    /** Let the fake clock run `ms`, then wait for every event so far to be applied. */
    async wait(ms: number) {
      await vi.advanceTimersByTimeAsync(ms);
      await exports.settled();
    },
    async unplug() {
      plugged = [];
      listener?.("detach", DEVICE);
      await exports.settled();
    },
    async plug() {
      plugged = [DEVICE];
      listener?.("attach", DEVICE);
      await exports.settled();
    },
    tries: () => log.lines.filter((l) => / retry \d of 3 after a failure: /.test(l)),
  };
}

const wanted = () =>
  rig([{ selector: { vendorId: 0x1209, productId: 0x7301 }, port: 1, exportedPath: "1-1" }]);

describe("serve's retries of a host device that failed while plugged in", () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 0 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("tries again 1, 2 and 4 s apart, one log line per try, and exports it again once it works", async () => {
    const r = wanted();
    await r.exports.start();
    r.server.refuse = true;
    r.server.fail("1-1");
    await r.exports.settled();
    expect(r.server.exported.size).toBe(0); // withdrawn
    await r.wait(999);
    expect(r.server.exports).toEqual([]);
    await r.wait(1); // 1 s after the failure
    expect(r.server.exports).toEqual([1000]);
    await r.wait(1999);
    expect(r.server.exports).toHaveLength(1);
    r.server.refuse = false;
    await r.wait(1); // 2 s after the first try
    expect(r.server.exports).toEqual([1000, 3000]);
    expect([...r.server.exported]).toEqual(["1-1"]);
    expect(r.tries()).toEqual([
      "warn: host device 1209:7301 at 1-1 retry 1 of 3 after a failure: could not export it as 1-1: interface 0: claim failed (libusb error -6)",
      "info: host device 1209:7301 at 1-1 retry 2 of 3 after a failure: exported as 1-1",
    ]);
    await r.wait(120_000);
    expect(r.server.exports).toHaveLength(2); // back: nothing more is tried
    await r.exports.stop();
  });

  it("gives up after the third failed try (logged) and tries no more", async () => {
    const r = wanted();
    await r.exports.start();
    r.server.refuse = true;
    r.server.fail("1-1");
    await r.wait(7000);
    expect(r.server.exports).toEqual([1000, 3000, 7000]);
    expect(r.tries()).toHaveLength(3);
    expect(r.log.lines.at(-1)).toBe(
      "warn: host device 1209:7301 at 1-1: 3 tries after a failure failed; no more tries until it is plugged in again",
    );
    await r.wait(600_000);
    expect(r.server.exports).toHaveLength(3);
    // Plugged in again, it is exported as any plugged-in device is.
    r.server.refuse = false;
    await r.unplug();
    await r.plug();
    expect([...r.server.exported]).toEqual(["1-1"]);
    await r.exports.stop();
  });

  it("counts on when the device fails again soon after a try brought it back: no endless re-exports", async () => {
    const r = wanted();
    await r.exports.start();
    r.server.fail("1-1");
    for (const delay of [1000, 2000, 4000]) {
      await r.wait(delay);
      expect(r.server.exported.has("1-1")).toBe(true);
      r.server.fail("1-1"); // a port worker that dies each time the device is used
      await r.exports.settled();
    }
    expect(r.server.exports).toEqual([1000, 3000, 7000]);
    expect(r.log.lines.at(-1)).toBe(
      "warn: host device 1209:7301 at 1-1 failed again within 60 s of retry 3 bringing it back; no more tries until it is plugged in again",
    );
    await r.wait(600_000);
    expect(r.server.exports).toHaveLength(3);
    await r.exports.stop();
  });

  it("starts the count again for a device that stayed up a minute after a try brought it back", async () => {
    const r = wanted();
    await r.exports.start();
    r.server.fail("1-1");
    await r.wait(1000);
    await r.wait(60_000);
    r.server.fail("1-1");
    await r.wait(1000);
    expect(r.server.exports).toEqual([1000, 62_000]);
    expect(r.tries().map((l) => l.replace(/^.* (retry \d of 3) .*$/, "$1"))).toEqual([
      "retry 1 of 3",
      "retry 1 of 3",
    ]);
    await r.exports.stop();
  });

  it("ends the retries when the device is unplugged during the backoff (logged); plugged in again, it gets no stale try", async () => {
    const r = wanted();
    await r.exports.start();
    r.server.refuse = true;
    r.server.fail("1-1");
    await r.wait(1000); // try 1 fails; try 2 is due at 3 s
    await r.unplug();
    expect(r.log.lines.at(-1)).toBe(
      "info: host device 1209:7301 at 1-1 unplugged: retry 2 of 3 after a failure cancelled",
    );
    await r.plug(); // its export fails (still refused): a plug-in gets no retries of its own
    expect(r.server.exports).toEqual([1000, 1000]);
    r.server.refuse = false;
    await r.wait(600_000);
    expect(r.server.exports).toHaveLength(2);
    expect(r.tries()).toHaveLength(1);
    await r.exports.stop();
  });

  it("retries a --match-new device on a free port, and stops the timers on stop()", async () => {
    const r = rig([], true);
    await r.exports.start();
    await r.unplug();
    await r.plug();
    expect([...r.server.exported]).toEqual(["1-2"]);
    r.server.refuse = true;
    r.server.fail("1-2");
    await r.wait(1000);
    r.server.refuse = false;
    await r.wait(2000);
    expect([...r.server.exported]).toEqual(["1-2"]);
    expect(r.tries()).toEqual([
      "warn: host device 1209:7301 at 1-1 retry 1 of 3 after a failure: could not export it as 1-2: interface 0: claim failed (libusb error -6)",
      "info: host device 1209:7301 at 1-1 retry 2 of 3 after a failure: exported as 1-2",
    ]);
    r.server.fail("1-2");
    await r.exports.settled();
    await r.exports.stop();
    await r.wait(600_000);
    expect(r.server.exports).toHaveLength(3); // the plug and two tries
  });
});
