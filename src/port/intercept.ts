/**
 * Standard requests a port worker performs itself instead of passing them
 * to the device as control transfers (crosvm, QEMU usb-host and Linux
 * usbip stub_rx.c intercept the same set): they change device state that
 * the host side must track, and libusb has dedicated calls for them.
 * SET_ADDRESS never gets this far: the backend virtualises it.
 */
import type { SetupPacket } from "../urb/types.js";

export const USB_REQ_CLEAR_FEATURE = 1;
export const USB_REQ_SET_FEATURE = 3;
export const USB_REQ_SET_ADDRESS = 5;
export const USB_REQ_SET_CONFIGURATION = 9;
export const USB_REQ_SET_INTERFACE = 11;
export const USB_ENDPOINT_HALT = 0;
export const USB_PORT_FEAT_RESET = 4;
/** bmRequestType: host to device, standard, recipient device / interface / endpoint; class, other (a hub port). */
export const RT_DEVICE_OUT = 0x00;
export const RT_INTERFACE_OUT = 0x01;
export const RT_ENDPOINT_OUT = 0x02;
export const RT_PORT_OUT = 0x23;

export type Intercepted =
  | { readonly op: "set-configuration"; readonly value: number }
  | { readonly op: "set-interface"; readonly interfaceNumber: number; readonly alternateSetting: number }
  | { readonly op: "clear-halt"; readonly endpointAddress: number }
  | { readonly op: "port-reset" };

export function isSetAddress(s: SetupPacket): boolean {
  return s.bmRequestType === RT_DEVICE_OUT && s.bRequest === USB_REQ_SET_ADDRESS;
}

/** SET_FEATURE(PORT_RESET) sent down the port, as USB/IP's vhci does for a port reset. */
export function isPortReset(s: SetupPacket): boolean {
  return (
    s.bmRequestType === RT_PORT_OUT && s.bRequest === USB_REQ_SET_FEATURE && s.wValue === USB_PORT_FEAT_RESET
  );
}

/** The intercepted operation a setup packet asks for, or null to pass it to the device. */
export function interceptedRequest(s: SetupPacket): Intercepted | null {
  if (s.bmRequestType === RT_DEVICE_OUT && s.bRequest === USB_REQ_SET_CONFIGURATION) {
    return { op: "set-configuration", value: s.wValue & 0xff };
  }
  if (s.bmRequestType === RT_INTERFACE_OUT && s.bRequest === USB_REQ_SET_INTERFACE) {
    return { op: "set-interface", interfaceNumber: s.wIndex & 0xff, alternateSetting: s.wValue & 0xff };
  }
  if (
    s.bmRequestType === RT_ENDPOINT_OUT &&
    s.bRequest === USB_REQ_CLEAR_FEATURE &&
    s.wValue === USB_ENDPOINT_HALT
  ) {
    return { op: "clear-halt", endpointAddress: s.wIndex & 0xff };
  }
  if (isPortReset(s)) return { op: "port-reset" };
  return null;
}
