/** Host selectors and filters, and the libusb → URB status table (no libusb needed). */
import { describe, expect, it } from "vitest";
import {
  formatSelector,
  matchesSelector,
  parseSelector,
  passesFilter,
  selectorFromSpec,
} from "../../src/devices/host/select.js";
import {
  ISO_UNSUPPORTED_STATUS,
  isNoDevice,
  LIBUSB_STATUS_TABLE,
  libusbStatus,
} from "../../src/devices/host/status.js";
import {
  ECONNRESET,
  EINVAL,
  ENODEV,
  EOVERFLOW,
  EPIPE,
  EPROTO,
  isKnownStatus,
  OK,
} from "../../src/urb/status.js";

const dev = { vendorId: 0x1209, productId: 0x7301, portPath: "1-1.2", serial: "UV-1" };

describe("host selectors", () => {
  it("parses vid:pid, bus-port paths, serials and combinations", () => {
    expect(parseSelector("1209:7301")).toEqual({ vendorId: 0x1209, productId: 0x7301 });
    expect(parseSelector("1209:*")).toEqual({ vendorId: 0x1209 });
    expect(parseSelector("1-1.2")).toEqual({ busPort: "1-1.2" });
    expect(parseSelector("serial=UV-1")).toEqual({ serial: "UV-1" });
    expect(parseSelector("1209:7301@1-1.2,serial=UV-1")).toEqual({
      vendorId: 0x1209,
      productId: 0x7301,
      busPort: "1-1.2",
      serial: "UV-1",
    });
    expect(formatSelector(parseSelector("1209:7301@1-1.2"))).toBe("1209:7301,1-1.2");
  });

  it("rejects what cannot select a device, saying why", () => {
    expect(() => parseSelector("")).toThrow(/needs vid:pid/);
    expect(() => parseSelector("xyz")).toThrow(/cannot read "xyz"/);
    expect(() => parseSelector("12345:1")).toThrow(/hex digits/);
    expect(() => selectorFromSpec({ kind: "host", busPort: "usb1/1" })).toThrow(/busPort/);
    expect(() => selectorFromSpec({ kind: "host" })).toThrow(/needs vid:pid/);
  });

  it("matches only when every given criterion holds", () => {
    expect(matchesSelector(dev, { vendorId: 0x1209 })).toBe(true);
    expect(matchesSelector(dev, { vendorId: 0x1209, productId: 1 })).toBe(false);
    expect(matchesSelector(dev, { busPort: "1-1" })).toBe(false);
    expect(matchesSelector({ ...dev, serial: undefined }, { serial: "UV-1" })).toBe(false);
    expect(matchesSelector(dev, {})).toBe(false);
  });

  it("filters with allow and deny lists, deny winning", () => {
    expect(passesFilter(dev, {})).toBe(true);
    expect(passesFilter(dev, { allow: [{ vendorId: 0x1209 }] })).toBe(true);
    expect(passesFilter(dev, { allow: [{ vendorId: 0x1234 }] })).toBe(false);
    expect(passesFilter(dev, { allow: [{ vendorId: 0x1209 }], deny: [{ busPort: "1-1.2" }] })).toBe(false);
    expect(passesFilter(dev, { deny: [{ serial: "other" }] })).toBe(true);
  });
});

describe("libusb status table", () => {
  it("maps every libusb transfer status and error to a URB status", () => {
    for (const target of LIBUSB_STATUS_TABLE.values()) expect(isKnownStatus(target)).toBe(true);
    expect(libusbStatus(0)).toBe(OK);
    expect(libusbStatus(3)).toBe(ECONNRESET); // TRANSFER_CANCELLED
    expect(libusbStatus(4)).toBe(EPIPE); // TRANSFER_STALL
    expect(libusbStatus(5)).toBe(ENODEV); // TRANSFER_NO_DEVICE
    expect(libusbStatus(6)).toBe(EOVERFLOW); // TRANSFER_OVERFLOW
    expect(libusbStatus(-4)).toBe(ENODEV); // ERROR_NO_DEVICE
    expect(libusbStatus(-9)).toBe(EPIPE); // ERROR_PIPE
    expect(libusbStatus(-12345)).toBe(EPROTO); // unknown: never leaks through
    expect(ISO_UNSUPPORTED_STATUS).toBe(EINVAL);
    expect([isNoDevice(5), isNoDevice(-4), isNoDevice(4)]).toEqual([true, true, false]);
  });
});
