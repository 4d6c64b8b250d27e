/**
 * Error classes, codes and causes across the real thread boundaries of a
 * connection: main thread ⇄ backend worker (comlink) ⇄ port worker (startup
 * message). Before src/util/error-wire.ts, comlink delivered a plain Error:
 * no code, no class, no cause. Also: a failed guest transfer names its status.
 */
import { afterEach, describe, expect, it } from "vitest";
import { BackendPortError } from "../../src/backend/backend-host.js";
import { PortStartError } from "../../src/backend/port-link.js";
import { Connection } from "../../src/engine/connection.js";
import { GuestTransferError, GuestUsbDriver } from "../../src/guest/guest-driver.js";
import { EPIPE } from "../../src/urb/status.js";
import type { DevAddr, PortNum } from "../../src/urb/types.js";
import { InvalidOptionError, UsbvirtError } from "../../src/util/errors.js";

let conn: Connection | null = null;
afterEach(async () => {
  await conn?.close();
  conn = null;
});

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection");
}

describe("errors from the backend worker", () => {
  it("a second attach on port 1 rejects with BackendPortError ERR_USBVIRT_PORT_BUSY, class and stack kept", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    const err = await rejection(conn.attach(1, { kind: "emulated", name: "loopback" }));
    expect(err).toBeInstanceOf(BackendPortError);
    expect(err).toBeInstanceOf(UsbvirtError);
    const e = err as BackendPortError;
    expect(e.code).toBe("ERR_USBVIRT_PORT_BUSY");
    expect(e.name).toBe("BackendPortError");
    expect(e.message).toBe("port 1 already has a device");
    // The stack is the backend worker's, where the error was thrown.
    expect(e.stack).toContain("backend-host");
  });

  it("detach of an empty port rejects with ERR_USBVIRT_PORT_EMPTY", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    const err = await rejection(conn.detach(2));
    expect(err).toBeInstanceOf(BackendPortError);
    expect((err as BackendPortError).code).toBe("ERR_USBVIRT_PORT_EMPTY");
  });

  // A spec the schema accepts (so the error comes from the device, not from attach's own check) but
  // that cannot open: a disk image in a directory that does not exist.
  const missingDisk = (placement: "worker" | "backend") =>
    ({
      kind: "emulated",
      name: "storage",
      placement,
      options: { file: "/nonexistent-usbvirt-dir/disk.img", sizeBytes: 1024 * 1024 },
    }) as const;

  it("a device that fails to open on a port worker arrives as PortStartError with the device's error as cause, two threads away", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    const err = await rejection(conn.attach(2, missingDisk("worker")));
    expect(err).toBeInstanceOf(PortStartError);
    expect(err).toBeInstanceOf(UsbvirtError);
    const e = err as PortStartError;
    expect(e.code).toBe("ERR_USBVIRT_DEVICE_OPEN");
    expect(e.message).toMatch(/^port 2: .*ENOENT/);
    // The device's own error, thrown in the port worker, is the cause, with its code.
    expect(e.cause).toBeInstanceOf(Error);
    expect((e.cause as NodeJS.ErrnoException).code).toBe("ENOENT");
  });

  it("the same device failing on the backend's own thread gives the same error", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    const err = await rejection(conn.attach(2, missingDisk("backend")));
    expect(err).toBeInstanceOf(PortStartError);
    expect((err as PortStartError).code).toBe("ERR_USBVIRT_DEVICE_OPEN");
    expect(((err as PortStartError).cause as NodeJS.ErrnoException).code).toBe("ENOENT");
  });

  it("a spec the device schema refuses never reaches the backend: InvalidOptionError on this thread", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    const err = await rejection(
      conn.attach(2, { kind: "emulated", name: "loopback", options: { fifoCapacity: 0 } }),
    );
    expect(err).toBeInstanceOf(InvalidOptionError);
    expect((err as InvalidOptionError).message).toContain("fifoCapacity");
  });
});

describe("readable transfer errors", () => {
  it("a stalled control request says EPIPE (endpoint stalled), not [object Object]", async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
    const p = 1 as PortNum;
    await guest.enumerate(p, 2 as DevAddr);
    // A class request to the device: the loopback has no class requests and stalls endpoint 0.
    const err = await rejection(
      guest.control(p, 2 as DevAddr, {
        bmRequestType: 0x20,
        bRequest: 0x09,
        wValue: 0,
        wIndex: 0,
        wLength: 0,
      }),
    );
    expect(err).toBeInstanceOf(GuestTransferError);
    const e = err as GuestTransferError;
    expect(e.status).toBe(EPIPE);
    expect(e.code).toBe("ERR_USBVIRT_GUEST_TRANSFER");
    expect(e.message).toBe("control request 0x9 failed: EPIPE (endpoint stalled)");
  });

  it("a status outside the table is named as unknown, with its number", () => {
    expect(new GuestTransferError("bulk OUT", -5 as typeof EPIPE).message).toBe(
      "bulk OUT failed: unknown status -5",
    );
  });
});
