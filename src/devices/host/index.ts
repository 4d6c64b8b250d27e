/**
 * Host (libusb) devices: what create-device.ts and the manager use.
 *
 * In a port worker, a device that was unplugged ends the worker once it has
 * released the device: the backend sees the worker exit cleanly and reports a
 * disconnect on the port (the frontend sees the port go empty), and the
 * manager's HostHotplug re-attaches it when it comes back. The exit waits a
 * moment so the backend collects the -ENODEV completions already on the ring.
 */
import { isMainThread } from "node:worker_threads";
import type { HostDeviceSpec } from "../spec.js";
import { HostUsbDevice } from "./host-device.js";
import { selectorFromSpec } from "./select.js";

export * from "./enumerate.js";
export { findHostDevice, HostDeviceError, HostUsbDevice, type HostUsbDeviceOptions } from "./host-device.js";
export { HostHotplugWatcher, type HotplugEvent } from "./hotplug.js";
export * from "./select.js";
export { ISO_UNSUPPORTED_STATUS, LIBUSB_STATUS_TABLE, libusbStatus } from "./status.js";

/** How long an unplugged port worker lingers before it exits (lets the backend drain the port ring). */
export const GONE_EXIT_DELAY_MS = 100;

export function createHostDevice(spec: HostDeviceSpec): HostUsbDevice {
  return new HostUsbDevice(selectorFromSpec(spec), {
    onGone: (reason) => {
      if (isMainThread) return;
      process.stderr.write(`usbvirt host: port worker ends: device ${reason}\n`);
      setTimeout(() => process.exit(0), GONE_EXIT_DELAY_MS);
    },
  });
}
