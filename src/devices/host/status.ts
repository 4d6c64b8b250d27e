/**
 * The libusb boundary's status translation: libusb_transfer_status (0..6, what
 * a transfer completes with) and libusb_error (negative, what a call returns)
 * into URB statuses (negative Linux errno, src/urb/status.ts). The two code
 * sets do not overlap, so they share ONE table. Anything not in it becomes
 * -EPROTO.
 *
 * | libusb                      | URB status  | why                                            |
 * |-----------------------------|-------------|------------------------------------------------|
 * | TRANSFER_COMPLETED  0       | 0           |                                                |
 * | TRANSFER_ERROR      1       | -EPROTO     | bus-level failure, as Linux reports it         |
 * | TRANSFER_TIMED_OUT  2       | -ETIMEDOUT  | (usbvirt submits without a timeout)            |
 * | TRANSFER_CANCELLED  3       | -ECONNRESET | asynchronous unlink                            |
 * | TRANSFER_STALL      4       | -EPIPE      | endpoint halted / control request refused      |
 * | TRANSFER_NO_DEVICE  5       | -ENODEV     | unplugged: the port then reports a disconnect  |
 * | TRANSFER_OVERFLOW   6       | -EOVERFLOW  | babble                                         |
 * | ERROR_IO           -1       | -EPROTO     |                                                |
 * | ERROR_INVALID_PARAM -2      | -EINVAL     |                                                |
 * | ERROR_ACCESS       -3       | -EPROTO     | the host refused (permissions)                 |
 * | ERROR_NO_DEVICE    -4       | -ENODEV     |                                                |
 * | ERROR_NOT_FOUND    -5       | -EPIPE      | no such interface / alternate setting: a real  |
 * |                             |             | device would stall the request                 |
 * | ERROR_BUSY         -6       | -EPROTO     | another driver holds the interface             |
 * | ERROR_TIMEOUT      -7       | -ETIMEDOUT  |                                                |
 * | ERROR_OVERFLOW     -8       | -EOVERFLOW  |                                                |
 * | ERROR_PIPE         -9       | -EPIPE      |                                                |
 * | ERROR_INTERRUPTED  -10      | -ECONNRESET |                                                |
 * | ERROR_NO_MEM       -11      | -ENOMEM     | e.g. usbfs_memory_mb exhausted                 |
 * | ERROR_NOT_SUPPORTED -12     | -EINVAL     | also: isochronous URBs to a real device (node- |
 * |                             |             | usb has no isochronous transfers)              |
 * | ERROR_OTHER        -99      | -EPROTO     |                                                |
 */
import {
  createStatusTranslation,
  ECOMM,
  ECONNRESET,
  EILSEQ,
  EINVAL,
  EMSGSIZE,
  ENODEV,
  ENOENT,
  ENOMEM,
  ENOSR,
  EOVERFLOW,
  EPIPE,
  EPROTO,
  EREMOTEIO,
  ESHUTDOWN,
  ETIME,
  ETIMEDOUT,
  EXDEV,
  OK,
  type UrbStatus,
} from "../../urb/status.js";
import { LibusbError, LibusbTransferStatus } from "./libusb.js";

export const LIBUSB_STATUS_TABLE: ReadonlyMap<number, UrbStatus> = new Map<number, UrbStatus>([
  [LibusbTransferStatus.COMPLETED, OK],
  [LibusbTransferStatus.ERROR, EPROTO],
  [LibusbTransferStatus.TIMED_OUT, ETIMEDOUT],
  [LibusbTransferStatus.CANCELLED, ECONNRESET],
  [LibusbTransferStatus.STALL, EPIPE],
  [LibusbTransferStatus.NO_DEVICE, ENODEV],
  [LibusbTransferStatus.OVERFLOW, EOVERFLOW],
  [LibusbError.IO, EPROTO],
  [LibusbError.INVALID_PARAM, EINVAL],
  [LibusbError.ACCESS, EPROTO],
  [LibusbError.NO_DEVICE, ENODEV],
  [LibusbError.NOT_FOUND, EPIPE],
  [LibusbError.BUSY, EPROTO],
  [LibusbError.TIMEOUT, ETIMEDOUT],
  [LibusbError.OVERFLOW, EOVERFLOW],
  [LibusbError.PIPE, EPIPE],
  [LibusbError.INTERRUPTED, ECONNRESET],
  [LibusbError.NO_MEM, ENOMEM],
  [LibusbError.NOT_SUPPORTED, EINVAL],
  [LibusbError.OTHER, EPROTO],
]);

/** libusb transfer status or libusb error → URB status. */
export const libusbStatus = createStatusTranslation("libusb", LIBUSB_STATUS_TABLE, EPROTO);

/** True for the codes that mean the device is gone. */
export function isNoDevice(code: number): boolean {
  return code === LibusbTransferStatus.NO_DEVICE || code === LibusbError.NO_DEVICE;
}

/** What an isochronous URB to a real device completes with (see the README). */
export const ISO_UNSUPPORTED_STATUS: UrbStatus = libusbStatus(LibusbError.NOT_SUPPORTED);

/**
 * The usbfs boundary (./usbfs-iso.ts): what the kernel writes into a reaped
 * URB's status and each iso packet's status, and what a failed ioctl sets in
 * errno (negated here), are negative Linux errnos already; this table says
 * which of them a URB may carry and folds the rest (Linux
 * Documentation/driver-api/usb/error-codes.rst). Anything else: -EPROTO.
 *
 * | kernel                     | URB status  | why                                          |
 * |----------------------------|-------------|----------------------------------------------|
 * | 0                          | 0           |                                              |
 * | -EXDEV, -EOVERFLOW, -EPROTO, -EILSEQ, -ETIME, -ECOMM, -ENOSR, -EPIPE, -EREMOTEIO, -EMSGSIZE, -ENOMEM, -ETIMEDOUT, -EINVAL | the same | per-packet and URB errors pass as they are |
 * | -ENOENT, -ECONNRESET       | -ECONNRESET | discarded (unlinked)                         |
 * | -ENODEV, -ESHUTDOWN        | -ENODEV     | unplugged, as libusb's NO_DEVICE             |
 * | -EBUSY (16)                | -EPROTO     | another fd (driver) holds the interface      |
 * | -ENOSPC (28)               | -ENOMEM     | no bus bandwidth / usbfs_memory_mb exhausted |
 */
const E = (errno: number) => -errno;
export const USBFS_STATUS_TABLE: ReadonlyMap<number, UrbStatus> = new Map<number, UrbStatus>([
  [0, OK],
  [EXDEV, EXDEV],
  [EOVERFLOW, EOVERFLOW],
  [EPROTO, EPROTO],
  [EILSEQ, EILSEQ],
  [ETIME, ETIME],
  [ECOMM, ECOMM],
  [ENOSR, ENOSR],
  [EPIPE, EPIPE],
  [EREMOTEIO, EREMOTEIO],
  [EMSGSIZE, EMSGSIZE],
  [ENOMEM, ENOMEM],
  [ETIMEDOUT, ETIMEDOUT],
  [EINVAL, EINVAL],
  [ENOENT, ECONNRESET],
  [ECONNRESET, ECONNRESET],
  [ENODEV, ENODEV],
  [ESHUTDOWN, ENODEV],
  [E(16), EPROTO],
  [E(28), ENOMEM],
]);

/** A kernel status (negative errno) from usbfs → URB status. */
export const usbfsStatus = createStatusTranslation("usbfs", USBFS_STATUS_TABLE, EPROTO);
