/**
 * Root-hub ports driven by conn events and port resets: connect sets
 * C_CONNECTION with the speed, reset goes over the URB ring as
 * SET_FEATURE(PORT_RESET) and ends enabled at address 0 with C_RESET,
 * SET_ADDRESS moves the port's address, disconnect fails the port's URBs
 * with -ENODEV exactly once even though the backend answers them too.
 */
import { describe, expect, it } from "vitest";
import { PortResetError } from "../../src/frontend/controller.js";
import type { PortStatus, UrbCompletion } from "../../src/frontend/types.js";
import { RingFault } from "../../src/rings/faults.js";
import { ENODEV, OK } from "../../src/urb/status.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { port } from "../support/brands.js";
import { bulk, enumerate, pump, rig, seg } from "./support.js";

describe("root hub", () => {
  it("reports a connect with its speed and a connection change until cleared", async () => {
    const r = rig();
    const changes: PortStatus[] = [];
    r.hc.on("portChange", (s) => changes.push(s));
    r.fake.plug(2, UsbSpeed.FULL);
    await pump(r);
    expect(r.hc.portStatus(2)).toMatchObject({
      connected: true,
      enabled: false,
      speed: UsbSpeed.FULL,
      address: 0,
      changes: { connection: true, enable: false, reset: false },
    });
    expect(changes.map((s) => s.port)).toEqual([2]);
    r.hc.clearPortChange(2, "connection");
    expect(r.hc.portStatus(2).changes.connection).toBe(false);
  });

  it("resets a port with SET_FEATURE(PORT_RESET) on the URB ring and ends enabled at address 0", async () => {
    const r = rig();
    await enumerate(r, 1, 7);
    expect(r.hc.portStatus(1).address).toBe(7);
    r.hc.clearPortChange(1, "reset");
    const reset = r.hc.resetPort(1);
    expect(r.hc.portStatus(1)).toMatchObject({ resetting: true, enabled: false });
    await pump(r);
    await reset;
    const sent = r.fake.requests.filter((q) => q.kind === "control").at(-1);
    expect(sent).toMatchObject({
      kind: "control",
      port: 1,
      device: 7, // the port's address before the reset
      endpoint: 0,
      direction: 0,
      bufferLength: 0,
      setup: { bmRequestType: 0x23, bRequest: 3, wValue: 4, wIndex: 1, wLength: 0 },
    });
    expect(r.hc.portStatus(1)).toMatchObject({
      connected: true,
      enabled: true,
      resetting: false,
      address: 0,
      changes: { reset: true },
    });
    // The backend's "reset done" conn event arrived after the answer: it must not set C_RESET again.
    r.hc.clearPortChange(1, "reset");
    await pump(r);
    expect(r.hc.portStatus(1).changes.reset).toBe(false);
    expect(r.hc.portStatus(1).enabled).toBe(true);
  });

  it("ends a reset from the conn event when it arrives before the answer", async () => {
    const r = rig();
    r.fake.plug(3);
    await pump(r);
    r.fake.resetEventFirst = true;
    let resolved = false;
    const reset = r.hc.resetPort(3).then(() => {
      resolved = true;
    });
    r.fake.step(); // the conn event only
    r.hc.poll();
    expect(r.hc.portStatus(3)).toMatchObject({ enabled: true, resetting: false, changes: { reset: true } });
    expect(resolved).toBe(false);
    r.hc.clearPortChange(3, "reset");
    await pump(r); // now the answer
    await reset;
    expect(r.hc.portStatus(3)).toMatchObject({ enabled: true, resetting: false, changes: { reset: false } });
  });

  it("rejects a reset of an empty port with the backend's status", async () => {
    const r = rig();
    const outcome = r.hc.resetPort(4).catch((e: unknown) => e);
    await pump(r);
    const error = await outcome;
    expect(error).toBeInstanceOf(PortResetError);
    expect(error).toMatchObject({ status: ENODEV, code: "ERR_USBVIRT_PORT_RESET" });
    expect(r.hc.portStatus(4)).toMatchObject({ resetting: false, enabled: false });
  });

  it("disables a port locally", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    r.hc.disablePort(1);
    expect(r.hc.portStatus(1)).toMatchObject({ connected: true, enabled: false });
  });

  it("fails every URB of a port that disconnects with -ENODEV exactly once, though the backend answers them too", async () => {
    const r = rig();
    await enumerate(r, 1, 3);
    await enumerate(r, 2, 4);
    const calls = new Map<number, UrbCompletion[]>();
    const track = (i: number) => (c: UrbCompletion) => calls.set(i, [...(calls.get(i) ?? []), c]);
    // Three held INs on port 1, one on port 2.
    for (let i = 0; i < 3; i++) r.hc.submitWithCallback(bulk(1, 3, 1, true, [seg(i * 64, 64)]), track(i));
    r.hc.submitWithCallback(bulk(2, 4, 1, true, [seg(1000, 64)]), track(9));
    await pump(r);
    expect(r.fake.heldCount).toBe(4);

    r.fake.unplug(1); // conn event, then the held URBs answered -ENODEV
    await pump(r);
    for (let i = 0; i < 3; i++) expect(calls.get(i)?.map((c) => c.status)).toEqual([ENODEV]);
    expect(calls.has(9)).toBe(false);
    expect(r.hc.portStatus(1)).toMatchObject({ connected: false, enabled: false, address: 0, speed: 0 });
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries - 1); // only port 2's URB holds a grant
    expect(r.fake.ring.fault).toBe(RingFault.NONE);
    expect(r.hc.isConnected).toBe(true);
  });

  it("keeps the grants of a disconnected port's URBs until the backend answers them", async () => {
    const r = rig();
    await enumerate(r, 1, 3);
    const calls: UrbCompletion[] = [];
    r.hc.submitWithCallback(bulk(1, 3, 1, true, [seg(0, 64)]), (c) => calls.push(c));
    await pump(r);
    const id = r.fake.requests.at(-1)!.id;
    // Only the conn event so far; the backend still has the buffer mapped.
    r.fake.devices.delete(1);
    r.fake.conn.postEvent({ port: 1, speed: UsbSpeed.NONE });
    r.fake.conn.push();
    r.hc.poll();
    await pump(r);
    expect(calls.map((c) => c.status)).toEqual([ENODEV]);
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries - 1);
    r.fake.answerHeld(id, OK, 64);
    r.hc.poll();
    expect(calls).toHaveLength(1);
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
    expect(r.hc.isConnected).toBe(true);
  });

  it("validates port arguments eagerly", () => {
    const r = rig();
    expect(() => r.hc.portStatus(0)).toThrow(/port must be an integer in \[1, 4\]/);
    expect(() => r.hc.resetPort(5)).toThrow(/port must be/);
    expect(() => r.hc.clearPortChange(port(1), "bogus" as "reset")).toThrow(/which must be/);
  });
});
