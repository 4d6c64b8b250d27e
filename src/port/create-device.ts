/**
 * Turn a DeviceSpec into the UsbDevice a port service drives (on a port worker or the backend's thread):
 * the one module that knows every device implementation, so it sits above them, in the port layer.
 */

import type { UsbDevice } from "../devices/device.js";
import { createEmulatedDevice } from "../devices/emulated/index.js";
import { createHostDevice } from "../devices/host/index.js";
import { UsbipRemoteDevice } from "../devices/remote/usbip-remote.js";
import type { DeviceSpec } from "../devices/spec.js";
import { InvalidOptionError, NotImplementedError } from "../util/errors.js";

export function createDevice(spec: DeviceSpec): UsbDevice {
  if (spec.kind === "emulated") return createEmulatedDevice(spec.name, spec.options ?? {});
  if (spec.kind === "host") return createHostDevice(spec);
  if (spec.kind === "usbip") {
    // The engine's Connection finds the server before a port is asked for the device (engine/find-announced.ts).
    if (spec.select !== undefined)
      throw new InvalidOptionError(
        `usbip spec "${spec.select}" reached a port unresolved: attach it through a Connection`,
      );
    return new UsbipRemoteDevice(spec);
  }
  throw new NotImplementedError(`devices of kind '${(spec as { kind: string }).kind}'`);
}
