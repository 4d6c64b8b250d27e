/**
 * Turn a DeviceSpec into the UsbDevice a port service drives (on a port worker or the backend's thread):
 * the one module that knows every device implementation, so it sits above them, in the port layer.
 */

import type { UsbDevice } from "../devices/device.js";
import { createEmulatedDevice } from "../devices/emulated/index.js";
import { createHostDevice } from "../devices/host/index.js";
import { UsbipRemoteDevice } from "../devices/remote/usbip-remote.js";
import type { DeviceSpec } from "../devices/spec.js";
import { NotImplementedError } from "../util/errors.js";

export function createDevice(spec: DeviceSpec): UsbDevice {
  if (spec.kind === "emulated") return createEmulatedDevice(spec.name, spec.options ?? {});
  if (spec.kind === "host") return createHostDevice(spec);
  if (spec.kind === "usbip") return new UsbipRemoteDevice(spec);
  throw new NotImplementedError(`devices of kind '${(spec as { kind: string }).kind}'`);
}
