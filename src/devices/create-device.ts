/** Turn a DeviceSpec into the UsbDevice a port worker drives. */
import { NotImplementedError } from "../util/errors.js";
import type { UsbDevice } from "./device.js";
import { createEmulatedDevice } from "./emulated/index.js";
import type { DeviceSpec } from "./spec.js";

export function createDevice(spec: DeviceSpec): UsbDevice {
  if (spec.kind === "emulated") return createEmulatedDevice(spec.name, spec.options ?? {});
  throw new NotImplementedError("passing through host USB devices (libusb)");
}
