/**
 * USB/IP's values in the engine's vocabulary: the boundary's status translation (RET_SUBMIT and
 * RET_UNLINK carry Linux's negative errno values) and the device record's speed (Linux
 * `enum usb_device_speed`) to and from src/usb/speed.ts.
 */
import { createStatusTranslation, ESHUTDOWN, STATUS_TABLE, type UrbStatus } from "../urb/status.js";
import { UsbSpeed } from "../usb/index.js";
import { UsbipSpeed } from "./protocol.js";

/**
 * The USB/IP boundary's status translation. USB/IP carries Linux's negative errno values, the same
 * numbers src/urb/status.ts uses, so the table is the identity over STATUS_TABLE; a status outside it
 * (a peer writing nonsense, or an errno usbvirt has no meaning for) becomes -ESHUTDOWN, as xen-hcd does.
 */
export const statusFromUsbip: (raw: number) => UrbStatus = createStatusTranslation(
  "USB/IP RET_SUBMIT/RET_UNLINK status",
  new Map<number, UrbStatus>(STATUS_TABLE.map((s) => [s.status as number, s.status])),
  ESHUTDOWN,
);

/** The engine's speed (src/usb/speed.ts UsbSpeed) → Linux's enum in the record. */
export function usbipSpeedOf(speed: number): number {
  switch (speed) {
    case UsbSpeed.LOW:
      return UsbipSpeed.LOW;
    case UsbSpeed.FULL:
      return UsbipSpeed.FULL;
    case UsbSpeed.HIGH:
      return UsbipSpeed.HIGH;
    case UsbSpeed.SUPER:
      return UsbipSpeed.SUPER;
    default:
      return UsbipSpeed.UNKNOWN;
  }
}

/** Linux speed from a device record → the engine's speed (wireless counts as high, super-plus as super). */
export function usbifSpeedOf(usbipSpeed: number): UsbSpeed {
  switch (usbipSpeed) {
    case UsbipSpeed.LOW:
      return UsbSpeed.LOW;
    case UsbipSpeed.FULL:
      return UsbSpeed.FULL;
    case UsbipSpeed.HIGH:
    case UsbipSpeed.WIRELESS:
      return UsbSpeed.HIGH;
    case UsbipSpeed.SUPER:
    case UsbipSpeed.SUPER_PLUS:
      return UsbSpeed.SUPER;
    default:
      return UsbSpeed.NONE;
  }
}
