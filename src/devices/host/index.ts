/**
 * Host (libusb) devices: what port/create-device.ts and the manager use.
 *
 * In a port worker, a device that was unplugged says so through
 * UsbDevice.onGone once its transfers have completed; the port worker tells
 * the backend, which drains the port ring, reports a disconnect on the port
 * (the frontend sees the port go empty) and ends the worker. The manager's
 * HostHotplug re-attaches the device when it comes back.
 */
import type { HostDeviceSpec } from "../spec.js";
import { HostUsbDevice } from "./host-device.js";
import { selectorFromSpec } from "./select.js";

export * from "./enumerate.js";
export { findHostDevice, HostDeviceError, HostUsbDevice, type HostUsbDeviceOptions } from "./host-device.js";
export { HostHotplugWatcher, type HotplugEvent } from "./hotplug.js";
export * from "./select.js";
export {
  ISO_UNSUPPORTED_STATUS,
  LIBUSB_STATUS_TABLE,
  libusbStatus,
  USBFS_STATUS_TABLE,
  usbfsStatus,
} from "./status.js";

export function createHostDevice(spec: HostDeviceSpec): HostUsbDevice {
  return new HostUsbDevice(selectorFromSpec(spec));
}
