/**
 * The iso bench's device (bench/iso.ts), served by bench/python/iso-testbed.py --stream: a high-speed
 * vendor device (pid.codes test VID 0x1209) with one interface whose alternate setting 1 has two pairs
 * of isochronous endpoints, the shapes the bench streams:
 *
 *   interface 0 alt 0: no endpoints (zero bandwidth)
 *   interface 0 alt 1: iso IN 0x81 and OUT 0x02, 192 bytes every 1 ms (bInterval 4): audio, 48 kHz stereo 16-bit
 *                      iso IN 0x83 and OUT 0x04, 3 × 1024 bytes every microframe: a high-bandwidth camera
 */
import type { FakeUsbDevice } from "./umockdev-testbed.js";

export const ISO_BENCH_VID = 0x1209;
export const ISO_BENCH_PID = 0x7303;
export const AUDIO_PACKET = 192;
/** wMaxPacketSize 0x1400: 1024 bytes, 2 more transactions per microframe (USB 2.0 §9.6.6). */
export const HIGH_BANDWIDTH_PACKET = 3 * 1024;

/** One stream the bench client keeps going: `depth` URBs of `packets` × `packetLength` on `endpoint`. */
export interface IsoWorkload {
  readonly endpoint: number;
  readonly directionIn: boolean;
  readonly depth: number;
  readonly packets: number;
  readonly packetLength: number;
}

// biome-ignore format: one descriptor per line
const CONFIGURATION = Uint8Array.from([
  9, 2, 55, 0, 1, 1, 0, 0x80, 50,
  9, 4, 0, 0, 0, 0xff, 0, 0, 0,
  9, 4, 0, 1, 4, 0xff, 0, 0, 0,
  7, 5, 0x81, 0x05, AUDIO_PACKET, 0, 4,
  7, 5, 0x02, 0x05, AUDIO_PACKET, 0, 4,
  7, 5, 0x83, 0x05, 0x00, 0x14, 1,
  7, 5, 0x04, 0x05, 0x00, 0x14, 1,
]);
if (CONFIGURATION.length !== CONFIGURATION[2]) throw new Error("iso bench device: wTotalLength is wrong");

// biome-ignore format: the 18 bytes of the device descriptor
const DEVICE_DESCRIPTOR = Uint8Array.from([
  18, 1, 0x00, 0x02, 0xff, 0x00, 0x00, 64,
  ISO_BENCH_VID & 0xff, ISO_BENCH_VID >> 8, ISO_BENCH_PID & 0xff, ISO_BENCH_PID >> 8,
  0x00, 0x01, 0, 0, 0, 1,
]);

export const isoBenchDevice: FakeUsbDevice = {
  sysfsPath: "/devices/pci0000:00/0000:00:14.0/usb1/1-3",
  busnum: 1,
  devnum: 4,
  speedMbps: 480,
  deviceDescriptor: DEVICE_DESCRIPTOR,
  configuration: CONFIGURATION,
};
