/**
 * End to end under races and faults: unlink racing completion, hotplug
 * while traffic runs, a port worker killed or hung, the backend restarted.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { UrbCompletion } from "../../src/frontend/types.js";
import { ECONNRESET, ENODEV, ENOENT, ESHUTDOWN, OK } from "../../src/urb/status.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { addr, port } from "../support/brands.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { type Rig, rig } from "./helpers.js";

let r: Rig | null = null;
afterEach(async () => {
  await r?.close();
  r = null;
});

describe("unlink", () => {
  it("gives every URB exactly one completion when unlink races completion, 10 000 times", async () => {
    r = await rig();
    const { hcd, guest, conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    const inRange = guest.buffers.allocate(64);
    const outRange = guest.buffers.allocate(64);
    guest.bytes(outRange).set(pattern(64, 3));
    let completions = 0;
    let cancelled = 0;
    let finished = 0;
    let queued = 0; // OUT messages the device holds because their IN was cancelled
    const iterations = 10_000;
    for (let i = 0; i < iterations; i++) {
      const counts = new Map<object, number>();
      const inUrb = {
        type: "bulk" as const,
        port: port(1),
        device: addr(2),
        endpoint: 1 as EndpointNum,
        directionIn: true,
        buffer: [inRange],
      };
      const inDone = new Promise<UrbCompletion>((resolve) =>
        hcd.submitWithCallback(inUrb, (c) => {
          counts.set(inUrb, (counts.get(inUrb) ?? 0) + 1);
          completions++;
          resolve(c);
        }),
      );
      // Feed the IN (unless a message is already queued), and unlink it at once: they race.
      const feed =
        queued > 0
          ? Promise.resolve()
          : hcd
              .submit({
                type: "bulk",
                port: port(1),
                device: addr(2),
                endpoint: 1 as EndpointNum,
                directionIn: false,
                buffer: [outRange],
              })
              .then((c) => expect(c.status).toBe(OK));
      const unlinked = hcd.unlink(inUrb);
      const [c, u] = await Promise.all([inDone, unlinked, feed]);
      if (c.status === OK) {
        finished++;
        if (queued > 0) queued--;
        expect([OK, ENOENT]).toContain(u);
      } else {
        expect(c.status).toBe(ECONNRESET);
        cancelled++;
        if (queued === 0) queued++;
      }
      expect(counts.get(inUrb)).toBe(1);
    }
    // Let any stray completion show itself before counting.
    await new Promise((res) => setTimeout(res, 20));
    expect(completions).toBe(iterations);
    expect(finished + cancelled).toBe(iterations);
    expect(cancelled).toBeGreaterThan(0);
    expect(hcd.stats().inFlight).toBe(0);
  }, 120_000);
});

describe("hotplug and failures", () => {
  it("attaches and detaches a device while another port moves data", async () => {
    r = await rig();
    const { guest, conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    let running = true;
    let moved = 0;
    const traffic = (async () => {
      let i = 0;
      while (running) {
        const data = pattern(4096, ++i);
        await guest.transferOut(port(1), addr(2), 1, data);
        const back = await guest.transferIn(port(1), addr(2), 1, 4096);
        expect(Buffer.compare(back, data)).toBe(0);
        moved++;
      }
    })();
    for (let round = 0; round < 5; round++) {
      const before = moved;
      await conn.attach(2, { kind: "emulated", name: "storage", options: { sizeBytes: 1024 * 1024 } });
      await guest.enumerate(port(2), addr(3));
      await conn.detach(2);
      await eventually(() => !r!.hcd.portStatus(port(2)).connected, 5000, "port 2 disconnect");
      // Port 1 keeps moving data across every hotplug (an attach is now quicker than an echo under load).
      await eventually(() => moved > before, 5000, `port 1 traffic during round ${round}`);
    }
    running = false;
    await traffic;
    expect(moved).toBeGreaterThanOrEqual(5);
  });

  it("contains a port worker crash to its port: its URBs fail, the port disconnects, others go on", async () => {
    r = await rig();
    const { hcd, guest, conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback", placement: "worker" });
    await conn.attach(2, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    await guest.enumerate(port(2), addr(2));
    const range = guest.buffers.allocate(512);
    const pending = hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(2),
      endpoint: 1 as EndpointNum,
      directionIn: true,
      buffer: [range],
    });
    await new Promise((res) => setTimeout(res, 20));
    await conn.killPort(1);
    const c = await pending;
    expect([ESHUTDOWN, ENODEV]).toContain(c.status);
    await eventually(() => !hcd.portStatus(port(1)).connected, 5000, "port 1 disconnect");
    const data = pattern(1000, 5);
    await guest.transferOut(port(2), addr(2), 1, data);
    expect(Buffer.compare(await guest.transferIn(port(2), addr(2), 1, 1000), data)).toBe(0);
    const after = await hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(2),
      endpoint: 1 as EndpointNum,
      directionIn: false,
      buffer: [range],
    });
    expect(after.status).toBe(ENODEV);
  });

  it("fails every URB with -ESHUTDOWN when the backend restarts, then works again with the same frontend", async () => {
    r = await rig();
    const { hcd, guest, conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    const range = guest.buffers.allocate(512);
    const pending = hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(2),
      endpoint: 1 as EndpointNum,
      directionIn: true,
      buffer: [range],
    });
    await new Promise((res) => setTimeout(res, 20));
    await conn.restartBackend();
    expect((await pending).status).toBe(ESHUTDOWN);
    // The device comes back on its port (re-attached by the control plane) and enumerates afresh.
    await guest.enumerate(port(1), addr(6));
    const data = pattern(2048, 8);
    await guest.transferOut(port(1), addr(6), 1, data);
    expect(Buffer.compare(await guest.transferIn(port(1), addr(6), 1, 2048), data)).toBe(0);
    expect(conn.frontend).toBe(hcd);
  });
});

describe("hung port worker", () => {
  it("cuts off a port whose worker stops turning its event loop, and only that port", async () => {
    r = await rig({ hungPortMs: 400 });
    const { hcd, guest, conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback", placement: "worker" });
    await conn.attach(2, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    await guest.enumerate(port(2), addr(2));
    const failed = new Promise<[number, string, boolean]>((res) =>
      conn.once("port-failed", (p: number, why: string, gone: boolean) => res([p, why, gone])),
    );
    const range = guest.buffers.allocate(512);
    const pending = hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(2),
      endpoint: 1 as EndpointNum,
      directionIn: true,
      buffer: [range],
    });
    await conn.freezePort(1, 5000);
    const [failedPort, why, gone] = await failed;
    expect(failedPort).toBe(1);
    expect(why).toMatch(/hung/);
    expect(gone).toBe(false); // a hung worker is a failure, not a device that went away
    expect([ESHUTDOWN, ENODEV]).toContain((await pending).status);
    await eventually(() => !hcd.portStatus(port(1)).connected, 5000, "port 1 disconnect");
    const data = pattern(777, 1);
    await guest.transferOut(port(2), addr(2), 1, data);
    expect(Buffer.compare(await guest.transferIn(port(2), addr(2), 1, 777), data)).toBe(0);
  });

  it("refuses to freeze a device on the backend's own thread, and a placement a device cannot have", async () => {
    r = await rig();
    const { conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await expect(conn.freezePort(1, 100)).rejects.toThrow(/runs on the backend thread/);
    await expect(
      conn.attach(2, { kind: "usbip", host: "127.0.0.1", busid: "1-1", placement: "backend" } as never),
    ).rejects.toThrow(/always run on a port worker/);
    await expect(
      conn.attach(2, { kind: "emulated", name: "loopback", placement: "elsewhere" } as never),
    ).rejects.toThrow(/placement must be 'backend' or 'worker'/);
  });
});
