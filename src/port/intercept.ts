/**
 * Standard requests a port worker performs itself instead of passing them
 * to the device as control transfers (crosvm, QEMU usb-host and Linux
 * usbip stub_rx.c intercept the same set): they change device state that
 * the host side must track, and libusb has dedicated calls for them.
 * SET_ADDRESS never gets this far: the backend virtualises it. usbvirt's own ALLOC_STREAMS /
 * FREE_STREAMS port requests (src/usb/requests.ts) are host-controller work and are intercepted too.
 */
import {
  isAllocStreams,
  isClearHalt,
  isFreeStreams,
  isPortReset,
  isSetConfiguration,
  isSetInterface,
  type SetupPacket,
} from "../usb/index.js";

export type Intercepted =
  | { readonly op: "set-configuration"; readonly value: number }
  | { readonly op: "set-interface"; readonly interfaceNumber: number; readonly alternateSetting: number }
  | { readonly op: "clear-halt"; readonly endpointAddress: number }
  | { readonly op: "port-reset" }
  | { readonly op: "alloc-streams"; readonly endpointAddress: number; readonly streams: number }
  | { readonly op: "free-streams"; readonly endpointAddress: number };

/** The intercepted operation a setup packet asks for, or null to pass it to the device. */
export function interceptedRequest(s: SetupPacket): Intercepted | null {
  if (isSetConfiguration(s)) return { op: "set-configuration", value: s.wValue & 0xff };
  if (isSetInterface(s)) {
    return { op: "set-interface", interfaceNumber: s.wIndex & 0xff, alternateSetting: s.wValue & 0xff };
  }
  if (isClearHalt(s)) return { op: "clear-halt", endpointAddress: s.wIndex & 0xff };
  if (isPortReset(s)) return { op: "port-reset" };
  if (isAllocStreams(s)) return { op: "alloc-streams", endpointAddress: s.wIndex & 0xff, streams: s.wValue };
  if (isFreeStreams(s)) return { op: "free-streams", endpointAddress: s.wIndex & 0xff };
  return null;
}
