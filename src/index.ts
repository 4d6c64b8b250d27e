/**
 * Public API of usbvirt for embedding in a VMM: the data plane's parts.
 * (The engine — virtual host controller, backend and port workers — builds on these.)
 */
export * from "./dma-map/index.js";
export * from "./rings/index.js";
export * from "./urb/index.js";
export * from "./util/errors.js";
