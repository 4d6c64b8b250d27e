/**
 * Host-side failures are error classes with a stable `code` (undici style):
 * each class owns its code (or its short list of codes, typed, so a caller
 * cannot invent one). USB outcomes (stall, babble, cancelled …) are not
 * exceptions: they are status values, see src/urb/status.ts.
 *
 * Errors cross threads through src/util/error-wire.ts (installed into comlink
 * by src/util/rpc.ts): the receiving side rebuilds the same class, found here
 * by name, so `instanceof` and `code` hold on both sides. A class registers
 * itself with `registerErrorClass` right after its definition; a name that is
 * not registered where the error lands still arrives as a UsbvirtError with
 * its name and code.
 */
export class UsbvirtError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Any error class (its constructor's arguments do not matter: rebuilding never calls it). */
// biome-ignore lint/suspicious/noExplicitAny: a constructor of any signature
export type ErrorClass = abstract new (...args: any[]) => Error;

const registry = new Map<string, ErrorClass>();

/**
 * Make `cls` rebuildable by name on the receiving side of a thread boundary.
 * Two different classes with one name would make that ambiguous: refused.
 */
export function registerErrorClass(cls: ErrorClass): void {
  const known = registry.get(cls.name);
  if (known !== undefined && known !== cls) {
    throw new Error(`two error classes are named ${cls.name}: names must be unique to cross threads`);
  }
  registry.set(cls.name, cls);
}

/** The registered class of that name, if any. */
export function errorClassNamed(name: string): ErrorClass | undefined {
  return registry.get(name);
}

/** Every registered class name (for tests and diagnostics). */
export function registeredErrorNames(): string[] {
  return [...registry.keys()];
}

registerErrorClass(UsbvirtError);

/** Thrown when a caller passes options that cannot work (fail early, say which). */
export class InvalidOptionError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_INVALID_OPTION";
  constructor(message: string, options?: { cause?: unknown }) {
    super("ERR_USBVIRT_INVALID_OPTION", message, options);
  }
}
registerErrorClass(InvalidOptionError);

/** A feature that is named in the API but not built yet answers with this, never silently. */
export class NotImplementedError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_NOT_IMPLEMENTED";
  constructor(what: string) {
    super("ERR_USBVIRT_NOT_IMPLEMENTED", `${what} is not implemented yet`);
  }
}
registerErrorClass(NotImplementedError);
