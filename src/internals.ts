/**
 * `usbvirt/internals`: the data plane's parts, for embedding usbvirt at a
 * lower level than Connection (your own control plane, your own device
 * model thread, a device of your own behind the port service): the shared
 * rings and doorbells, guest memory and the grant table / mapper, the URB
 * wire format and its parse gate, the postable controller handles, and the
 * device interface. Not covered by the public API's stability promise.
 */

export * from "./connection/handles.js";
export type {
  DeviceInfo,
  TransferDone,
  TransferHandle,
  TransferRequest,
  TransferResult,
  UsbDevice,
} from "./devices/device.js";
export * from "./dma-map/index.js";
export * from "./rings/index.js";
export * from "./urb/index.js";
export * from "./usb/index.js";
