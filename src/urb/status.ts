/**
 * URB completion statuses: negative Linux errno values, exactly as usbif.h responses and USB/IP
 * RET_SUBMIT/RET_UNLINK carry them (Linux Documentation/driver-api/usb/error-codes.rst gives the
 * meanings). This file holds the ONE translation table for the URB boundary: every status usbvirt
 * puts on a ring or reads from a peer is one of these entries.
 *
 * Later layers (libusb transfer results, USB/IP) translate their own codes into this vocabulary with
 * `createStatusTranslation`, one table per boundary, instead of scattering `case` ladders.
 */
import type { Brand } from "../util/brand.js";
import { InvalidOptionError } from "../util/errors.js";

/** A URB completion status: 0 or a negative Linux errno from `STATUS_TABLE`. */
export type UrbStatus = Brand<number, "UrbStatus">;

const status = (errno: number): UrbStatus => errno as UrbStatus;

// Linux asm-generic/errno-base.h and errno.h numbers (x86, arm and every usbif peer agree).
export const OK = status(0);
export const ENOENT = status(-2);
export const ENOMEM = status(-12);
export const EXDEV = status(-18);
export const ENODEV = status(-19);
export const EINVAL = status(-22);
export const EPIPE = status(-32);
export const ETIME = status(-62);
export const ENOSR = status(-63);
export const ECOMM = status(-70);
export const EPROTO = status(-71);
export const EOVERFLOW = status(-75);
export const EILSEQ = status(-84);
export const EMSGSIZE = status(-90);
export const ECONNRESET = status(-104);
export const ESHUTDOWN = status(-108);
export const ETIMEDOUT = status(-110);
export const EREMOTEIO = status(-121);

export interface StatusInfo {
  readonly status: UrbStatus;
  /** errno name, e.g. "EPIPE"; "OK" for 0. */
  readonly name: string;
  /** What the status means for a URB, in the words of the Linux USB error-code list. */
  readonly meaning: string;
}

/** The translation table: status → name + meaning. Order is by errno. */
export const STATUS_TABLE: readonly StatusInfo[] = Object.freeze([
  { status: OK, name: "OK", meaning: "completed successfully" },
  { status: ENOENT, name: "ENOENT", meaning: "unlinked (synchronous cancel)" },
  { status: ENOMEM, name: "ENOMEM", meaning: "no memory for the transfer" },
  { status: EXDEV, name: "EXDEV", meaning: "isochronous transfer only partially completed" },
  { status: ENODEV, name: "ENODEV", meaning: "device or port not present" },
  { status: EINVAL, name: "EINVAL", meaning: "malformed request" },
  { status: EPIPE, name: "EPIPE", meaning: "endpoint stalled" },
  { status: ETIME, name: "ETIME", meaning: "device did not respond in time (bus level)" },
  { status: ENOSR, name: "ENOSR", meaning: "host could not supply OUT data fast enough" },
  { status: ECOMM, name: "ECOMM", meaning: "host could not store IN data fast enough" },
  { status: EPROTO, name: "EPROTO", meaning: "protocol error (bitstuff, no handshake)" },
  { status: EOVERFLOW, name: "EOVERFLOW", meaning: "babble: device sent more than the buffer holds" },
  { status: EILSEQ, name: "EILSEQ", meaning: "CRC mismatch" },
  { status: EMSGSIZE, name: "EMSGSIZE", meaning: "request exceeds a size limit" },
  { status: ECONNRESET, name: "ECONNRESET", meaning: "unlinked (asynchronous cancel)" },
  { status: ESHUTDOWN, name: "ESHUTDOWN", meaning: "host controller or connection shut down" },
  { status: ETIMEDOUT, name: "ETIMEDOUT", meaning: "transfer timed out" },
  { status: EREMOTEIO, name: "EREMOTEIO", meaning: "short packet with SHORT_NOT_OK set" },
]);

const byStatus: ReadonlyMap<number, StatusInfo> = new Map(STATUS_TABLE.map((info) => [info.status, info]));
// Layout assertion at load time: one entry per status, no duplicates.
if (byStatus.size !== STATUS_TABLE.length) throw new Error("status table has duplicate entries");

/** True when `raw` is a status in the table. */
export function isKnownStatus(raw: number): raw is UrbStatus {
  return byStatus.has(raw);
}

/** Name and meaning of a status; `undefined` for a number outside the table. */
export function describeStatus(raw: number): StatusInfo | undefined {
  return byStatus.get(raw);
}

/** A status for people: "EPIPE (endpoint stalled)"; "unknown status -5" outside the table. */
export function statusText(raw: number): string {
  const info = byStatus.get(raw);
  return info === undefined ? `unknown status ${raw}` : `${info.name} (${info.meaning})`;
}

/**
 * Accept a status written by the peer. Unknown values become -ESHUTDOWN, as Linux xen-hcd does:
 * a peer that writes nonsense is treated like one that went away, never passed on raw.
 */
export function statusFromPeer(raw: number): UrbStatus {
  return byStatus.has(raw) ? (raw as UrbStatus) : ESHUTDOWN;
}

/**
 * Build the translation for one boundary (libusb transfer status, USB/IP op status, …) into URB
 * statuses. Codes missing from `table` map to `fallback`, so an unexpected code never leaks through.
 * Every target status must be in `STATUS_TABLE` (checked eagerly: a wrong table fails at load).
 */
export function createStatusTranslation<Code extends string | number>(
  boundary: string,
  table: ReadonlyMap<Code, UrbStatus>,
  fallback: UrbStatus,
): (code: Code) => UrbStatus {
  for (const [code, target] of table) {
    if (!byStatus.has(target)) {
      throw new InvalidOptionError(
        `${boundary}: code ${String(code)} maps to ${target}, which is not a URB status`,
      );
    }
  }
  if (!byStatus.has(fallback))
    throw new InvalidOptionError(`${boundary}: fallback ${fallback} is not a URB status`);
  return (code) => table.get(code) ?? fallback;
}
