/**
 * Public API of usbvirt for embedding in a VMM.
 *
 * - Connection (src/engine): the control plane — create a connection, attach and
 *   detach devices, statistics, backend restart.
 * - VirtualHostController (src/frontend): the guest-facing host controller a
 *   VMM's device model submits URBs to.
 * - GuestUsbDriver (src/guest): a small guest USB core, for tools and tests.
 * - The data plane's parts (rings, grant table and mapper, URB wire format).
 */
export type {
  DeviceInfo,
  TransferDone,
  TransferHandle,
  TransferKind,
  TransferRequest,
  TransferResult,
  UsbDevice,
} from "./devices/device.js";
export * from "./devices/spec.js";
export * from "./dma-map/index.js";
export * from "./engine/connection.js";
export * from "./engine/handles.js";
export * from "./frontend/index.js";
export * from "./guest/bulk-only-client.js";
export * from "./guest/guest-driver.js";
export * from "./guest/guest-memory-allocator.js";
export * from "./rings/index.js";
export * from "./urb/index.js";
export * from "./util/errors.js";
