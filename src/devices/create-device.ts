/** Turn a DeviceSpec into the UsbDevice a port worker drives. */
import { NotImplementedError } from "../util/errors.js";
import type { UsbDevice } from "./device.js";
import { createEmulatedDevice } from "./emulated/index.js";
import { createHostDevice } from "./host/index.js";
import type { DeviceSpec } from "./spec.js";
import { UsbipRemoteDevice } from "./usbip-remote.js";

export function createDevice(spec: DeviceSpec): UsbDevice {
  if (spec.kind === "emulated") return createEmulatedDevice(spec.name, spec.options ?? {});
  if (spec.kind === "host") return createHostDevice(spec);
  if (spec.kind === "usbip") return new UsbipRemoteDevice(spec);
  throw new NotImplementedError(`devices of kind '${(spec as { kind: string }).kind}'`);
}
