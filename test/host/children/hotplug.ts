/**
 * Child process under test/host/children/testbed.py (interactive umockdev):
 * a Connection with HostHotplug. The device is attached to port 1 on start,
 * a bulk IN is left in flight, then (STAGE plugged) the testbed unplugs it:
 * libusb's detach event makes HostHotplug detach the port, the URB fails, and
 * the frontend sees the port disconnect. Then (STAGE unplugged) the device
 * comes back and is attached again. Prints `VERDICT <json>`.
 */
import { Connection } from "../../../src/engine/connection.js";
import { HostHotplug } from "../../../src/engine/host-hotplug.js";
import { GuestUsbDriver } from "../../../src/guest/guest-driver.js";
import type { DevAddr, EndpointNum, PortNum } from "../../../src/urb/types.js";
import { eventually } from "../../support/eventually.js";
import { exitWithVerdict } from "../../support/verdict.js";
import { PID, VID } from "../fixture.js";
import { inDevice } from "../scenarios.js";

const P = 1 as PortNum;

/** until(what, check): eventually with the child's 20 s default and the name first. */
const until = (what: string, check: () => boolean | Promise<boolean>, ms = 20_000) =>
  eventually(check, ms, what);

/** What the child saw, reported with the verdict either way (a failure says where it stopped). */
const events: string[] = [];

async function main(): Promise<Record<string, unknown>> {
  const conn = await Connection.create({ ports: 2, memory: 1024 });
  conn.on("port-failed", (port: number, why: string) => events.push(`port-failed ${port} ${why}`));
  const hcd = conn.frontend!;
  const portChanges: boolean[] = [];
  hcd.on("portChange", (s: { connected: boolean }) => portChanges.push(s.connected));
  const hotplug = new HostHotplug(conn, { filter: { allow: [{ vendorId: VID, productId: PID }] } });
  hotplug.on("attached", (port: number, info: { portPath: string }) =>
    events.push(`attached ${port} ${info.portPath}`),
  );
  hotplug.on("detached", (port: number, info: { portPath: string }) =>
    events.push(`detached ${port} ${info.portPath}`),
  );
  hotplug.on("log", (m: string) => events.push(`log ${m}`));
  try {
    await hotplug.start();
    await until("port 1 connected", () => hcd.portStatus(P).connected);
    // Reset and address the device (both handled without it), then leave a bulk IN in flight.
    const guest = new GuestUsbDriver(hcd, conn.handles);
    await hcd.resetPort(P);
    await guest.control(P, 0 as DevAddr, { bmRequestType: 0, bRequest: 5, wValue: 5, wIndex: 0, wLength: 0 });
    const pending = hcd.submit({
      type: "bulk",
      port: P,
      device: 5 as DevAddr,
      endpoint: 1 as EndpointNum,
      directionIn: true,
      buffer: [guest.buffers.allocate(64)],
    });
    await inDevice(conn, 1); // the IN is in libusb before the parent unplugs
    process.stdout.write("STAGE plugged\n");
    const inFlight = await pending;
    await until("port 1 disconnected", () => !hcd.portStatus(P).connected);
    await until("detached event", () => events.some((e) => e.startsWith("detached")));
    process.stdout.write("STAGE unplugged\n");
    await until("re-attached", () => events.filter((e) => e.startsWith("attached")).length === 2);
    await until("port 1 connected again", () => hcd.portStatus(P).connected);
    return { events: [...events], inFlightStatus: inFlight.status, portChanges: [...portChanges] };
  } finally {
    await hotplug.stop();
    await conn.close();
  }
}

const watchdog = setTimeout(() => {
  exitWithVerdict({ ok: false, error: "timed out in the child" }, 2);
}, 25_000);
main().then(
  (v) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: true, ...v }, 0);
  },
  (err: unknown) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: false, error: String(err), events }, 1);
  },
);
