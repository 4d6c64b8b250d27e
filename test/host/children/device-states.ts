/**
 * Child process under test/host/children/testbed.py (interactive umockdev) with test/host/states-fixture.ts's
 * two-configuration device: the whole engine (frontend → backend → port worker → HostUsbDevice → libusb) on
 * port 1, driven by a guest, and after each step the ioctls that reached the device (the testbed's
 * USBVIRT_TESTBED_LOG):
 *   open        conn.attach: kernel driver check / detach, claims
 *   enumerate   the guest's reset, descriptors, address, SET_CONFIGURATION(1) (already active: no-op)
 *   reset       a port reset after traffic
 *   config2     SET_CONFIGURATION(2): release, set, (driver check / detach,) claim both interfaces
 *   config1     SET_CONFIGURATION(1) back
 *   altsetting  SET_INTERFACE(0, 1), then (0, 0)
 *   detach      conn.detach: release, kernel driver re-attached
 * and a bulk echo after the reset, on configuration 2 and on alternate setting 1.
 * Prints `VERDICT <json>`.
 */
import { readFileSync } from "node:fs";
import { Connection } from "../../../src/engine/connection.js";
import { GuestUsbDriver } from "../../../src/guest/guest-driver.js";
import type { DevAddr, PortNum } from "../../../src/urb/types.js";
import { exitWithVerdict } from "../../support/verdict.js";
import { VID } from "../fixture.js";
import { STATES_PID } from "../states-fixture.js";

const P = 1 as PortNum;
const A = 7 as DevAddr;
const logFile = process.env.USBVIRT_TESTBED_LOG ?? "";
let seen = 0;

/** The ioctl lines the device received since the last call (written before each ioctl returned). */
function ioctls(): string[] {
  const lines = readFileSync(logFile, "utf8").split("\n").filter(Boolean);
  const fresh = lines.slice(seen);
  seen = lines.length;
  return fresh;
}

async function main(): Promise<Record<string, unknown>> {
  if (logFile === "") throw new Error("USBVIRT_TESTBED_LOG is not set");
  const conn = await Connection.create({ ports: 1, memory: 1024 });
  const steps: Record<string, string[]> = {};
  try {
    ioctls();
    await conn.attach(1, { kind: "host", vendorId: VID, productId: STATES_PID });
    steps.open = ioctls();
    const hcd = conn.frontend!;
    const guest = new GuestUsbDriver(hcd, conn.handles);
    const device = await guest.enumerate(P, A);
    steps.enumerate = ioctls();
    const request = (bRequest: number, wValue: number, wIndex = 0, bmRequestType = 0) =>
      guest.control(P, A, { bmRequestType, bRequest, wValue, wIndex, wLength: 0 });
    const echo = async (seed: number, size: number) => {
      const data = Uint8Array.from({ length: size }, (_, i) => (i * 13 + seed) & 0xff);
      await guest.transferOut(P, A, 2, data);
      return Buffer.compare(await guest.transferIn(P, A, 1, size), data) === 0;
    };

    await hcd.resetPort(P);
    steps.reset = ioctls();
    await guest.control(P, 0 as DevAddr, { bmRequestType: 0, bRequest: 5, wValue: A, wIndex: 0, wLength: 0 }); // SET_ADDRESS again after the reset (virtual)
    const echoAfterReset = await echo(1, 64);
    ioctls();

    await request(9, 2);
    steps.config2 = ioctls();
    const echoConfig2 = await echo(2, 512);
    ioctls();

    await request(9, 1);
    steps.config1 = ioctls();

    await request(11, 1, 0, 0x01); // SET_INTERFACE(interface 0, alternate 1)
    steps.altsetting = ioctls();
    const echoAlt1 = await echo(3, 64);
    ioctls();
    await request(11, 0, 0, 0x01);
    steps.altsetting.push(...ioctls());

    await conn.detach(1);
    steps.detach = ioctls();
    return { productId: device.productId, steps, echoAfterReset, echoConfig2, echoAlt1 };
  } finally {
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
    exitWithVerdict({ ok: false, error: String(err), log: logFile ? readFileSync(logFile, "utf8") : "" }, 1);
  },
);
