/** Public API of usbvirt for embedding in a VMM. */
export * from "./util/errors.js";
