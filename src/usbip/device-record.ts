/**
 * The device record (usbip_usb_device) and its interface records (usbip_usb_interface), as the
 * management replies carry them: OP_REP_DEVLIST (each record followed by bNumInterfaces interface
 * records) and OP_REP_IMPORT (the record alone). Big-endian.
 *
 *   device record, 312 bytes
 *     0 path[256]  256 busid[32]  288 busnum u32  292 devnum u32  296 speed u32
 *   300 idVendor u16  302 idProduct u16  304 bcdDevice u16  306 bDeviceClass  307 bDeviceSubClass
 *   308 bDeviceProtocol  309 bConfigurationValue  310 bNumConfigurations  311 bNumInterfaces
 *   interface record, 4 bytes: class, subclass, protocol, padding
 */
import { BUSID_SIZE, DEVICE_RECORD_SIZE, INTERFACE_RECORD_SIZE, PATH_SIZE } from "./protocol.js";
import { readCString, view, writeCString } from "./wire-fields.js";

export interface InterfaceRecord {
  readonly cls: number;
  readonly subclass: number;
  readonly protocol: number;
}

/** One exported device as the device record describes it (bNumInterfaces is interfaces.length). */
export interface DeviceRecord {
  readonly path: string;
  readonly busid: string;
  readonly busnum: number;
  readonly devnum: number;
  /** Linux speed (UsbipSpeed). */
  readonly speed: number;
  readonly idVendor: number;
  readonly idProduct: number;
  readonly bcdDevice: number;
  readonly bDeviceClass: number;
  readonly bDeviceSubClass: number;
  readonly bDeviceProtocol: number;
  readonly bConfigurationValue: number;
  readonly bNumConfigurations: number;
  readonly interfaces: readonly InterfaceRecord[];
}

/** devid as vhci builds it: busnum << 16 | devnum. */
export function devidOf(record: Pick<DeviceRecord, "busnum" | "devnum">): number {
  return ((record.busnum << 16) | (record.devnum & 0xffff)) >>> 0;
}

/** Write the 312-byte device record at `at`. */
export function writeDeviceRecord(out: Uint8Array, at: number, d: DeviceRecord): void {
  out.fill(0, at, at + DEVICE_RECORD_SIZE);
  writeCString(out, at, PATH_SIZE, d.path);
  writeCString(out, at + 256, BUSID_SIZE, d.busid);
  const v = view(out);
  v.setUint32(at + 288, d.busnum);
  v.setUint32(at + 292, d.devnum);
  v.setUint32(at + 296, d.speed);
  v.setUint16(at + 300, d.idVendor);
  v.setUint16(at + 302, d.idProduct);
  v.setUint16(at + 304, d.bcdDevice);
  out[at + 306] = d.bDeviceClass;
  out[at + 307] = d.bDeviceSubClass;
  out[at + 308] = d.bDeviceProtocol;
  out[at + 309] = d.bConfigurationValue;
  out[at + 310] = d.bNumConfigurations;
  out[at + 311] = d.interfaces.length;
}

/** Read a device record; `interfaces` come from the bytes after it when `withInterfaces`. */
export function readDeviceRecord(bytes: Uint8Array, at: number, withInterfaces: boolean): DeviceRecord {
  const v = view(bytes);
  const count = bytes[at + 311]!;
  const interfaces: InterfaceRecord[] = [];
  if (withInterfaces) {
    for (let i = 0; i < count; i++) {
      const p = at + DEVICE_RECORD_SIZE + i * INTERFACE_RECORD_SIZE;
      interfaces.push({ cls: bytes[p]!, subclass: bytes[p + 1]!, protocol: bytes[p + 2]! });
    }
  }
  return {
    path: readCString(bytes, at, PATH_SIZE),
    busid: readCString(bytes, at + 256, BUSID_SIZE),
    busnum: v.getUint32(at + 288),
    devnum: v.getUint32(at + 292),
    speed: v.getUint32(at + 296),
    idVendor: v.getUint16(at + 300),
    idProduct: v.getUint16(at + 302),
    bcdDevice: v.getUint16(at + 304),
    bDeviceClass: bytes[at + 306]!,
    bDeviceSubClass: bytes[at + 307]!,
    bDeviceProtocol: bytes[at + 308]!,
    bConfigurationValue: bytes[at + 309]!,
    bNumConfigurations: bytes[at + 310]!,
    // Without the interface records (import reply) keep the count visible as empty placeholders.
    interfaces: withInterfaces
      ? interfaces
      : Array.from({ length: count }, () => ({ cls: 0, subclass: 0, protocol: 0 })),
  };
}
