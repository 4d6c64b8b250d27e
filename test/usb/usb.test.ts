/** src/usb's helpers: the setup codec, the standard requests as built and recognised, endpoint addresses, kinds. */
import { describe, expect, it } from "vitest";
import { pipeTypeOf, TransferType, transferKindOfPipeType } from "../../src/urb/types.js";
import {
  clearHaltSetup,
  DescriptorType,
  decodeSetup,
  decodeSetupInto,
  EndpointType,
  emptySetup,
  encodeSetup,
  endpointAddress,
  endpointAddressOfIndex,
  endpointIndex,
  endpointIsIn,
  endpointNumberOf,
  endpointTypeOf,
  getDescriptorSetup,
  isClearHalt,
  isPortReset,
  isSetAddress,
  isSetConfiguration,
  isSetInterface,
  portResetSetup,
  RECIPIENT_OTHER,
  REQUEST_TYPE_CLASS,
  REQUEST_TYPE_STANDARD,
  RequestTypeByte,
  requestIsIn,
  requestType,
  StandardRequest,
  setAddressSetup,
  setConfigurationSetup,
  setInterfaceSetup,
  speedName,
  type TransferKind,
  transferKindOfEndpointType,
  UsbSpeed,
} from "../../src/usb/index.js";

describe("setup packet codec", () => {
  it("writes u16 fields little-endian, as on the bus", () => {
    const bytes = encodeSetup(getDescriptorSetup(DescriptorType.CONFIGURATION, 1, 0x1234, 0x0409));
    expect([...bytes]).toEqual([0x80, 0x06, 0x01, 0x02, 0x09, 0x04, 0x34, 0x12]);
  });

  it("decodes what it encodes, at an offset, and in place", () => {
    const s = { bmRequestType: 0xc1, bRequest: 0xfe, wValue: 0xbeef, wIndex: 0x0102, wLength: 0xffff };
    expect(decodeSetup(encodeSetup(s))).toEqual(s);
    const framed = new Uint8Array(12);
    framed.set(encodeSetup(s), 3);
    const into = emptySetup();
    expect(decodeSetupInto(framed, 3, into)).toBe(into);
    expect(into).toEqual(s);
  });

  it("refuses fewer than 8 bytes", () => {
    expect(() => decodeSetup(new Uint8Array(7))).toThrow(RangeError);
  });
});

describe("standard requests", () => {
  it("are recognised as they are built, and only so", () => {
    expect(isSetAddress(setAddressSetup(5))).toBe(true);
    expect(isSetConfiguration(setConfigurationSetup(1))).toBe(true);
    expect(isSetInterface(setInterfaceSetup(0, 1))).toBe(true);
    expect(isClearHalt(clearHaltSetup(0x81))).toBe(true);
    expect(isPortReset(portResetSetup(1))).toBe(true);
    expect(isSetAddress(setConfigurationSetup(5))).toBe(false);
    expect(isClearHalt({ ...clearHaltSetup(0x81), wValue: 1 })).toBe(false);
    expect(
      isSetConfiguration({ ...setConfigurationSetup(1), bmRequestType: RequestTypeByte.INTERFACE_OUT }),
    ).toBe(false);
  });

  it("put their fields where chapter 9 says", () => {
    expect(setInterfaceSetup(2, 3)).toEqual({
      bmRequestType: 0x01,
      bRequest: StandardRequest.SET_INTERFACE,
      wValue: 3,
      wIndex: 2,
      wLength: 0,
    });
    expect(portResetSetup(4)).toMatchObject({ bmRequestType: 0x23, bRequest: 3, wValue: 4, wIndex: 4 });
  });

  it("build the request-type byte from its fields", () => {
    expect(requestType(false, REQUEST_TYPE_CLASS, RECIPIENT_OTHER)).toBe(RequestTypeByte.PORT_OUT);
    expect(requestType(true, REQUEST_TYPE_STANDARD, 0)).toBe(RequestTypeByte.DEVICE_IN);
    expect(requestIsIn(RequestTypeByte.VENDOR_DEVICE_IN)).toBe(true);
    expect(requestIsIn(RequestTypeByte.VENDOR_DEVICE_OUT)).toBe(false);
  });
});

describe("endpoint addresses", () => {
  it("split into number and direction and back", () => {
    expect(endpointAddress(2, true)).toBe(0x82);
    expect(endpointNumberOf(0x82)).toBe(2);
    expect(endpointIsIn(0x82)).toBe(true);
    expect(endpointIsIn(0x02)).toBe(false);
  });

  it("index ep_info tables OUT 0..15, IN 16..31, both ways", () => {
    expect(endpointIndex(0x01)).toBe(1);
    expect(endpointIndex(0x81)).toBe(17);
    for (let i = 0; i < 32; i++) expect(endpointIndex(endpointAddressOfIndex(i))).toBe(i);
  });
});

describe("transfer kinds", () => {
  const kinds: TransferKind[] = ["control", "bulk", "interrupt", "isochronous"];

  it("convert to and from USB's endpoint type number", () => {
    for (const k of kinds) expect(transferKindOfEndpointType(endpointTypeOf(k))).toBe(k);
    expect(endpointTypeOf("isochronous")).toBe(EndpointType.ISOCHRONOUS);
    expect(transferKindOfEndpointType(0x0d)).toBe("isochronous"); // only bits 0..1
  });

  it("convert to and from usbif's pipe type number", () => {
    for (const k of kinds) expect(transferKindOfPipeType(pipeTypeOf(k))).toBe(k);
    expect(pipeTypeOf("isochronous")).toBe(TransferType.Isochronous);
    expect(transferKindOfPipeType(4)).toBeUndefined();
  });
});

it("names speeds", () => {
  expect(speedName(UsbSpeed.HIGH)).toBe("high");
  expect(speedName(UsbSpeed.NONE)).toBe("none");
});
