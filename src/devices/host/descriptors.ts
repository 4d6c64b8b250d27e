/**
 * Raw descriptor bytes back from libusb's parsed descriptors (libusb keeps every
 * descriptor it does not parse, in order, in `extra`, so the configuration set
 * is rebuilt byte for byte apart from wTotalLength, which is recomputed).
 * USB 2.0 §9.6.1–9.6.6.
 */
import type { ParsedConfiguration, ParsedDeviceDescriptor } from "./libusb.js";

export function deviceDescriptorBytes(d: ParsedDeviceDescriptor): Uint8Array {
  const b = Buffer.alloc(18);
  b.writeUInt8(18, 0);
  b.writeUInt8(1, 1);
  b.writeUInt16LE(d.bcdUSB, 2);
  b.writeUInt8(d.bDeviceClass, 4);
  b.writeUInt8(d.bDeviceSubClass, 5);
  b.writeUInt8(d.bDeviceProtocol, 6);
  b.writeUInt8(d.bMaxPacketSize0, 7);
  b.writeUInt16LE(d.idVendor, 8);
  b.writeUInt16LE(d.idProduct, 10);
  b.writeUInt16LE(d.bcdDevice, 12);
  b.writeUInt8(d.iManufacturer, 14);
  b.writeUInt8(d.iProduct, 15);
  b.writeUInt8(d.iSerialNumber, 16);
  b.writeUInt8(d.bNumConfigurations, 17);
  return new Uint8Array(b.buffer, b.byteOffset, 18);
}

export function configurationBytes(c: ParsedConfiguration): Uint8Array {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(9);
  head.writeUInt8(9, 0);
  head.writeUInt8(2, 1);
  head.writeUInt8(c.bNumInterfaces, 4);
  head.writeUInt8(c.bConfigurationValue, 5);
  head.writeUInt8(c.iConfiguration, 6);
  head.writeUInt8(c.bmAttributes, 7);
  head.writeUInt8(c.bMaxPower, 8);
  parts.push(head, c.extra ?? Buffer.alloc(0));
  for (const alts of c.interfaces) {
    for (const i of alts) {
      parts.push(
        Buffer.from([
          9,
          4,
          i.bInterfaceNumber,
          i.bAlternateSetting,
          i.bNumEndpoints,
          i.bInterfaceClass,
          i.bInterfaceSubClass,
          i.bInterfaceProtocol,
          i.iInterface,
        ]),
        i.extra ?? Buffer.alloc(0),
      );
      for (const e of i.endpoints) {
        const len = e.bLength >= 9 ? 9 : 7; // audio endpoints carry bRefresh and bSynchAddress
        const ep = Buffer.alloc(len);
        ep.writeUInt8(len, 0);
        ep.writeUInt8(5, 1);
        ep.writeUInt8(e.bEndpointAddress, 2);
        ep.writeUInt8(e.bmAttributes, 3);
        ep.writeUInt16LE(e.wMaxPacketSize, 4);
        ep.writeUInt8(e.bInterval, 6);
        if (len === 9) {
          ep.writeUInt8(e.bRefresh, 7);
          ep.writeUInt8(e.bSynchAddress, 8);
        }
        parts.push(ep, e.extra ?? Buffer.alloc(0));
      }
    }
  }
  const all = Buffer.concat(parts);
  all.writeUInt16LE(all.length, 2);
  return new Uint8Array(all.buffer, all.byteOffset, all.length);
}

/** Interface numbers of a configuration (each once). */
export function interfaceNumbers(c: ParsedConfiguration | undefined): number[] {
  if (c === undefined) return [];
  return [...new Set(c.interfaces.map((alts) => alts[0]?.bInterfaceNumber ?? -1).filter((n) => n >= 0))];
}
