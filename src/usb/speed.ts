/**
 * Device speeds, numbered as Xen usbif numbers them on the conn ring (`usbif_spd`: 0 none/disconnected,
 * 1 low, 2 full, 3 high, 4 super) — the engine's one speed vocabulary. Other wire formats convert at their
 * boundary (USB/IP's record: src/usbip/status-and-speed.ts usbipSpeedOf; libusb: src/devices/host/enumerate.ts).
 */

export const UsbSpeed = { NONE: 0, LOW: 1, FULL: 2, HIGH: 3, SUPER: 4 } as const;
export type UsbSpeed = (typeof UsbSpeed)[keyof typeof UsbSpeed];

const SPEED_NAMES: readonly string[] = ["none", "low", "full", "high", "super"];

export function isUsbSpeed(value: number): value is UsbSpeed {
  return Number.isInteger(value) && value >= UsbSpeed.NONE && value <= UsbSpeed.SUPER;
}

/** "low", "full", "high", "super" ("none" for a disconnected port). */
export function speedName(speed: UsbSpeed): string {
  return SPEED_NAMES[speed] ?? `speed ${speed}`;
}
