/**
 * Why a grant operation was refused. The backend's hot path (GrantMapper.pin,
 * map, unmap) returns these numeric codes instead of throwing, so a
 * hostile frontend costs a comparison, not an exception; the URB layer turns a
 * fault into an error response (-ESHUTDOWN in QEMU's xen-usb, -EINVAL here or
 * there: that mapping belongs to src/urb). Callers that prefer exceptions wrap
 * a code with `GrantError.fromFault`.
 */
import { registerErrorClass, UsbvirtError } from "../util/errors.js";

export const GrantFault = {
  /** Not a fault: the operation succeeded (unmap, complete, release return it). */
  OK: 0,
  /** The ref is not an integer below the table's entry count. */
  REF_OUT_OF_RANGE: 1,
  /** The entry's permit-access flag is clear: never granted, or revoked. */
  NOT_GRANTED: 2,
  /** The entry has reserved flag bits set, or an extent of 0 or > MAX_GRANT_FRAMES frames. */
  MALFORMED_ENTRY: 3,
  /** The entry grants access to another domain. */
  WRONG_DOMAIN: 4,
  /** Write access (an IN transfer's target) to a read-only grant. */
  READ_ONLY: 5,
  /** An offset, length or actual length is not a u32 (negative, fractional, NaN, ≥ 2^32). */
  OVERFLOW: 6,
  /** offset + length reaches past the end of the grant's extent. */
  OUT_OF_BOUNDS: 7,
  /** The grant's frames are not inside one region of guest memory. */
  FRAME_OUTSIDE_MEMORY: 8,
  /** The entry's map count is saturated, or it kept changing under our compare-and-swap. */
  BUSY: 9,
  /** Unmap of a grant (or release of a buffer) that is not mapped: a double unmap. */
  NOT_MAPPED: 10,
  /** More segments than MAX_SEGMENTS (kept for its stable code; the URB parse gate refuses these first). */
  TOO_MANY_SEGMENTS: 11,
  /** Segment lengths add up to more than MAX_TRANSFER_BYTES (kept likewise; refused by the parse gate). */
  TRANSFER_TOO_LONG: 12,
} as const;

export type GrantFaultName = keyof typeof GrantFault;
export type GrantFaultCode = (typeof GrantFault)[GrantFaultName];

const faultNames: readonly GrantFaultName[] = (Object.keys(GrantFault) as GrantFaultName[]).sort(
  (a, b) => GrantFault[a] - GrantFault[b],
);
// Layout asserted at load time: codes are 0..n-1 and distinct, so they index tables.
faultNames.forEach((name, i) => {
  if (GrantFault[name] !== i) throw new Error(`GrantFault codes must be dense: ${name} is not ${i}`);
});

const faultMessages: Record<GrantFaultName, string> = {
  OK: "no fault",
  REF_OUT_OF_RANGE: "grant reference is outside the grant table",
  NOT_GRANTED: "grant entry is not in use (never granted or revoked)",
  MALFORMED_ENTRY: "grant entry is malformed (reserved flag bits or impossible frame count)",
  WRONG_DOMAIN: "grant entry is granted to another domain",
  READ_ONLY: "grant is read-only and cannot be mapped for writing (IN transfer)",
  OVERFLOW: "offset or length is not an unsigned 32-bit integer",
  OUT_OF_BOUNDS: "offset + length reaches past the end of the grant",
  FRAME_OUTSIDE_MEMORY: "grant names frames outside guest memory or across two memory regions",
  BUSY: "grant entry is busy (map count saturated or contended)",
  NOT_MAPPED: "grant is not mapped (double unmap or release)",
  TOO_MANY_SEGMENTS: "buffer has more segments than MAX_SEGMENTS",
  TRANSFER_TOO_LONG: "buffer is longer than MAX_TRANSFER_BYTES",
};

/** Every fault code, OK included, in numeric order. */
export const ALL_GRANT_FAULTS: readonly GrantFaultCode[] = faultNames.map((name) => GrantFault[name]);

/** Name of a fault code ("READ_ONLY"), or "UNKNOWN" for a number that is none. */
export function grantFaultName(code: number): GrantFaultName | "UNKNOWN" {
  return faultNames[code] ?? "UNKNOWN";
}

/** Human message for a fault code. */
export function grantFaultMessage(code: number): string {
  const name = faultNames[code];
  return name === undefined ? `unknown grant fault ${code}` : faultMessages[name];
}

/** Narrow a map result: a number is a fault, anything else the mapping. */
export function isGrantFault(result: unknown): result is GrantFaultCode {
  return typeof result === "number";
}

/**
 * A grant failure as an exception. `code` is `ERR_USBVIRT_GRANT_<NAME>`:
 * a mapper fault name (REF_OUT_OF_RANGE …), or a frontend-side misuse:
 * TABLE_FULL (no free ref), NOT_ACTIVE (revoking a ref this owner did not
 * grant), INVALID_ARGUMENT (grant of a bad domain / frame / extent),
 * STORAGE_IN_USE (an owner built over a table that already has grants).
 */
export type GrantErrorKind =
  | GrantFaultName
  | "UNKNOWN"
  | "TABLE_FULL"
  | "NOT_ACTIVE"
  | "INVALID_ARGUMENT"
  | "STORAGE_IN_USE";

export class GrantError extends UsbvirtError {
  declare readonly code: `ERR_USBVIRT_GRANT_${GrantErrorKind}`;
  /** The numeric fault when this wraps a mapper fault, else undefined. */
  readonly fault: GrantFaultCode | undefined;
  constructor(kind: GrantErrorKind, message: string, fault?: GrantFaultCode, options?: { cause?: unknown }) {
    super(`ERR_USBVIRT_GRANT_${kind}`, message, options);
    this.fault = fault;
  }

  static fromFault(fault: GrantFaultCode, context?: string): GrantError {
    const message = grantFaultMessage(fault);
    return new GrantError(grantFaultName(fault), context ? `${context}: ${message}` : message, fault);
  }
}
registerErrorClass(GrantError);
