/**
 * The public API of usbvirt (`import … from "usbvirt"`), listed name by name
 * on purpose: what a VMM, a server or a tool embeds. The data plane's parts
 * (rings, grant table and mapper, URB wire format, the device interface) are
 * for embedding at a lower level and live under `usbvirt/internals`
 * (src/internals.ts); they may change between minor versions.
 *
 * - Connection (src/engine): the control plane — create a connection, attach
 *   and detach devices, statistics, backend restart; typed events.
 * - VirtualHostController (src/frontend): the guest-facing host controller a
 *   VMM's device model submits URBs to; typed events with on / once / off.
 * - GuestUsbDriver, BulkOnlyClient (src/guest): a small guest USB core.
 * - UsbipServer, UsbipClient (src/usbip): the USB/IP faces.
 * - UsbredirServer (src/usbredir): the usbredir face, one device to a VMM
 *   such as QEMU's usb-redir (`usbvirt redirect` is this class).
 * - HostHotplug, listHostDevices: real devices through libusb (loaded lazily).
 * - Device specs, the emulated device list, the USB vocabulary a caller
 *   needs (branded numbers with checked constructors, URB statuses) and
 *   every error class (each a UsbvirtError with a stable `code`).
 *
 * test/index.test.ts checks each name here is exported.
 */

export { BackendPortError } from "./backend/backend-host.js";
export { InlinePortError } from "./backend/inline-port.js";
export { PortStartError } from "./backend/port-link.js";
export type { ControllerHandles, HandlesOptions } from "./connection/handles.js";
export { DeviceClosedError } from "./devices/emulated/emulated-device.js";
export { EMULATED_DEVICES, type EmulatedDeviceEntry } from "./devices/emulated/index.js";
export { StorageLockError } from "./devices/emulated/mass-storage/file-lock.js";
export {
  type HostDeviceInfo,
  type HostSpeed,
  LibusbUnavailableError,
  type ListOptions as ListHostDevicesOptions,
  listHostDevices,
} from "./devices/host/enumerate.js";
export {
  type DeviceFilter,
  type FilterRule,
  type FilterVerdict,
  filterFromLists,
  judge,
  parseRules,
} from "./devices/host/filter.js";
export { HostDeviceError } from "./devices/host/host-device.js";
export type { HostFilter, HostSelector } from "./devices/host/select.js";
export { UsbipRemoteError } from "./devices/remote/usbip-remote.js";
export type {
  DeviceSpec,
  EmulatedDeviceName,
  EmulatedDeviceSpec,
  HostDeviceSpec,
  UsbipDeviceSpec,
} from "./devices/spec.js";
export { describeSpec } from "./devices/spec.js";
export { GrantError } from "./dma-map/grant-fault.js";
export { FRAME_SIZE, type GuestOffset } from "./dma-map/types.js";
export {
  Connection,
  ConnectionError,
  type ConnectionEvents,
  type ConnectionOptions,
  ConnectionState,
  connectionStateName,
} from "./engine/connection.js";
export { HostHotplug, type HostHotplugOptions } from "./engine/host-hotplug.js";
export { ControllerStateError, PortResetError, VirtualHostController } from "./frontend/controller.js";
export type * from "./frontend/types.js";
export { BLOCK_SIZE, BulkOnlyClient, type ScsiResult } from "./guest/bulk-only-client.js";
export {
  type EndpointInfo,
  type EnumeratedDevice,
  GuestTransferError,
  GuestUsbDriver,
  type InterfaceInfo,
} from "./guest/guest-driver.js";
export { GuestBufferAllocator, type GuestRange } from "./guest/guest-memory-allocator.js";
export {
  describeStatus,
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
  isKnownStatus,
  OK,
  STATUS_TABLE,
  type StatusInfo,
  statusText,
  type UrbStatus,
} from "./urb/status.js";
export {
  type DevAddr,
  devAddr,
  type EndpointNum,
  endpointNum,
  MAX_DEV_ADDR,
  MAX_ENDPOINT,
  MAX_PORT,
  MIN_PORT,
  type PortNum,
  portNum,
  type UrbId,
} from "./urb/types.js";
export type { SetupPacket } from "./usb/index.js";
export {
  type ClientOptions as UsbipClientOptions,
  listRemote,
  type SubmitRequest as UsbipSubmitRequest,
  type SubmitResult as UsbipSubmitResult,
  UsbipClient,
  UsbipClientError,
  UsbipImportError,
  UsbipTimeoutError,
} from "./usbip/client.js";
export type { DeviceRecord as UsbipDeviceRecord } from "./usbip/device-record.js";
export { USBIP_PORT } from "./usbip/protocol.js";
export { AttachError, attachRemote } from "./usbip-attach/attach.js";
export {
  type ExportedDeviceInfo,
  UsbipServer,
  UsbipServerError,
  type UsbipServerOptions,
} from "./usbip-server/server.js";
export {
  type UsbredirEndpoint,
  UsbredirServer,
  UsbredirServerError,
  type UsbredirServerOptions,
} from "./usbredir/server.js";
export { InvalidOptionError, NotImplementedError, UsbvirtError } from "./util/errors.js";
