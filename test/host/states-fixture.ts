/**
 * Devices for the device-state tests under the interactive testbed (test/host/children/device-states.ts):
 * - statesDevice: two configurations, so SET_CONFIGURATION really changes something. Configuration 1 has
 *   interface 0 with two alternate settings (bulk IN 0x81 / OUT 0x02 at 512 and at 64 bytes);
 *   configuration 2 has interface 0 (the same bulk pair) and interface 1 (interrupt IN 0x83).
 * - dfuDevice: fakeDevice after it re-enumerated with another product id (a DFU/bootloader mode), plugged
 *   at the same port path.
 * Both use fixture.ts's string indexes (1, 2, 3), which the testbed answers.
 */
import { DEVICE_DESCRIPTOR, fakeDevice, VID } from "./fixture.js";
import type { FakeUsbDevice } from "./umockdev.js";

export const STATES_PID = 0x7303;
export const DFU_PID = 0x7302;

function withIds(productId: number, configurations: number): Uint8Array {
  const d = Uint8Array.from(DEVICE_DESCRIPTOR);
  d[8] = VID & 0xff;
  d[9] = VID >> 8;
  d[10] = productId & 0xff;
  d[11] = productId >> 8;
  d[17] = configurations;
  return d;
}

const bulkPair = (packet: number) => [
  ...[7, 5, 0x81, 0x02, packet & 0xff, packet >> 8, 0],
  ...[7, 5, 0x02, 0x02, packet & 0xff, packet >> 8, 0],
];

const CONFIG_1 = [
  // configuration 1: wTotalLength 55, 1 interface
  ...[9, 2, 55, 0, 1, 1, 0, 0x80, 50],
  ...[9, 4, 0, 0, 2, 0xff, 0, 0, 0],
  ...bulkPair(512),
  ...[9, 4, 0, 1, 2, 0xff, 0, 0, 0],
  ...bulkPair(64),
];

const CONFIG_2 = [
  // configuration 2: wTotalLength 48, 2 interfaces
  ...[9, 2, 48, 0, 2, 2, 0, 0x80, 50],
  ...[9, 4, 0, 0, 2, 0xff, 0, 0, 0],
  ...bulkPair(512),
  ...[9, 4, 1, 0, 1, 0xff, 0, 0, 0],
  ...[7, 5, 0x83, 0x03, 8, 0, 4],
];

export const statesDevice: FakeUsbDevice = {
  ...fakeDevice,
  deviceDescriptor: withIds(STATES_PID, 2),
  configuration: Uint8Array.from([...CONFIG_1, ...CONFIG_2]),
};

export const dfuDevice: FakeUsbDevice = { ...fakeDevice, deviceDescriptor: withIds(DFU_PID, 1) };
