/** Device-specific methods a VMM may call through the control plane, wherever the device runs. */
import type { UsbDevice } from "../devices/device.js";

/** Methods callable by name (the keyboard's key presses, a device's own statistics). */
const DEVICE_COMMANDS = new Set(["pressKeys", "releaseAll", "typeText", "leds", "stats"]);

export async function runDeviceCommand(device: UsbDevice, method: string, args: unknown[]): Promise<unknown> {
  const fn = (device as unknown as Record<string, unknown>)[method];
  if (!DEVICE_COMMANDS.has(method) || typeof fn !== "function") {
    throw new Error(`device '${device.info.name}' has no command '${method}'`);
  }
  return await (fn as (...a: unknown[]) => unknown).apply(device, args);
}
