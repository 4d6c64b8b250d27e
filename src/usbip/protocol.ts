/**
 * The USB/IP wire format (Linux Documentation/usb/usbip_protocol.rst,
 * include/uapi/linux/usbip.h, drivers/usb/usbip/usbip_common.h): TCP port
 * 3240, version 0x0111, every field big-endian except the setup packet, which
 * travels as the 8 bytes USB defines (its u16 fields little-endian).
 *
 * This file holds the protocol's numbers: port, version, codes, statuses, flags, the sizes of its
 * records and the readers' hard limits. Each codec sits beside it with its octet table:
 *   management-pdus.ts  the management phase (OP_REQ/REP_DEVLIST, OP_REQ/REP_IMPORT, the 8-byte op header)
 *   device-record.ts    the 312-byte device record and its interface records, carried by the replies
 *   urb-pdus.ts         the URB phase (CMD_SUBMIT, CMD_UNLINK, RET_SUBMIT, RET_UNLINK, the 48-byte header)
 *   read-result.ts      a frame reader's verdict: a whole PDU, "need more bytes", or malformed
 *   status-and-speed.ts USB/IP's statuses and speeds into the engine's
 *   wire-fields.ts      the codecs' shared field helpers (big-endian view, NUL-terminated strings)
 */
import { MAX_BUFFER_LENGTH, MAX_ISO_PACKETS } from "../urb/limits.js";

export const USBIP_PORT = 3240;
export const USBIP_VERSION = 0x0111;

export const OpCode = {
  REQ_DEVLIST: 0x8005,
  REP_DEVLIST: 0x0005,
  REQ_IMPORT: 0x8003,
  REP_IMPORT: 0x0003,
} as const;

/** Management status (usbip_common.h / usbip_network.h ST_*). */
export const OpStatus = { OK: 0, NA: 1, DEV_BUSY: 2, DEV_ERR: 3, NODEV: 4, ERROR: 5 } as const;
export type OpStatus = (typeof OpStatus)[keyof typeof OpStatus];

export function opStatusName(status: number): string {
  return Object.entries(OpStatus).find(([, v]) => v === status)?.[0] ?? `unknown(${status})`;
}

export const UsbipCommand = { CMD_SUBMIT: 1, CMD_UNLINK: 2, RET_SUBMIT: 3, RET_UNLINK: 4 } as const;

/** Linux `enum usb_device_speed`, as the device record carries it. */
export const UsbipSpeed = {
  UNKNOWN: 0,
  LOW: 1,
  FULL: 2,
  HIGH: 3,
  WIRELESS: 4,
  SUPER: 5,
  SUPER_PLUS: 6,
} as const;

/** URB transfer_flags (include/linux/usb.h) that mean something to usbvirt. */
export const TransferFlag = {
  SHORT_NOT_OK: 0x0001,
  ISO_ASAP: 0x0002,
  ZERO_PACKET: 0x0040,
  DIR_IN: 0x0200,
} as const;

export const OP_HEADER_SIZE = 8;
export const PATH_SIZE = 256;
export const BUSID_SIZE = 32;
export const DEVICE_RECORD_SIZE = 312;
export const INTERFACE_RECORD_SIZE = 4;
export const IMPORT_REQUEST_SIZE = OP_HEADER_SIZE + BUSID_SIZE;
export const URB_HEADER_SIZE = 48;
export const ISO_DESCRIPTOR_SIZE = 16;

/** Hard limits of the frame readers: the engine's own URB limits, and a bound on devlist replies. */
export const MAX_TRANSFER_LENGTH: number = MAX_BUFFER_LENGTH;
export const MAX_PACKETS: number = MAX_ISO_PACKETS;
export const MAX_DEVLIST_DEVICES = 256;

/** number_of_packets of a non-iso URB: the doc says 0, its own capture shows 0xffffffff; both are accepted. */
export const NON_ISO_PACKETS = 0xffff_ffff;

// Layout assertions at load: the record is 312 bytes, the URB header 48.
if (PATH_SIZE + BUSID_SIZE + 3 * 4 + 3 * 2 + 6 !== DEVICE_RECORD_SIZE || 20 + 28 !== URB_HEADER_SIZE) {
  throw new Error("usbip: wire layout constants are inconsistent");
}
