/**
 * The fake isochronous device the usbfs tests serve from an interactive
 * umockdev testbed (bench/python/iso-testbed.py), and the data rules the
 * testbed and the checks share. A high-speed vendor device (pid.codes test
 * VID 0x1209) shaped like a webcam or an audio interface:
 *
 *   interface 0 alt 0: bulk IN 0x81 (stays with libusb)
 *   interface 1 alt 0: no endpoints (zero bandwidth)
 *   interface 1 alt 1: iso IN 0x82 (192 B, every microframe), iso OUT 0x03 (192 B),
 *                      iso IN 0x84 (the testbed never answers it: unlink and unplug)
 */
import type { FakeUsbDevice } from "./umockdev.js";

export const ISO_VID = 0x1209;
export const ISO_PID = 0x7302;
export const ISO_PACKET = 192;
/** The testbed completes iso IN URBs on 0x82 only once this many are waiting (several in flight, no timer). */
export const ISO_IN_BATCH = 4;

export const ISO_DEVICE_DESCRIPTOR = Uint8Array.from([
  18,
  1,
  0x00,
  0x02,
  0xff,
  0x00,
  0x00,
  64,
  ISO_VID & 0xff,
  ISO_VID >> 8,
  ISO_PID & 0xff,
  ISO_PID >> 8,
  0x00,
  0x01,
  0,
  0,
  0,
  1,
]);

// biome-ignore format: one descriptor per line
export const ISO_CONFIGURATION = Uint8Array.from([
  9, 2, 64, 0, 2, 1, 0, 0x80, 50,
  9, 4, 0, 0, 1, 0xff, 0, 0, 0,
  7, 5, 0x81, 0x02, 0x00, 0x02, 0,
  9, 4, 1, 0, 0, 0xff, 0, 0, 0,
  9, 4, 1, 1, 3, 0xff, 0, 0, 0,
  7, 5, 0x82, 0x05, ISO_PACKET, 0, 1,
  7, 5, 0x03, 0x05, ISO_PACKET, 0, 1,
  7, 5, 0x84, 0x05, ISO_PACKET, 0, 1,
]);
if (ISO_CONFIGURATION.length !== 64) throw new Error("iso fixture: wTotalLength is wrong");

export const isoFakeDevice: FakeUsbDevice = {
  sysfsPath: "/devices/pci0000:00/0000:00:14.0/usb1/1-2",
  busnum: 1,
  devnum: 3,
  speedMbps: 480,
  deviceDescriptor: ISO_DEVICE_DESCRIPTOR,
  configuration: ISO_CONFIGURATION,
};

/**
 * What the testbed answers for packet `i` (of `length` bytes) of the `seq`-th
 * iso IN URB on 0x82: every 7th packet overall is lost (-EXDEV, 0 bytes), the
 * others come back 0, 10, 20 or 30 bytes short. Same rule in iso-testbed.py.
 */
export function isoInPacket(seq: number, i: number, n: number, length: number) {
  if ((seq * n + i) % 7 === 3) return { status: -18, actualLength: 0 };
  return { status: 0, actualLength: Math.max(0, length - ((seq + i) % 4) * 10) };
}

/** Byte `j` of IN packet `i` of URB `seq` (iso-testbed.py writes the same). */
export const isoInByte = (seq: number, i: number, j: number) => (seq * 17 + i * 5 + j) & 0xff;

/** Byte `j` of OUT packet `i` of URB `seq`: what the child sends and the testbed checks. */
export const isoOutByte = (seq: number, i: number, j: number) => (seq * 13 + i * 3 + j + 1) & 0xff;
