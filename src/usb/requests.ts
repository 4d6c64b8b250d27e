/**
 * USB 2.0 chapter 9 request vocabulary: the standard request codes (Table 9-4), the bmRequestType bits
 * (§9.3.1: direction, type, recipient), the standard feature selectors (Table 9-6), the GET_STATUS bits
 * (Figures 9-4, 9-6), and the one hub-class feature usbvirt speaks (USB 2.0 §11.24.2, SET_FEATURE(PORT_RESET)
 * sent down a port, as Linux's vhci does). The one place these numbers are defined (test/usb/vocabulary.test.ts
 * keeps it so).
 */

/** Standard request codes (bRequest, USB 2.0 Table 9-4). */
export const StandardRequest = {
  GET_STATUS: 0x00,
  CLEAR_FEATURE: 0x01,
  SET_FEATURE: 0x03,
  SET_ADDRESS: 0x05,
  GET_DESCRIPTOR: 0x06,
  SET_DESCRIPTOR: 0x07,
  GET_CONFIGURATION: 0x08,
  SET_CONFIGURATION: 0x09,
  GET_INTERFACE: 0x0a,
  SET_INTERFACE: 0x0b,
  SYNCH_FRAME: 0x0c,
} as const;
export type StandardRequest = (typeof StandardRequest)[keyof typeof StandardRequest];

/** bmRequestType bit 7: the data stage's direction. */
export const REQUEST_DIR_MASK = 0x80;
export const REQUEST_DIR_IN = 0x80;
export const REQUEST_DIR_OUT = 0x00;
/** bmRequestType bits 5..6: standard, class or vendor. */
export const REQUEST_TYPE_MASK = 0x60;
export const REQUEST_TYPE_STANDARD = 0x00;
export const REQUEST_TYPE_CLASS = 0x20;
export const REQUEST_TYPE_VENDOR = 0x40;
/** bmRequestType bits 0..4: who the request is for. */
export const RECIPIENT_MASK = 0x1f;
export const RECIPIENT_DEVICE = 0;
export const RECIPIENT_INTERFACE = 1;
export const RECIPIENT_ENDPOINT = 2;
export const RECIPIENT_OTHER = 3;

/** Whether a request's data stage runs device to host (bmRequestType bit 7). */
export function requestIsIn(bmRequestType: number): boolean {
  return (bmRequestType & REQUEST_DIR_MASK) === REQUEST_DIR_IN;
}

/** The bmRequestType byte from its three fields. */
export function requestType(directionIn: boolean, type: number, recipient: number): number {
  return (
    (directionIn ? REQUEST_DIR_IN : REQUEST_DIR_OUT) |
    (type & REQUEST_TYPE_MASK) |
    (recipient & RECIPIENT_MASK)
  );
}

/** The bmRequestType values the engine and its tools compare against or send, by name. */
export const RequestTypeByte = {
  /** host to device, standard, device: SET_ADDRESS, SET_CONFIGURATION, SET_FEATURE(device). */
  DEVICE_OUT: REQUEST_DIR_OUT | REQUEST_TYPE_STANDARD | RECIPIENT_DEVICE,
  /** device to host, standard, device: GET_DESCRIPTOR, GET_STATUS(device). */
  DEVICE_IN: REQUEST_DIR_IN | REQUEST_TYPE_STANDARD | RECIPIENT_DEVICE,
  /** host to device, standard, interface: SET_INTERFACE. */
  INTERFACE_OUT: REQUEST_DIR_OUT | REQUEST_TYPE_STANDARD | RECIPIENT_INTERFACE,
  /** device to host, standard, interface: GET_INTERFACE. */
  INTERFACE_IN: REQUEST_DIR_IN | REQUEST_TYPE_STANDARD | RECIPIENT_INTERFACE,
  /** host to device, standard, endpoint: CLEAR_FEATURE(ENDPOINT_HALT). */
  ENDPOINT_OUT: REQUEST_DIR_OUT | REQUEST_TYPE_STANDARD | RECIPIENT_ENDPOINT,
  /** host to device, class, other: a hub port request (SET_FEATURE(PORT_RESET)). */
  PORT_OUT: REQUEST_DIR_OUT | REQUEST_TYPE_CLASS | RECIPIENT_OTHER,
  /** host to device, class, interface: HID SET_IDLE / SET_REPORT, mass storage reset. */
  CLASS_INTERFACE_OUT: REQUEST_DIR_OUT | REQUEST_TYPE_CLASS | RECIPIENT_INTERFACE,
  /** host to device, vendor, device. */
  VENDOR_DEVICE_OUT: REQUEST_DIR_OUT | REQUEST_TYPE_VENDOR | RECIPIENT_DEVICE,
  /** device to host, vendor, device. */
  VENDOR_DEVICE_IN: REQUEST_DIR_IN | REQUEST_TYPE_VENDOR | RECIPIENT_DEVICE,
} as const;

/** Standard feature selectors (USB 2.0 Table 9-6). */
export const Feature = {
  ENDPOINT_HALT: 0,
  DEVICE_REMOTE_WAKEUP: 1,
  TEST_MODE: 2,
} as const;

/** Hub class port feature selectors the engine uses (USB 2.0 Table 11-17). */
export const HubPortFeature = {
  PORT_RESET: 4,
} as const;

/**
 * usbvirt's own port requests for bulk streams (no USB request does this: on real hardware the xHCI sets up
 * stream contexts and the device is told nothing). Like PORT_RESET they travel as a hub-class "other"
 * request down the device's endpoint 0, which no device ever receives (the port worker intercepts them):
 * wValue = streams (1..65533; ids 1..n), wIndex = the bulk endpoint address, wLength 0. The codes sit
 * far above every hub-class request USB 2.0/3.2 define (0..13).
 */
export const StreamsRequest = { ALLOC_STREAMS: 0xf0, FREE_STREAMS: 0xf1 } as const;

/** GET_STATUS(device) bit 0 (Figure 9-4) and GET_STATUS(endpoint) bit 0 (Figure 9-6). */
export const STATUS_SELF_POWERED = 0x01;
export const STATUS_HALTED = 0x01;
/** GET_STATUS answers two bytes. */
export const STATUS_LENGTH = 2;
