/**
 * Registry of the built-in emulated devices, for `usbvirt list` and `serve`: a name, a one-line
 * description, and a factory. Every device implements src/devices/device.ts's UsbDevice.
 */
import { InvalidOptionError } from "../../util/errors.js";
import type { UsbDevice } from "../device.js";
import { KeyboardDevice, type KeyboardOptions } from "./keyboard.js";
import { LoopbackDevice, type LoopbackOptions } from "./loopback.js";
import { MassStorageDevice, type MassStorageOptions } from "./mass-storage/device.js";

export type EmulatedDeviceName = "loopback" | "keyboard" | "storage";

export interface EmulatedDeviceOptionsByName {
  loopback: LoopbackOptions;
  keyboard: KeyboardOptions;
  storage: MassStorageOptions;
}

export interface EmulatedDeviceEntry {
  readonly name: EmulatedDeviceName;
  readonly description: string;
}

export const EMULATED_DEVICES: readonly EmulatedDeviceEntry[] = Object.freeze([
  {
    name: "loopback",
    description: "1209:0001 vendor loopback/source-sink: bulk echo FIFO, interrupt counter, iso on alt 1",
  },
  {
    name: "keyboard",
    description: "1209:0002 HID boot keyboard: 8-byte reports on interrupt IN, LEDs by SET_REPORT",
  },
  { name: "storage", description: "1209:0003 mass storage, Bulk-Only + SCSI, backed by memory or a file" },
]);

export function isEmulatedDeviceName(name: string): name is EmulatedDeviceName {
  return EMULATED_DEVICES.some((d) => d.name === name);
}

/** Build an emulated device by name; call open() on it before submitting transfers. */
export function createEmulatedDevice<N extends EmulatedDeviceName>(
  name: N,
  options: EmulatedDeviceOptionsByName[N] = {},
): UsbDevice {
  switch (name) {
    case "loopback":
      return new LoopbackDevice(options as LoopbackOptions);
    case "keyboard":
      return new KeyboardDevice(options as KeyboardOptions);
    case "storage":
      return new MassStorageDevice(options as MassStorageOptions);
    default:
      throw new InvalidOptionError(
        `unknown emulated device "${String(name)}"; known: ${EMULATED_DEVICES.map((d) => d.name).join(", ")}`,
      );
  }
}

export { buildDescriptors, type DescriptorSpec, walkDescriptors } from "./descriptors.js";
export { EmulatedDevice } from "./emulated-device.js";
export { KeyboardDevice, type KeyboardOptions, type LedState, Modifier } from "./keyboard.js";
export { LoopbackDevice, type LoopbackOptions, type LoopbackStats } from "./loopback.js";
export * from "./mass-storage/index.js";
export { PendingTransfer } from "./pending-transfer.js";
