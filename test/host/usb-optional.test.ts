/**
 * npm `usb` is an optional dependency: without it, asking for a host device fails with one clear message
 * that says how to get it (its absence is simulated with a `require` that cannot find the package; CI also
 * installs the packed tarball with --omit=optional and imports it). A package that is there but does not
 * load says why instead.
 */
import { describe, expect, it } from "vitest";
import {
  LibusbUnavailableError,
  requireUsb,
  USB_PACKAGE_MISSING,
  type UsbRequire,
} from "../../src/devices/host/libusb.js";

function notFound(id: string): Error {
  return Object.assign(new Error(`Cannot find module '${id}'`), { code: "MODULE_NOT_FOUND" });
}

describe("npm usb is optional", () => {
  it("without the package: LibusbUnavailableError naming the package and the command that installs it", () => {
    const absent = Object.assign(
      (id: string): unknown => {
        throw notFound(id);
      },
      {
        resolve: (id: string): string => {
          throw notFound(id);
        },
      },
    ) as UsbRequire;
    const err = (() => {
      try {
        requireUsb(absent);
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(LibusbUnavailableError);
    expect(err).toMatchObject({
      code: "ERR_USBVIRT_LIBUSB_UNAVAILABLE",
      message: "host USB devices need the optional package 'usb' (npm install usb)",
    });
    expect(USB_PACKAGE_MISSING).toBe((err as Error).message);
  });

  it("a package that is there but does not load says why (not 'install it')", () => {
    const broken = Object.assign(
      (): unknown => {
        throw new Error("No native build was found for platform=plan9");
      },
      { resolve: (id: string) => `/somewhere/node_modules/${id}/dist/index.js` },
    ) as UsbRequire;
    expect(() => requireUsb(broken)).toThrow(
      "libusb cannot be used: loading npm 'usb' failed (No native build was found for platform=plan9)",
    );
  });

  it("with the package installed (this checkout), it loads", () => {
    expect(typeof requireUsb().getDeviceList).toBe("function");
  });
});
