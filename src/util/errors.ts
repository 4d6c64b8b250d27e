/**
 * Host-side failures are error classes with a stable `code` (undici style).
 * Across threads, switch on `code`: structured clone drops prototypes.
 * USB outcomes (stall, babble, cancelled …) are not exceptions: they are
 * status values, see src/urb/status.ts.
 */
export class UsbvirtError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Thrown when a caller passes options that cannot work (fail early, say which). */
export class InvalidOptionError extends UsbvirtError {
  constructor(message: string) {
    super("ERR_USBVIRT_INVALID_OPTION", message);
  }
}

/** A feature that is named in the API but not built yet answers with this, never silently. */
export class NotImplementedError extends UsbvirtError {
  constructor(what: string) {
    super("ERR_USBVIRT_NOT_IMPLEMENTED", `${what} is not implemented yet`);
  }
}
