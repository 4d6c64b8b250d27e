/**
 * src/urb: the usbvirt URB wire format (after Xen usbif.h) — typed requests and responses, the pipe word,
 * the status table, the codec that writes slots, and the parse gate that reads them.
 */
export * from "./codec.js";
export * from "./iso.js";
export * from "./layout.js";
export * from "./limits.js";
export * from "./parse.js";
export * from "./pipe.js";
export * from "./reasons.js";
export * from "./status.js";
export * from "./types.js";
