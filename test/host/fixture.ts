/**
 * The fake device the host tests replay: a vendor-class high-speed device
 * (pid.codes test VID 0x1209) with one interface and three endpoints:
 * bulk IN 0x81, bulk OUT 0x02 (512 bytes) and interrupt IN 0x83 (8 bytes).
 */
import type { FakeUsbDevice } from "./umockdev.js";

export const VID = 0x1209;
export const PID = 0x7301;
export const BUS = 1;
export const DEVNUM = 2;
export const BUS_PORT = "1-1";

export const DEVICE_DESCRIPTOR = Uint8Array.from([
  18,
  1,
  0x00,
  0x02,
  0xff,
  0x00,
  0x00,
  64,
  VID & 0xff,
  VID >> 8,
  PID & 0xff,
  PID >> 8,
  0x00,
  0x01,
  1,
  2,
  3,
  1,
]);

export const CONFIGURATION = Uint8Array.from([
  // configuration: wTotalLength 39, 1 interface, value 1, bus powered, 100 mA
  9, 2, 39, 0, 1, 1, 0, 0x80, 50,
  // interface 0 alt 0, 3 endpoints, vendor class
  9, 4, 0, 0, 3, 0xff, 0x00, 0x00, 0,
  // bulk IN 0x81, 512
  7, 5, 0x81, 0x02, 0x00, 0x02, 0,
  // bulk OUT 0x02, 512
  7, 5, 0x02, 0x02, 0x00, 0x02, 0,
  // interrupt IN 0x83, 8 bytes, interval 4
  7, 5, 0x83, 0x03, 0x08, 0x00, 4,
]);

export function stringDescriptor(s: string): Uint8Array {
  const body = Buffer.from(s, "utf16le");
  return Uint8Array.from([body.length + 2, 3, ...body]);
}

export const LANGIDS = Uint8Array.from([4, 3, 0x09, 0x04]);
export const MANUFACTURER = "usbvirt tests";
export const PRODUCT = "replayed echo";
export const SERIAL = "UV-0001";

export const fakeDevice: FakeUsbDevice = {
  sysfsPath: `/devices/pci0000:00/0000:00:14.0/usb${BUS}/${BUS_PORT}`,
  busnum: BUS,
  devnum: DEVNUM,
  speedMbps: 480,
  deviceDescriptor: DEVICE_DESCRIPTOR,
  configuration: CONFIGURATION,
};
